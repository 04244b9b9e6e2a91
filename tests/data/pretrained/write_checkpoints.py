"""Writes tiny Hugging Face checkpoints and their golden outputs, all produced by transformers.

Each case is a directory beside this file holding what a Hub repository holds (`config.json`,
`model.safetensors` or shards with `model.safetensors.index.json`, tokenizer files,
`tokenizer_config.json`, `generation_config.json`), written by `save_pretrained`, plus:

* `golden.npz`: for causal LMs `input_ids` [2, 12], float32 `logits` [2, 12, V], `prompt_ids`
  [2, 5] and `greedy_ids` [2, 8] (greedy `generate` with the KV cache, no early stop); for T5
  `input_ids`, `attention_mask` [3, 10] (right-padded) and the encoder's `hidden` [3, 10, D];
  for sequence classifiers `input_ids`, `attention_mask` [3, 10] and `scores` [3].
  All computed by the checkpoint loaded back from disk in float32 with eager attention.
* `tokenization.json`: texts from the HH-RLHF test split, the ids AutoTokenizer gives with and
  without special tokens, the bos/eos/pad ids and `len(tokenizer)`.

Weights are randomly initialised (fixed seeds), then every tensor (norms and biases too) gets
noise, so that a mapping mistake (a missed bias, a `1 + w` norm read as `w`) changes the outputs.

Run it in a separate environment with torch (the project's own tests need neither torch nor
transformers; they read the files this writes):

    python -m venv /work/venv_hf
    /work/venv_hf/bin/pip install torch==2.13.0 transformers safetensors tokenizers \
        sentencepiece numpy jinja2 protobuf
    /work/venv_hf/bin/python tests/data/pretrained/write_checkpoints.py \
        --hh_dir /work/shared/data/hh-rlhf [--cases llama3_gqa_rope_scaling,t5_encdec]
"""
import argparse
import gzip
import io
import json
import math
import os
import shutil

import tempfile

import numpy as np
import sentencepiece as spm
import tokenizers
import torch
import transformers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

OUT_DIR = os.path.dirname(os.path.abspath(__file__))
SEQ_LEN, PROMPT_LEN, NEW_TOKENS = 12, 5, 8
SEQCLS_LENGTHS = (10, 6, 3)
T5_LENGTHS = (10, 7, 4)


