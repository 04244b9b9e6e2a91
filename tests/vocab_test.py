"""Tests for lsc_align.data.vocab: deterministic SentencePiece training with T5 special ids."""
import argparse
import gzip
import json

import pytest
import sentencepiece as spm

from lsc_align.data import hh
from lsc_align.data import vocab


@pytest.fixture(scope='module')
def texts(shared_data):
  pairs, _ = hh.load_split(shared_data / 'hh-rlhf', 'helpful-base', 'train', lenient=True)
  return [t for p in pairs[:150] for t in (p.prompt, p.chosen, p.rejected)]


def test_training_is_deterministic_with_t5_special_ids(texts, tmp_path):
  first = vocab.train_sentencepiece(texts, tmp_path / 'a', 300)
  second = vocab.train_sentencepiece(iter(texts), tmp_path / 'b', 300)
  assert (tmp_path / 'a.model').read_bytes() == (tmp_path / 'b.model').read_bytes()
  assert first.vocab_size == 300
  assert (first.pad_id, first.eos_id, first.unk_id) == (0, 1, 2)
  processor = spm.SentencePieceProcessor(model_file=str(tmp_path / 'a.model'))
  assert processor.bos_id() == -1
  assert [processor.id_to_piece(i) for i in range(3)] == ['<pad>', '</s>', '<unk>']
  text = 'Human: How do I bake bread? Assistant: Mix flour and water.'
  ids = first.encode(text)
  assert ids == second.encode(text) and all(3 <= i < 300 for i in ids)
  assert first.decode(ids) == text
  # Newlines between dialogue turns are normalised to spaces, as in T5's vocabulary.
  dialogue = '\n\nHuman: Hi\n\nAssistant: Hello'
  assert first.decode(first.encode(dialogue)) == 'Human: Hi Assistant: Hello'


def test_files_and_texts_train_the_same_model(texts, tmp_path):
  corpus = tmp_path / 'corpus.txt'
  corpus.write_text('\n'.join(texts) + '\n', encoding='utf-8')
  vocab.train_sentencepiece(None, tmp_path / 'from_files', 300, files=[corpus])
  vocab.train_sentencepiece(texts, tmp_path / 'from_texts', 300)
  assert ((tmp_path / 'from_files.model').read_bytes() ==
          (tmp_path / 'from_texts.model').read_bytes())


def test_retraining_to_the_same_path_is_not_served_from_seqio_cache(texts, tmp_path):
  assert vocab.train_sentencepiece(texts, tmp_path / 'm', 300).vocab_size == 300
  assert vocab.train_sentencepiece(texts, tmp_path / 'm', 350).vocab_size == 350


def test_load_vocabulary_checks_special_ids(texts, tmp_path):
  corpus = tmp_path / 'corpus.txt'
  corpus.write_text('\n'.join(texts), encoding='utf-8')
  # SentencePiece's own defaults put unk at 0, bos at 1, eos at 2: not the T5 convention.
  spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / 'default'),
                                 vocab_size=300, minloglevel=2)
  with pytest.raises(ValueError, match='pad/eos/unk ids'):
    vocab.load_vocabulary(tmp_path / 'default.model')
  with pytest.raises(ValueError, match='no such SentencePiece model'):
    vocab.load_vocabulary(tmp_path / 'missing.model')


def test_main_trains_on_the_train_split_of_a_data_dir(shared_data, tmp_path, capsys):
  # A slice of the real file in the HH layout keeps the run short.
  with gzip.open(shared_data / 'hh-rlhf' / 'harmless-base' / 'test.jsonl.gz', 'rb') as f:
    head = b''.join(line for _, line in zip(range(200), f))
  (tmp_path / 'hh' / 'harmless-base').mkdir(parents=True)
  (tmp_path / 'hh' / 'harmless-base' / 'test.jsonl.gz').write_bytes(gzip.compress(head))
  parser = argparse.ArgumentParser()
  vocab.add_flags(parser)
  out = tmp_path / 'out' / 'hh.model'
  args = parser.parse_args(['--data_dir', str(tmp_path / 'hh'), '--out', str(out),
                            '--vocab_size', '300', '--subsets', 'harmless-base', '--lenient'])
  assert vocab.main(args) == 0
  assert vocab.load_vocabulary(out).vocab_size == 300
  summary = json.loads((tmp_path / 'out' / 'hh.json').read_text())
  num_train = len(hh.load_split(tmp_path / 'hh', 'harmless-base', 'train', lenient=True)[0])
  assert summary['num_texts'] == 3 * num_train and summary['split'] == 'train'
  assert 'hh.model' in capsys.readouterr().out
