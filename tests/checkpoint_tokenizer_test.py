"""models/checkpoint_tokenizer: a checkpoint's tokenizer, its special ids and its chat template.

Golden cases: tests/data/pretrained/<case>/ (written by transformers 5.25.0 save_pretrained, with
tokenization.json holding AutoTokenizer's ids and special ids). Fixtures for what they do not
cover are small tokenizers trained here on the shared HH test split (byte-level BPE through
`tokenizers`, Llama 2 and T5 style SentencePiece models), laid out as the Hub lays them out.
Round trips run over every dialogue of the shared split.
"""
import gzip
import io
import json
import os
import pathlib
import shutil
import unicodedata

import pytest
import sentencepiece as spm
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from gcs_paths_test import bucket  # pylint: disable=unused-import (the gs:// stand-in fixture)
from lsc_align.models import checkpoint_tokenizer as ct

HH_DIR = '/work/shared/data/hh-rlhf'
PRETRAINED = pathlib.Path(__file__).resolve().parent / 'data' / 'pretrained'
GOLD_CASES = sorted(p.parent.name for p in PRETRAINED.glob('*/tokenization.json'))
CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
          "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
BPE_SPECIALS = ('<|begin_of_text|>', '<|end_of_text|>', '<|eot_id|>', '<|im_start|>',
                '<|im_end|>', '<|endoftext|>')


def hh_texts() -> list[str]:
  """Every chosen and rejected dialogue of the shared test split, both subsets, file order."""
  texts = []
  for subset in ('helpful-base', 'harmless-base'):
    with gzip.open(os.path.join(HH_DIR, subset, 'test.jsonl.gz'), 'rt', encoding='utf-8') as f:
      for line in f:
        row = json.loads(line)
        texts += [row['chosen'], row['rejected']]
  return texts


def write_json(path, obj) -> None:
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(obj, f)


@pytest.fixture(scope='module')
def texts():
  return hh_texts()