def perturb_(model: torch.nn.Module, seed: int) -> None:
  """Adds noise to every parameter: N(0, 1/fan_in) to matrices, N(0, 0.1) to vectors."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for _, p in sorted(model.named_parameters()):
      scale = 1.0 / math.sqrt(p.shape[-1]) if p.ndim >= 2 else 0.1
      p.add_(torch.randn(p.shape, generator=gen) * scale)


def to_4x_style(case_dir: str, drop_layer_types: bool) -> None:
  """Rewrites config.json the way transformers 4.x wrote it (torch_dtype, rope_theta/scaling)."""
  path = os.path.join(case_dir, 'config.json')
  with open(path) as f:
    config = json.load(f)
  rope = dict(config.pop('rope_parameters'))
  config['rope_theta'] = rope.pop('rope_theta')
  config['rope_scaling'] = None if rope.get('rope_type') == 'default' else rope
  config['torch_dtype'] = config.pop('dtype')
  if drop_layer_types:  # configs written before layer_types existed; the default is derived
    config.pop('layer_types')
  with open(path, 'w') as f:
    json.dump(dict(sorted(config.items())), f, indent=2)
    f.write('\n')


def load_fp32(case_dir: str, auto_cls=transformers.AutoModelForCausalLM):
  model = auto_cls.from_pretrained(case_dir, dtype=torch.float32, attn_implementation='eager')
  return model.eval()


def save_case(name, model, tokenizer, dtype, max_shard_size=None, style='5.x',
              drop_layer_types=False, keep_files=None, auto_cls=None, extra_files=None,
              tokenizer_config=None):
  """Saves model + tokenizer, rewrites the config if 4.x style, checks the reload is the same."""
  case_dir = os.path.join(OUT_DIR, name)
  shutil.rmtree(case_dir, ignore_errors=True)
  model.to(dtype)
  kwargs = {'max_shard_size': max_shard_size} if max_shard_size else {}
  model.save_pretrained(case_dir, **kwargs)
  if tokenizer is not None:
    tokenizer.save_pretrained(case_dir, save_jinja_files=False)
  if keep_files is not None:  # e.g. a SentencePiece-only repository: no tokenizer.json
    for fname in os.listdir(case_dir):
      if fname.startswith('tokenizer') and fname not in keep_files:
        os.remove(os.path.join(case_dir, fname))
  for fname, data in (extra_files or {}).items():
    with open(os.path.join(case_dir, fname), 'wb') as f:
      f.write(data)
  if tokenizer_config:  # keys transformers 5 does not write back but Hub files have
    path = os.path.join(case_dir, 'tokenizer_config.json')
    with open(path) as f:
      written = json.load(f)
    with open(path, 'w') as f:
      json.dump(dict(sorted({**written, **tokenizer_config}.items())), f, indent=2)
      f.write('\n')
  if style == '4.x':
    auto_cls = auto_cls or transformers.AutoModelForCausalLM
    ids = torch.arange(3, 3 + SEQ_LEN)[None]
    model_5x = load_fp32(case_dir, auto_cls)
    to_4x_style(case_dir, drop_layer_types)
    model_4x = load_fp32(case_dir, auto_cls)
    with torch.no_grad():
      a, b = (m(input_ids=ids).logits for m in (model_5x, model_4x))
    if not torch.equal(a, b):
      raise AssertionError(f'{name}: 4.x-style config changes the logits')
  return case_dir


def ablation_effects(case_dir: str, ablations: dict) -> None:
  """Prints how much each config change (a feature switched off) moves the golden logits."""
  golden = np.load(os.path.join(case_dir, 'golden.npz'))
  ids = torch.from_numpy(golden['input_ids']).long()
  for label, overrides in ablations.items():
    config = transformers.AutoConfig.from_pretrained(case_dir)
    for key, value in overrides.items():
      if not key.startswith('fill:'):
        setattr(config, key, value)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        case_dir, config=config, dtype=torch.float32, attn_implementation='eager').eval()
    with torch.no_grad():
      for key, value in overrides.items():  # 'fill:<name part>': those tensors set to value
        for name, p in model.named_parameters():
          if key.startswith('fill:') and key[5:] in name:
            p.fill_(value)
      diff = float((model(input_ids=ids).logits - torch.from_numpy(golden['logits'])).abs().max())
    print(f'  {os.path.basename(case_dir)}: without {label}: max |d logits| {diff:.3f}')
    if diff < 1e-2:
      raise AssertionError(f'{case_dir}: {label} barely matters ({diff})')


def random_ids(gen, low, high, shape):
  return torch.randint(low, high, shape, generator=gen)


def greedy_no_cache(model, prompt):
  """Greedy continuation recomputing the whole prefix each step (no KV cache), and the margin."""
  ids, margin = prompt, float('inf')
  for _ in range(NEW_TOKENS):
    logits = model(input_ids=ids).logits[:, -1]
    top2 = logits.topk(2, dim=-1).values
    margin = min(margin, float((top2[:, 0] - top2[:, 1]).min()))
    ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
  return ids[:, prompt.shape[1]:], margin


def causal_golden(case_dir: str, n_ids: int, seed: int) -> dict:
  """Logits on random ids and greedy ids from generate(), computed from the saved checkpoint."""
  model = load_fp32(case_dir)
  gen = torch.Generator().manual_seed(seed)
  input_ids = random_ids(gen, 0, n_ids, (2, SEQ_LEN))
  config = transformers.GenerationConfig(
      do_sample=False, max_new_tokens=NEW_TOKENS, eos_token_id=None, pad_token_id=None,
      bos_token_id=None)
  with torch.no_grad():
    logits = model(input_ids=input_ids).logits
    for _ in range(20):  # a prompt whose greedy path has no near-ties, so float noise can't flip it
      prompt = random_ids(gen, 0, n_ids, (2, PROMPT_LEN))
      reference, margin = greedy_no_cache(model, prompt)
      if margin > 0.02:
        break
    out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                         generation_config=config)
  greedy = out[:, PROMPT_LEN:]
  if greedy.shape != (2, NEW_TOKENS) or not torch.equal(greedy, reference):
    raise AssertionError(f'{case_dir}: generate gave {greedy.tolist()} vs {reference.tolist()}')
  print(f'  {os.path.basename(case_dir)}: greedy margin {margin:.3f}, logits std '
        f'{float(logits.std()):.2f}')
  return {'input_ids': input_ids.numpy().astype(np.int32),
          'logits': logits.numpy().astype(np.float32),
          'prompt_ids': prompt.numpy().astype(np.int32),
          'greedy_ids': greedy.numpy().astype(np.int32)}


def right_padded(gen, lengths, low, high, pad_id, last_id=None):
  """A right-padded batch [len(lengths), max(lengths)] of random ids, and its mask."""
  ids = torch.full((len(lengths), max(lengths)), pad_id)
  mask = torch.zeros_like(ids)
  for row, n in enumerate(lengths):
    ids[row, :n] = random_ids(gen, low, high, (n,))
    if last_id is not None:
      ids[row, n - 1] = last_id
    mask[row, :n] = 1
  return ids, mask


def write_golden(case_dir: str, arrays: dict) -> None:
  np.savez(os.path.join(case_dir, 'golden.npz'), **arrays)


SP_FILES = ('tokenizer.model', 'spiece.model')


def write_tokenization(case_dir: str, texts: list, chat: bool = False) -> None:
  """Records what AutoTokenizer, loaded back from the case directory, makes of the texts."""
  tok = transformers.AutoTokenizer.from_pretrained(case_dir)
  record = {
      'tokenizer_class': type(tok).__name__,
      'bos_token_id': tok.bos_token_id, 'eos_token_id': tok.eos_token_id,
      'pad_token_id': tok.pad_token_id, 'unk_token_id': tok.unk_token_id,
      'len_tokenizer': len(tok),
      'texts': [{'text': t,
                 'ids_with_special_tokens': tok(t, add_special_tokens=True).input_ids,
                 'ids_without_special_tokens': tok(t, add_special_tokens=False).input_ids}
                for t in texts]}
  sp_path = [os.path.join(case_dir, n) for n in SP_FILES
             if os.path.exists(os.path.join(case_dir, n))]
  if sp_path:  # transformers converts the model to a tokenizers pipeline; record sentencepiece too
    sp = spm.SentencePieceProcessor(model_file=sp_path[0])
    for item in record['texts']:
      item['sentencepiece_ids'] = sp.encode(item['text'])
  if chat:
    messages = [{'role': 'user', 'content': 'Hi there'}, {'role': 'assistant', 'content': 'Hi!'},
                {'role': 'user', 'content': 'How are you?'}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    record['chat'] = {'messages': messages, 'add_generation_prompt': True, 'text': text,
                      'ids': tok(text, add_special_tokens=False).input_ids}
  with open(os.path.join(case_dir, 'tokenization.json'), 'w') as f:
    json.dump(record, f, ensure_ascii=False)
    f.write('\n')


# ---- tokenizers ----------------------------------------------------------------------------
# Pre-tokenizer splits of the Llama 3 and Qwen2 tokenizer.json files (they differ in digits).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN_SPLIT = LLAMA3_SPLIT.replace(r'\p{N}{1,3}', r'\p{N}')
BPE_VOCAB = 320  # 256 bytes + merges (+ specials the trainer places first)
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
          "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def read_hh(hh_dir: str, subset: str) -> list:
  with gzip.open(os.path.join(hh_dir, subset, 'test.jsonl.gz'), 'rt', encoding='utf-8') as f:
    return [json.loads(line)['chosen'] for line in f]


def sample_texts(helpful: list, harmless: list) -> list:
  """Five texts: dialogues (one in full), curly quotes, accents, Greek, Chinese, digits."""
  def around(text, needle, width=160):
    start = max(0, text.index(needle) - width // 2)
    return text[start:start + width]
  return [helpful[0], harmless[0][:300], around(helpful[400], 'Γ'), around(helpful[2347], '沙'),
          around(helpful[168], 'é')]


def byte_bpe(texts, split, leading, trailing, bos=None, nfc=False):
  """A byte-level BPE tokenizer trained on texts; `leading` specials get the first ids."""
  tok = tokenizers.Tokenizer(models.BPE())
  if nfc:
    tok.normalizer = normalizers.NFC()
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=split is None)
  tok.pre_tokenizer = byte_level if split is None else pre_tokenizers.Sequence(
      [pre_tokenizers.Split(tokenizers.Regex(split), behavior='isolated'), byte_level])
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB, special_tokens=leading, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(texts, trainer)
  tok.add_special_tokens(trailing)
  post = processors.ByteLevel(trim_offsets=False)
  if bos is not None:
    template = processors.TemplateProcessing(
        single=f'{bos}:0 $A:0', pair=f'{bos}:0 $A:0 {bos}:1 $B:1',
        special_tokens=[(bos, tok.token_to_id(bos))])
    post = processors.Sequence([post, template])
  tok.post_processor = post
  return tok


def llama3_tokenizer(texts):
  specials = ['<|begin_of_text|>', '<|end_of_text|>', '<|finetune_right_pad_id|>',
              '<|start_header_id|>', '<|end_header_id|>', '<|eot_id|>']
  tok = byte_bpe(texts, LLAMA3_SPLIT, [], specials, bos='<|begin_of_text|>')
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token='<|begin_of_text|>', eos_token='<|end_of_text|>',
      clean_up_tokenization_spaces=True, model_max_length=131072)


def qwen_tokenizer(texts):
  tok = byte_bpe(texts, QWEN_SPLIT, [], ['<|endoftext|>', '<|im_start|>', '<|im_end|>'], nfc=True)
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, eos_token='<|im_end|>', pad_token='<|endoftext|>',
      chat_template=CHATML, clean_up_tokenization_spaces=False, model_max_length=32768,
      errors='replace', split_special_tokens=False)


def gemma_tokenizer(texts):
  leading = ['<pad>', '<eos>', '<bos>', '<unk>', '<start_of_turn>', '<end_of_turn>']
  tok = byte_bpe(texts, None, leading, [], bos='<bos>')
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token='<bos>', eos_token='<eos>', pad_token='<pad>',
      unk_token='<unk>', clean_up_tokenization_spaces=False, model_max_length=8192)


def sentencepiece_model(texts, **kwargs) -> bytes:
  """A SentencePiece model trained in memory on texts (single thread: deterministic)."""
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_writer=buf, num_threads=1, minloglevel=2,
      max_sentence_length=100000, shuffle_input_sentence=False, **kwargs)
  return buf.getvalue()


def llama2_sp(texts) -> bytes:
  return sentencepiece_model(
      texts, model_type='bpe', vocab_size=384, byte_fallback=True, split_digits=True,
      normalization_rule_name='identity', add_dummy_prefix=True, remove_extra_whitespaces=False,
      allow_whitespace_only_pieces=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1)


def t5_sp(texts) -> bytes:
  return sentencepiece_model(texts, model_type='unigram', vocab_size=256, pad_id=0, eos_id=1,
                             unk_id=2, bos_id=-1)


def from_sp(cls, sp_bytes: bytes, fname: str, **kwargs):
  """Loads a transformers tokenizer class from a SentencePiece model file."""
  with tempfile.TemporaryDirectory() as tmp:
    with open(os.path.join(tmp, fname), 'wb') as f:
      f.write(sp_bytes)
    return cls.from_pretrained(tmp, **kwargs)


def check_tokenization(case_dir: str) -> None:
  """Compares the recorded ids with tokenizers / sentencepiece run directly on the files."""
  with open(os.path.join(case_dir, 'tokenization.json')) as f:
    record = json.load(f)
  json_path = os.path.join(case_dir, 'tokenizer.json')
  for item in record['texts']:
    if os.path.exists(json_path):
      direct = tokenizers.Tokenizer.from_file(json_path)
      same = all(direct.encode(item['text'], add_special_tokens=special).ids == item[key]
                 for key, special in (('ids_with_special_tokens', True),
                                      ('ids_without_special_tokens', False)))
    else:
      bos = [record['bos_token_id']] if record['bos_token_id'] is not None else []
      eos = [record['eos_token_id']] if record['tokenizer_class'].startswith('T5') else []
      ids = item['sentencepiece_ids']
      same = (ids == item['ids_without_special_tokens']
              and bos + ids + eos == item['ids_with_special_tokens'])
    if not same:
      print(f'  NOTE {os.path.basename(case_dir)}: transformers and the tokenizer library '
            f'differ on {item["text"][:30]!r}')


# ---- cases ---------------------------------------------------------------------------------
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=2048)


# transformers 5 writes tokenizer_class 'TokenizersBackend', a name 4.x does not know; Hub
# repositories name the class 4.x and 5.x both load.
FAST_CLASS = {'tokenizer_class': 'PreTrainedTokenizerFast'}
QWEN_TOKENIZER_CONFIG = dict(FAST_CLASS, add_bos_token=False, bos_token=None)
GEMMA_TOKENIZER_CONFIG = dict(FAST_CLASS, add_bos_token=True, add_eos_token=False)


def new_model(cls, config, seed):
  torch.manual_seed(seed)
  model = cls(config)
  perturb_(model, seed + 1)
  return model.eval()


def llama3_config(tok, **overrides):
  rope = {'rope_type': 'llama3', 'rope_theta': 500000.0, 'factor': 8.0, 'low_freq_factor': 1.0,
          'high_freq_factor': 2.0, 'original_max_position_embeddings': 256}
  kwargs = dict(TINY, vocab_size=len(tok), rope_parameters=rope, tie_word_embeddings=False,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
  kwargs.update(overrides)
  return transformers.LlamaConfig(**kwargs)


def qwen2_config(tok, **overrides):
  kwargs = dict(TINY, vocab_size=384, rope_parameters={'rope_type': 'default', 'rope_theta': 1e6},
                tie_word_embeddings=True, bos_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id, sliding_window=32768, max_window_layers=21)
  kwargs.update(overrides)
  return transformers.Qwen2Config(**kwargs)


def gemma2_config(tok, **overrides):
  kwargs = dict(TINY, vocab_size=len(tok), head_dim=16, query_pre_attn_scalar=24,
                sliding_window=4, attn_logit_softcapping=2.0, final_logit_softcapping=3.0,
                hidden_activation='gelu_pytorch_tanh', pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                rope_parameters={'rope_type': 'default', 'rope_theta': 10000.0})
  kwargs.update(overrides)
  return transformers.Gemma2Config(**kwargs)


def case_llama3_gqa_rope_scaling(tk):
  tok = tk['llama3']
  model = new_model(transformers.LlamaForCausalLM, llama3_config(tok), 10)
  return (save_case('llama3_gqa_rope_scaling', model, tok, torch.float32,
                    tokenizer_config=FAST_CLASS), len(tok))


def case_llama2_tied_bf16_sharded(tk):
  tok = from_sp(transformers.LlamaTokenizer, tk['llama2_sp'], 'tokenizer.model',
                add_bos_token=True, add_eos_token=False)
  config = transformers.LlamaConfig(
      **dict(TINY, num_key_value_heads=4), vocab_size=len(tok), tie_word_embeddings=True,
      rope_parameters={'rope_type': 'default', 'rope_theta': 10000.0}, rms_norm_eps=1e-5,
      bos_token_id=1, eos_token_id=2)
  model = new_model(transformers.LlamaForCausalLM, config, 20)
  case_dir = save_case('llama2_tied_bf16_sharded', model, tok, torch.bfloat16,
                       max_shard_size='30KB', style='4.x',
                       keep_files=('tokenizer_config.json',),
                       extra_files={'tokenizer.model': tk['llama2_sp']},
                       tokenizer_config={'add_bos_token': True, 'add_eos_token': False})
  return case_dir, len(tok)


def case_qwen2_bias(tk):
  tok = tk['qwen']
  model = new_model(transformers.Qwen2ForCausalLM, qwen2_config(tok), 30)
  return (save_case('qwen2_bias', model, tok, torch.float16, style='4.x', drop_layer_types=True,
                    tokenizer_config=QWEN_TOKENIZER_CONFIG), len(tok))


def case_qwen3_qknorm(tk):
  tok = tk['qwen']
  config = transformers.Qwen3Config(
      **TINY, head_dim=16, vocab_size=384, tie_word_embeddings=False,
      rope_parameters={'rope_type': 'default', 'rope_theta': 1e6},
      bos_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
  model = new_model(transformers.Qwen3ForCausalLM, config, 40)
  return (save_case('qwen3_qknorm', model, tok, torch.float32,
                    tokenizer_config=QWEN_TOKENIZER_CONFIG), len(tok))


def case_gemma2_softcap(tk):
  tok = tk['gemma']
  model = new_model(transformers.Gemma2ForCausalLM, gemma2_config(tok), 50)
  return (save_case('gemma2_softcap', model, tok, torch.float32, style='4.x',
                    drop_layer_types=True, tokenizer_config=GEMMA_TOKENIZER_CONFIG), len(tok))


def case_gemma3_text(tk):
  tok = tk['gemma']
  config = transformers.Gemma3TextConfig(
      **dict(TINY, num_hidden_layers=3), vocab_size=len(tok), head_dim=16,
      query_pre_attn_scalar=20, sliding_window=4,
      layer_types=['sliding_attention', 'sliding_attention', 'full_attention'],
      rope_parameters={'sliding_attention': {'rope_type': 'default', 'rope_theta': 10000.0},
                       'full_attention': {'rope_type': 'linear', 'factor': 8.0,
                                          'rope_theta': 1e6}},
      hidden_activation='gelu_pytorch_tanh', pad_token_id=tok.pad_token_id,
      eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
  model = new_model(transformers.Gemma3ForCausalLM, config, 60)
  return (save_case('gemma3_text', model, tok, torch.float32,
                    tokenizer_config=GEMMA_TOKENIZER_CONFIG), len(tok))


# Each feature a case is meant to exercise, switched off: the logits must move.
ABLATIONS = {
    'llama3_gqa_rope_scaling': {
        'llama3 rope scaling': {'rope_parameters': {'rope_type': 'default',
                                                    'rope_theta': 500000.0}}},
    'llama2_tied_bf16_sharded': {'norm weights': {'fill:norm': 1.0}},
    'qwen2_bias': {'q/k/v biases': {'fill:bias': 0.0}},
    'qwen3_qknorm': {'q/k norms': {'fill:q_norm': 1.0, 'fill:k_norm': 1.0}},
    'gemma2_softcap': {
        'attn softcap': {'attn_logit_softcapping': None},
        'final softcap': {'final_logit_softcapping': None},
        'sliding window': {'sliding_window': 64},
        'query_pre_attn_scalar': {'query_pre_attn_scalar': 16},
        'post-feedforward norm (1 + w)': {'fill:post_feedforward_layernorm': 0.0}},
    'gemma3_text': {
        'sliding window': {'sliding_window': 64},
        'local rope base': {'rope_parameters': {
            'sliding_attention': {'rope_type': 'linear', 'factor': 8.0, 'rope_theta': 1e6},
            'full_attention': {'rope_type': 'linear', 'factor': 8.0, 'rope_theta': 1e6}}},
        'global linear rope scaling': {'rope_parameters': {
            'sliding_attention': {'rope_type': 'default', 'rope_theta': 10000.0},
            'full_attention': {'rope_type': 'default', 'rope_theta': 1e6}}},
        'q/k norms': {'fill:q_norm': 0.0, 'fill:k_norm': 0.0}},
}


POLICY_CASES = {
    'llama3_gqa_rope_scaling': case_llama3_gqa_rope_scaling,
    'llama2_tied_bf16_sharded': case_llama2_tied_bf16_sharded,
    'qwen2_bias': case_qwen2_bias,
    'qwen3_qknorm': case_qwen3_qknorm,
    'gemma2_softcap': case_gemma2_softcap,
    'gemma3_text': case_gemma3_text,
}


def build_tokenizers(hh_dir: str) -> dict:
  helpful, harmless = read_hh(hh_dir, 'helpful-base'), read_hh(hh_dir, 'harmless-base')
  train = helpful[:1000] + harmless[:1000]
  return {'texts': sample_texts(helpful, harmless), 'llama3': llama3_tokenizer(train),
          'qwen': qwen_tokenizer(train), 'gemma': gemma_tokenizer(train),
          'llama2_sp': llama2_sp(train), 't5_sp': t5_sp(train)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--hh_dir', default='/work/shared/data/hh-rlhf',
                      help='HH-RLHF directory with <subset>/test.jsonl.gz')
  parser.add_argument('--cases', default='', help='comma-separated case names (default: all)')
  args = parser.parse_args()
  all_cases = dict(POLICY_CASES, **globals().get('REWARD_CASES', {}))
  names = args.cases.split(',') if args.cases else list(all_cases)
  unknown = sorted(set(names) - set(all_cases))
  if unknown:
    raise ValueError(f'unknown --cases {unknown}; known: {sorted(all_cases)}')
  print(f'transformers {transformers.__version__}, torch {torch.__version__}')
  tk = build_tokenizers(args.hh_dir)
  for index, name in enumerate(all_cases):
    if name not in names:
      continue
    case_dir, n_ids = all_cases[name](tk)
    if name in POLICY_CASES:
      write_golden(case_dir, causal_golden(case_dir, n_ids, seed=100 + index))
      ablation_effects(case_dir, ABLATIONS.get(name, {}))
    if any(f.startswith(('tokenizer', 'spiece')) for f in os.listdir(case_dir)):
      write_tokenization(case_dir, tk['texts'], chat=name == 'qwen2_bias')
      check_tokenization(case_dir)
    print(f'  {name}: {sorted(os.listdir(case_dir))}')


if __name__ == '__main__':
  main()