@pytest.fixture(scope='module')
def bpe_tokenizer(texts):
  """A byte-level BPE (as Llama 3 / Qwen / Gemma 3 ship it) trained on 300 HH dialogues."""
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(texts[:300], trainers.BpeTrainer(
      vocab_size=600, special_tokens=list(BPE_SPECIALS),
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
  return tok


@pytest.fixture(scope='module')
def llama3_dir(tmp_path_factory, bpe_tokenizer):
  """tokenizer.json whose post-processor prepends <|begin_of_text|>; no pad; two stop ids."""
  path = tmp_path_factory.mktemp('llama3')
  tok = tokenizers.Tokenizer.from_str(bpe_tokenizer.to_str())
  tok.post_processor = processors.Sequence([
      processors.ByteLevel(trim_offsets=False),
      processors.TemplateProcessing(single='<|begin_of_text|> $A', pair='<|begin_of_text|> $A $B',
                                    special_tokens=[('<|begin_of_text|>', 0)])])
  tok.save(str(path / 'tokenizer.json'))
  write_json(path / 'tokenizer_config.json', {
      'tokenizer_class': 'PreTrainedTokenizerFast', 'bos_token': '<|begin_of_text|>',
      'eos_token': '<|end_of_text|>', 'add_bos_token': True, 'add_eos_token': True,
      'model_max_length': 131072, 'chat_template': '{{ bos_token }}{% for m in messages %}'
      '{{ m["role"] }}: {{ m["content"] }}{{ eos_token }}{% endfor %}'})
  write_json(path / 'generation_config.json', {'bos_token_id': 0, 'eos_token_id': [1, 2]})
  write_json(path / 'config.json', {'model_type': 'llama', 'eos_token_id': 1})
  return path


@pytest.fixture(scope='module')
def qwen_dir(tmp_path_factory, bpe_tokenizer):
  """tokenizer.json with no BOS (bos_token null), a pad token and a ChatML chat_template."""
  path = tmp_path_factory.mktemp('qwen')
  bpe_tokenizer.save(str(path / 'tokenizer.json'))
  write_json(path / 'tokenizer_config.json', {
      'tokenizer_class': 'Qwen2Tokenizer', 'bos_token': None, 'eos_token': '<|im_end|>',
      'pad_token': {'content': '<|endoftext|>', 'special': True}, 'unk_token': None,
      'chat_template': CHATML, 'model_max_length': 1e30,
      'added_tokens_decoder': {str(i): {'content': t, 'special': True}
                               for i, t in enumerate(BPE_SPECIALS)}})
  write_json(path / 'special_tokens_map.json', {'pad_token': '<|im_start|>'})  # not read
  write_json(path / 'config.json', {'model_type': 'qwen2', 'bos_token_id': 5,
                                    'eos_token_id': 5, 'pad_token_id': 3})
  return path


def train_sentencepiece(texts, **settings) -> bytes:
  model = io.BytesIO()
  lines = [line for text in texts[:600] for line in text.split('\n') if line.strip()]
  spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model,
                                 vocab_size=600, num_threads=1, minloglevel=2, **settings)
  return model.getvalue()


@pytest.fixture(scope='module')
def llama2_dir(tmp_path_factory, texts):
  """Llama 2's layout: a BPE tokenizer.model with byte fallback, unk 0 / bos 1 / eos 2, no pad."""
  path = tmp_path_factory.mktemp('llama2')
  (path / 'tokenizer.model').write_bytes(train_sentencepiece(
      texts, model_type='bpe', byte_fallback=True, normalization_rule_name='identity',
      remove_extra_whitespaces=False, split_digits=True, unk_id=0, bos_id=1, eos_id=2,
      pad_id=-1))
  write_json(path / 'tokenizer_config.json', {
      'tokenizer_class': 'LlamaTokenizer', 'add_bos_token': True, 'add_eos_token': False,
      'bos_token': {'content': '<s>'}, 'eos_token': '</s>', 'unk_token': '<unk>',
      'legacy': False})
  write_json(path / 'config.json', {'model_type': 'llama', 'bos_token_id': 1,
                                    'eos_token_id': 2})
  return path


@pytest.fixture(scope='module')
def t5_dir(tmp_path_factory, texts):
  """T5's layout: a unigram spiece.model, pad 0 / eos 1 / unk 2, and nothing else."""
  path = tmp_path_factory.mktemp('t5')
  (path / 'spiece.model').write_bytes(train_sentencepiece(
      texts, model_type='unigram', pad_id=0, eos_id=1, unk_id=2, bos_id=-1))
  return path


def copy_of(directory, tmp_path):
  return shutil.copytree(directory, tmp_path / 'copy')


# ---- byte-level BPE (tokenizer.json) ----

def test_tokenizer_json_ids_are_the_library_ones_with_its_post_processor(llama3_dir, texts):
  tok = ct.load_tokenizer(llama3_dir)
  library = tokenizers.Tokenizer.from_file(str(llama3_dir / 'tokenizer.json'))
  assert (tok.kind, tok.bos_id, tok.vocab_size) == ('tokenizers', 0, 600)
  for text in texts[::50]:
    body = library.encode(text, add_special_tokens=False).ids
    assert tok.encode(text, add_special_tokens=False) == body
    # add_bos_token / add_eos_token beside a tokenizer.json are ignored, as by transformers 5
    assert tok.encode(text) == [0] + body
  assert (tok.add_bos, tok.add_eos) == (True, False)


def test_stop_ids_pad_fallback_and_strict(llama3_dir):
  tok = ct.load_tokenizer(llama3_dir)
  assert tok.eos_ids == (1, 2) and tok.eos_id == 1  # tokenizer's eos, then generation_config's
  assert (tok.pad_id, tok.pad_source) == (1, ct.EOS_FALLBACK)
  assert tok.model_max_length == 131072
  with pytest.raises(ValueError, match='no pad token .strict_pad=True'):
    ct.load_tokenizer(llama3_dir, strict_pad=True)


def test_qwen_layout_ids_pad_and_precedence(qwen_dir):
  tok = ct.load_tokenizer(qwen_dir, strict_pad=True)
  # bos_token null wins over config.json's bos_token_id; special_tokens_map.json is not read
  # beside added_tokens_decoder; config.json's eos is a further stop id.
  assert (tok.bos_id, tok.eos_ids, tok.pad_id, tok.unk_id) == (None, (4, 5), 5, None)
  assert tok.pad_source == 'tokenizer_config.json' and tok.model_max_length is None
  assert (tok.add_bos, tok.add_eos) == (False, False)
  assert tok.encode('<|im_start|>user') == [3] + tok.encode('user')
  assert tok.decode(tok.encode('<|im_end|>hi'), skip_special_tokens=True) == 'hi'
  assert tok.decode(tok.encode('<|im_end|>hi')) == '<|im_end|>hi'


def test_pad_from_class_default_generation_or_model_config(qwen_dir, llama3_dir, tmp_path):
  path = copy_of(qwen_dir, tmp_path)
  config = json.loads((path / 'tokenizer_config.json').read_text())
  del config['pad_token']
  write_json(path / 'tokenizer_config.json', config)
  # model_type qwen2 loads as Qwen2Tokenizer, whose pad is <|endoftext|> unless named
  tok = ct.load_tokenizer(path, strict_pad=True)
  assert (tok.pad_id, tok.pad_source) == (5, 'Qwen2Tokenizer default')
  path = shutil.copytree(llama3_dir, tmp_path / 'llama3')
  write_json(path / 'config.json', {'model_type': 'llama', 'eos_token_id': 1, 'pad_token_id': 3})
  tok = ct.load_tokenizer(path, strict_pad=True)
  assert (tok.pad_id, tok.pad_source) == (3, 'config.json')
  write_json(path / 'generation_config.json', {'eos_token_id': [1, 2], 'pad_token_id': 4})
  tok = ct.load_tokenizer(path, strict_pad=True)
  assert (tok.pad_id, tok.pad_source) == (4, 'generation_config.json')


def test_legacy_special_tokens_map_overrides_and_new_tokens_get_ids(llama3_dir, tmp_path):
  path = copy_of(llama3_dir, tmp_path)
  write_json(path / 'special_tokens_map.json', {'eos_token': {'content': '<|eot_id|>'},
                                                'pad_token': '<|pad|>'})
  tok = ct.load_tokenizer(path)
  # <|pad|> is not in the vocabulary: appended as id 600, as transformers appends it
  assert (tok.eos_ids, tok.pad_id, tok.vocab_size) == ((2, 1), 600, 601)
  assert tok.pad_source == 'special_tokens_map.json'
  a, b, both = (tok.encode(t, add_special_tokens=False) for t in ('a', 'b', 'a<|pad|>b'))
  assert both == a + [600] + b


@pytest.fixture(scope='module')
def llama2_json_dir(tmp_path_factory, texts):
  """Llama 2's tokenizer.json as transformers 4 wrote it: "▁" prepended by the normalizer."""
  path = tmp_path_factory.mktemp('llama2_json')
  tok = tokenizers.Tokenizer(models.BPE(unk_token='<unk>', fuse_unk=True))
  tok.pre_tokenizer = pre_tokenizers.Metaspace()
  tok.train_from_iterator(texts[:300], trainers.BpeTrainer(
      vocab_size=400, special_tokens=['<unk>', '<s>', '</s>'], show_progress=False))
  tok.pre_tokenizer = None
  tok.normalizer = normalizers.Sequence([normalizers.Prepend('▁'),
                                         normalizers.Replace(' ', '▁')])
  tok.decoder = decoders.Sequence([decoders.Replace('▁', ' '), decoders.Fuse(),
                                   decoders.Strip(' ', 1, 0)])
  tok.post_processor = processors.TemplateProcessing(single='<s> $A', special_tokens=[('<s>', 1)])
  tok.save(str(path / 'tokenizer.json'))
  write_json(path / 'tokenizer_config.json', {
      'tokenizer_class': 'LlamaTokenizerFast', 'bos_token': '<s>', 'eos_token': '</s>',
      'unk_token': '<unk>', 'legacy': False})
  return path


def test_llama_tokenizer_json_gets_transformers_metaspace(llama2_json_dir, tmp_path):
  """transformers 5's LlamaTokenizer replaces such a file's normaliser by Metaspace."""
  tok = ct.load_tokenizer(llama2_json_dir)
  file_itself = tokenizers.Tokenizer.from_file(str(llama2_json_dir / 'tokenizer.json'))

  def encode(text):
    return tok.encode(text, add_special_tokens=False)

  assert tok.encode('Hi there') == [1] + encode('Hi there')
  assert encode('Hi there') == file_itself.encode('Hi there', add_special_tokens=False).ids
  # A leading space is the prefix itself (the file alone would give "▁▁Hi"), and no prefix
  # after a special token (legacy false).
  assert encode(' Hi there') == encode('Hi there')
  assert encode(' Hi') != file_itself.encode(' Hi', add_special_tokens=False).ids
  after = encode('Hi</s>there')
  assert after[:after.index(2)] == encode('Hi')
  assert tok.decode(after) == 'Hi</s>there' and tok.decode(tok.encode(' Hi')) == '<s> Hi'
  path = copy_of(llama2_json_dir, tmp_path)
  config = json.loads((path / 'tokenizer_config.json').read_text())
  write_json(path / 'tokenizer_config.json', {**config, 'legacy': True})
  legacy = ct.load_tokenizer(path)
  assert legacy.encode('Hi</s>there', add_special_tokens=False) == (
      encode('Hi') + [2] + encode('there'))


def test_byte_level_file_of_class_llama_is_left_as_it_is(llama3_dir, tmp_path):
  path = copy_of(llama3_dir, tmp_path)
  config = json.loads((path / 'tokenizer_config.json').read_text())
  write_json(path / 'tokenizer_config.json', {**config, 'tokenizer_class': 'LlamaTokenizerFast'})
  text = ' Hello  there\n\nHuman: ok'
  assert ct.load_tokenizer(path).encode(text) == ct.load_tokenizer(llama3_dir).encode(text)


# ---- SentencePiece (tokenizer.model, spiece.model) ----

def test_llama2_sentencepiece_ids_bos_and_special_text(llama2_dir, texts):
  tok = ct.load_tokenizer(llama2_dir)
  sp = spm.SentencePieceProcessor(model_file=str(llama2_dir / 'tokenizer.model'))
  assert (tok.kind, tok.bos_id, tok.eos_ids, tok.unk_id, tok.vocab_size) == (
      'sentencepiece', 1, (2,), 0, 600)
  assert (tok.pad_id, tok.pad_source) == (2, ct.EOS_FALLBACK)
  for text in texts[::50]:
    assert tok.encode(text) == [1] + sp.encode(text)
  # A special token in the text is its id; the text after it gets no dummy "▁" unless legacy
  # (transformers' Metaspace prepends to the first piece of text only).
  ids = tok.encode('Hi</s>there', add_special_tokens=False)
  assert ids[:ids.index(2)] == sp.encode('Hi') and ids.count(2) == 1
  assert not sp.id_to_piece(ids[ids.index(2) + 1]).startswith('▁')
  assert tok.decode(ids) == 'Hi</s>there'
  assert tok.decode(ids, skip_special_tokens=True) == 'Hithere'


def test_llama2_legacy_prefixes_every_piece_of_text(llama2_dir, tmp_path):
  path = copy_of(llama2_dir, tmp_path)
  config = json.loads((path / 'tokenizer_config.json').read_text())
  write_json(path / 'tokenizer_config.json', {**config, 'legacy': True})
  tok = ct.load_tokenizer(path)
  sp = spm.SentencePieceProcessor(model_file=str(path / 'tokenizer.model'))
  assert tok.encode('Hi</s>there', add_special_tokens=False) == (
      sp.encode('Hi') + [2] + sp.encode('there'))


def test_llama2_decode_writes_special_tokens_out(llama2_dir):
  tok = ct.load_tokenizer(llama2_dir)
  assert tok.decode(tok.encode('Hi there')) == '<s> Hi there'
  assert tok.decode(tok.encode('Hi there'), skip_special_tokens=True) == 'Hi there'


def test_llama2_eos_flag_and_added_pad(llama2_dir, tmp_path):
  path = copy_of(llama2_dir, tmp_path)
  config = json.loads((path / 'tokenizer_config.json').read_text())
  config.update(add_eos_token=True, add_bos_token=False,
                added_tokens_decoder={'600': {'content': '<pad>', 'special': True}},
                pad_token='<pad>')
  write_json(path / 'tokenizer_config.json', config)
  tok = ct.load_tokenizer(path, strict_pad=True)
  assert (tok.pad_id, tok.vocab_size, tok.add_bos, tok.add_eos) == (600, 601, False, True)
  assert tok.encode('Hi') == tok.encode('Hi', add_special_tokens=False) + [2]
  assert tok.encode('<pad>', add_special_tokens=False) == [600]
  assert tok.decode([600, *tok.encode('Hi')], skip_special_tokens=True) == 'Hi'


def test_t5_spiece_eos_sentinels_and_normalised_round_trip(t5_dir, texts):
  tok = ct.load_tokenizer(t5_dir)
  sp = spm.SentencePieceProcessor(model_file=str(t5_dir / 'spiece.model'))
  assert (tok.bos_id, tok.eos_ids, tok.pad_id, tok.unk_id) == (None, (1,), 0, 2)
  assert tok.pad_source == 'spiece.model' and tok.vocab_size == 700  # 100 sentinels
  assert tok.token_id('<extra_id_0>') == 699 and tok.token_id('<extra_id_99>') == 600
  assert tok.encode('a <extra_id_0> b') == sp.encode('a') + [699] + sp.encode('b') + [1]
  exact = normalised = 0
  for text in texts:
    ids = tok.encode(text)
    assert ids[-1] == 1
    back = tok.decode(ids, skip_special_tokens=True)
    exact += back == text
    # NFKC, whitespace runs (newlines too) to one space; characters the model lacks are unk
    if 2 not in ids:
      assert back == ' '.join(unicodedata.normalize('NFKC', text).split())
      normalised += 1
  assert exact == 0 and normalised > 0.9 * len(texts)


# ---- golden cases: transformers' own ids ----

def gold(case):
  return json.loads((PRETRAINED / case / 'tokenization.json').read_text(encoding='utf-8'))


def test_golden_cases_are_there():
  assert {'llama3_gqa_rope_scaling', 'llama2_tied_bf16_sharded', 'qwen2_bias', 'qwen3_qknorm',
          'gemma2_softcap', 'gemma3_text', 't5_v1_1_encoder', 't5_encdec', 'llama_seqcls',
          'qwen2_seqcls', 'gemma2_seqcls'} <= set(GOLD_CASES)


@pytest.mark.parametrize('case', GOLD_CASES)
def test_ids_and_special_ids_equal_transformers(case):
  expected = gold(case)
  tok = ct.load_tokenizer(PRETRAINED / case, strict_pad=False)
  assert tok.kind == ('tokenizers' if (PRETRAINED / case / 'tokenizer.json').exists()
                      else 'sentencepiece')
  assert len(expected['texts']) >= 5
  for entry in expected['texts']:
    assert tok.encode(entry['text']) == entry['ids_with_special_tokens']
    assert tok.encode(entry['text'], add_special_tokens=False) == entry[
        'ids_without_special_tokens']
  assert (tok.bos_id, tok.eos_id, tok.unk_id, tok.vocab_size) == (
      expected['bos_token_id'], expected['eos_token_id'], expected['unk_token_id'],
      expected['len_tokenizer'])
  if expected['pad_token_id'] is None:  # llama2 / llama3: no pad anywhere
    assert (tok.pad_id, tok.pad_source) == (tok.eos_id, ct.EOS_FALLBACK)
    with pytest.raises(ValueError, match='no pad token'):
      ct.load_tokenizer(PRETRAINED / case, strict_pad=True)
  else:
    assert (tok.pad_id, tok.pad_source) == (expected['pad_token_id'], 'tokenizer_config.json')
  model = json.loads((PRETRAINED / case / 'config.json').read_text())
  tok.check_fits(model['vocab_size'])
  for entry in expected['texts']:
    back = tok.decode(tok.encode(entry['text']), skip_special_tokens=True)
    if model['model_type'] == 'llama' and tok.kind == 'sentencepiece':
      # " x" encodes as "x" does (transformers' Llama Metaspace): one leading space is lost.
      assert back == entry['text'].removeprefix(' ')
    elif model['model_type'] != 't5':
      assert back == entry['text']
    elif tok.unk_id not in entry['ids_without_special_tokens']:  # T5 normalises the text
      assert back == ' '.join(unicodedata.normalize('NFKC', entry['text']).split())


def test_golden_sentencepiece_differs_from_the_library_as_transformers_does():
  # transformers' converted Llama tokenizer gives a text that starts with a space no dummy "▁";
  # sentencepiece itself does. Ids follow transformers.
  entries = gold('llama2_tied_bf16_sharded')['texts']
  differ = [e for e in entries if e['sentencepiece_ids'] != e['ids_without_special_tokens']]
  assert differ and all(e['text'][0] == ' ' for e in differ)
  assert all(e['text'][0] != ' ' for e in entries if e not in differ)


def test_golden_chatml_template():
  tok = ct.load_tokenizer(PRETRAINED / 'qwen2_bias')
  chat = gold('qwen2_bias')['chat']
  rendered = tok.apply_chat_template(chat['messages'])
  assert rendered == ('<|im_start|>user\nHi there<|im_end|>\n'
                      '<|im_start|>assistant\nHi!<|im_end|>\n'
                      '<|im_start|>user\nHow are you?<|im_end|>\n'
                      '<|im_start|>assistant\n') == chat['text']
  assert tok.encode(rendered) == chat['ids']
  assert tok.apply_chat_template(chat['messages'][:1], add_generation_prompt=False) == (
      '<|im_start|>user\nHi there<|im_end|>\n')
  assert tok.model_max_length == 32768


@pytest.mark.parametrize('case', ['llama3_gqa_rope_scaling', 'llama2_tied_bf16_sharded'])
def test_round_trip_preserves_every_hh_text(case, texts):
  """Byte-level BPE, and SentencePiece BPE with byte fallback and no normalisation: exact."""
  tok = ct.load_tokenizer(PRETRAINED / case)
  assert len(texts) == 2 * (2354 + 2312)
  for text in texts:
    assert tok.decode(tok.encode(text), skip_special_tokens=True) == text


# ---- chat templates ----

def test_chatml_template_renders_as_written_by_hand(qwen_dir):
  tok = ct.load_tokenizer(qwen_dir)
  messages = [{'role': 'user', 'content': 'How do I boil an egg?'},
              {'role': 'assistant', 'content': 'Put it in boiling water.'},
              {'role': 'user', 'content': 'For how long?'}]
  assert tok.apply_chat_template(messages) == (
      '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n'
      '<|im_start|>user\nHow do I boil an egg?<|im_end|>\n'
      '<|im_start|>assistant\nPut it in boiling water.<|im_end|>\n'
      '<|im_start|>user\nFor how long?<|im_end|>\n'
      '<|im_start|>assistant\n')
  assert tok.apply_chat_template(messages[:1], add_generation_prompt=False) == (
      '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n'
      '<|im_start|>user\nHow do I boil an egg?<|im_end|>\n')
  ids = tok.encode(tok.apply_chat_template(messages[:1]))
  assert ids[0] == 3 and ids.count(4) == 2  # <|im_start|>, <|im_end|> as single ids


def test_template_variables_file_precedence_and_transformers_environment(llama3_dir, tmp_path):
  tok = ct.load_tokenizer(llama3_dir)
  assert tok.apply_chat_template([{'role': 'user', 'content': 'hi'}]) == (
      '<|begin_of_text|>user: hi<|end_of_text|>')
  path = copy_of(llama3_dir, tmp_path)
  (path / 'chat_template.jinja').write_text(
      '{% for m in messages %}\n  {% if m.role == "system" %}\n'
      '{{ raise_exception("no system role") }}\n  {% endif %}\n{{ m | tojson }}\n{% endfor %}'
      '{% generation %}<{{ add_generation_prompt }}>{% endgeneration %}')
  tok = ct.load_tokenizer(path)
  # trim_blocks / lstrip_blocks drop the block lines; tojson does not escape HTML characters
  assert tok.apply_chat_template([{'role': 'user', 'content': '<b>&</b>'}]) == (
      '{"role": "user", "content": "<b>&</b>"}\n<True>')
  with pytest.raises(ValueError, match='chat template: no system role'):
    tok.apply_chat_template([{'role': 'system', 'content': 'x'}])
  with pytest.raises(ValueError, match='every message must be a dict'):
    tok.apply_chat_template(['hi'])


def test_template_sandbox_and_errors(llama3_dir, llama2_dir, tmp_path):
  with pytest.raises(ValueError, match='has no chat template'):
    ct.load_tokenizer(llama2_dir).apply_chat_template([{'role': 'user', 'content': 'x'}])
  path = copy_of(llama3_dir, tmp_path)
  (path / 'chat_template.jinja').write_text('{{ messages.__class__.__mro__ }}')
  with pytest.raises(ValueError, match='chat template: .*unsafe'):
    ct.load_tokenizer(path).apply_chat_template([])
  (path / 'chat_template.jinja').write_text('line one\n{% for m in messages %}')
  with pytest.raises(ValueError, match='chat template, line 2: '):
    ct.load_tokenizer(path).apply_chat_template([])


# ---- fingerprint, embedding size ----

def test_fingerprint_follows_the_tokenizer_files_only(llama3_dir, tmp_path):
  before = ct.load_tokenizer(llama3_dir).fingerprint
  path = copy_of(llama3_dir, tmp_path)
  assert ct.load_tokenizer(path).fingerprint == before and len(before) == 64
  write_json(path / 'config.json', {'model_type': 'llama', 'eos_token_id': 1, 'num_layers': 9})
  assert ct.load_tokenizer(path).fingerprint == before  # model settings are not the vocabulary
  config = json.loads((path / 'tokenizer_config.json').read_text())
  write_json(path / 'tokenizer_config.json', {**config, 'eos_token': '<|eot_id|>'})
  assert ct.load_tokenizer(path).fingerprint != before


def test_check_fits(llama3_dir):
  tok = ct.load_tokenizer(llama3_dir)
  tok.check_fits(600)
  tok.check_fits(640)  # padded embedding tables are fine
  with pytest.raises(ValueError, match='tokenizer has 600 ids .* embedding table has only 599'):
    tok.check_fits(599)


# ---- gs:// ----

# pylint: disable-next=redefined-outer-name
def test_gs_directory_reads_through_epath(llama2_dir, bucket, tmp_path):
  shutil.copytree(llama2_dir, bucket.local('gs://models/llama2'))
  remote = ct.load_tokenizer('gs://models/llama2')
  local = ct.load_tokenizer(llama2_dir)
  assert remote.path == 'gs://models/llama2' and remote.fingerprint == local.fingerprint
  assert remote.encode('Hello there') == local.encode('Hello there')
  assert not os.path.exists(tmp_path / 'cwd' / 'gs:') and not os.path.exists(tmp_path / 'gs:')


# ---- bad input: one line naming the file ----

def test_missing_directory_and_tokenizer_file(tmp_path):
  with pytest.raises(FileNotFoundError, match='nowhere: no such checkpoint directory'):
    ct.load_tokenizer(tmp_path / 'nowhere')
  write_json(tmp_path / 'config.json', {})
  with pytest.raises(FileNotFoundError, match='no tokenizer.json or tokenizer.model / spiece'):
    ct.load_tokenizer(tmp_path)


def test_corrupt_tokenizer_files(tmp_path):
  (tmp_path / 'tokenizer.json').write_text('{"model": {"type": "BPE"')
  with pytest.raises(ValueError, match='tokenizer.json: not a tokenizers file'):
    ct.load_tokenizer(tmp_path)
  os.remove(tmp_path / 'tokenizer.json')
  (tmp_path / 'tokenizer.model').write_bytes(b'\x00not a model\xff' * 8)
  with pytest.raises(ValueError, match='tokenizer.model: not a SentencePiece model'):
    ct.load_tokenizer(tmp_path)


@pytest.mark.parametrize('name, content, message', [
    ('tokenizer_config.json', '{"eos_token": ', 'tokenizer_config.json: not valid JSON'),
    ('tokenizer_config.json', '[1, 2]', 'tokenizer_config.json: expected a JSON object'),
    ('tokenizer_config.json', '{"eos_token": 7}', 'tokenizer_config.json: eos_token must be'),
    ('tokenizer_config.json', '{"added_tokens_decoder": {"x": 1}}',
     'tokenizer_config.json: added_tokens_decoder must map ids'),
    ('tokenizer_config.json', '{"model_max_length": "long"}',
     'tokenizer_config.json: model_max_length must be a positive number'),
    ('tokenizer_config.json', '{"chat_template": 3}',
     'tokenizer_config.json: chat_template must be'),
    ('tokenizer_config.json', '{"extra_special_tokens": "<x>"}',
     'tokenizer_config.json: extra_special_tokens must be a list'),
    ('special_tokens_map.json', '{"pad_token": ["<p>"]}', 'special_tokens_map.json: pad_token'),
    ('generation_config.json', '{"eos_token_id": "2"}',
     'generation_config.json: eos_token_id must be a token id or a list'),
    ('config.json', '{"eos_token_id": [2, -1]}', 'config.json: eos_token_id must be'),
    ('config.json', '{"eos_token_id": 70000}', 'eos id 70000 is outside the vocabulary'),
    ('chat_template.jinja', b'\xff\xfe{{', 'chat_template.jinja: not UTF-8 text'),
])
def test_bad_config_files_name_the_file(llama3_dir, tmp_path, name, content, message):
  path = copy_of(llama3_dir, tmp_path)
  data = content if isinstance(content, bytes) else content.encode()
  if name == 'tokenizer_config.json':
    config = json.loads((path / name).read_text())
    data = content.encode() if not content.startswith('{"') or content.endswith(': ') else (
        json.dumps({**config, **json.loads(content)}).encode())
  (path / name).write_bytes(data)
  with pytest.raises(ValueError, match=message):
    ct.load_tokenizer(path)


def test_no_eos_anywhere(t5_dir, tmp_path):
  path = copy_of(t5_dir, tmp_path)
  write_json(path / 'tokenizer_config.json', {'eos_token': None})
  with pytest.raises(ValueError, match='no eos token in spiece.model or tokenizer_config.json'):
    ct.load_tokenizer(path)


def test_bad_ids_and_text(llama3_dir):
  tok = ct.load_tokenizer(llama3_dir)
  with pytest.raises(ValueError, match='decode: id 600 is outside the vocabulary .600 ids.'):
    tok.decode([5, 600])
  with pytest.raises(ValueError, match='decode: id -1'):
    tok.decode([-1])
  with pytest.raises(ValueError, match='encode: expected a string, got bytes'):
    tok.encode(b'hi')
