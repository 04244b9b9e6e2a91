"""SentencePiece vocabulary for HH-layout text: train one, or load any (e.g. T5's spiece.model).

Ids follow the T5/seqio convention: pad = 0, eos = 1, unk = 2, no bos. Training is deterministic:
every sentence is used (no sampling) and the trainer runs `num_threads=1` by default; the same text
gives byte-identical model files.

Command (registered by the CLI as `vocab`):

    lsc-align vocab --data_dir /work/shared/data/hh-rlhf --out /tmp/hh_spm.model --vocab_size 8000

trains on the prompts and responses of the `train` split of every subset (for the shared copy, the
train split derived from test, see lsc_align.data.hh).
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import os
from typing import Any, Iterable, Iterator, Sequence

from lsc_align import tf_import

tf_import.import_quietly()
import seqio
import sentencepiece as spm

from lsc_align import io_utils
from lsc_align.conventions import EOS_ID, PAD_ID, PROPERTY_SUBSETS, UNK_ID
from lsc_align.data import hh

DEFAULT_SUBSETS = tuple(PROPERTY_SUBSETS.values())
# Sentences longer than this (bytes) are dropped by the trainer; HH turns are far shorter.
_MAX_SENTENCE_BYTES = 1 << 16


def _sentences(texts: Iterable[str], files: Sequence[str | os.PathLike[str]]) -> Iterator[str]:
  """One trainer sentence per non-blank line: dialogue turns are separated by newlines."""
  for text in texts:
    for line in text.split('\n'):
      if line.strip():
        yield line
  for path in files:
    with io_utils.open_file(path) as f:
      for line in f:
        if line.strip():
          yield line.rstrip('\n')


def train_sentencepiece(texts: Iterable[str] | None, model_prefix: str | os.PathLike[str],
                        vocab_size: int, *, files: Sequence[str | os.PathLike[str]] = (),
                        model_type: str = 'unigram', character_coverage: float = 0.9995,
                        byte_fallback: bool = False, num_threads: int = 1,
                        ) -> seqio.SentencePieceVocabulary:
  """Trains a SentencePiece model on texts and/or text files; writes `<model_prefix>.model`.

  Args:
    texts: strings (multi-line texts are split into lines), or None.
    model_prefix: output path without the `.model` suffix.
    vocab_size: number of pieces, including pad, eos and unk.
    files: plain-text files, one sentence per line.
    model_type: 'unigram' (as T5) or 'bpe'.
    character_coverage: share of characters covered; rarer ones map to unk.
    byte_fallback: encode rare characters as bytes instead of unk (needs vocab_size > 259).
    num_threads: trainer threads; results are reproducible for a fixed value.

  Returns:
    A seqio vocabulary reading the written model.
  """
  model_path = os.fspath(model_prefix) + '.model'
  sentences = _sentences(texts if texts is not None else (), files)
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=sentences, model_writer=model, vocab_size=vocab_size,
        model_type=model_type, character_coverage=character_coverage,
        byte_fallback=byte_fallback, num_threads=num_threads,
        pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
        pad_piece='<pad>', eos_piece='</s>', unk_piece='<unk>',
        input_sentence_size=0, shuffle_input_sentence=False,
        max_sentence_length=_MAX_SENTENCE_BYTES, minloglevel=2)
  except RuntimeError as e:  # the trainer reports bad settings for the text as RuntimeError
    reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    reason = reason.rsplit('] ', 1)[-1]  # drop the C++ source location and check
    hint = (' (lower --vocab_size, or train on more text)' if 'Vocabulary size too high' in reason
            else '')
    raise ValueError(f'SentencePiece cannot train a {vocab_size}-piece vocabulary on this text: '
                     f'{reason}{hint}') from e
  io_utils.atomic_write_bytes(model_path, model.getvalue())
  # seqio caches loaded models by path for the process; a retrained file must not read stale.
  cache_clear = getattr(getattr(seqio.vocabularies, '_load_model_internal', None),
                        'cache_clear', None)
  if cache_clear is not None:
    cache_clear()
  return load_vocabulary(model_path)


def load_vocabulary(model_path: str | os.PathLike[str],
                    extra_ids: int = 0) -> seqio.SentencePieceVocabulary:
  """A seqio vocabulary for any SentencePiece model (ours, or a T5 spiece.model).

  Raises:
    ValueError: if the model's pad/eos/unk ids are not 0/1/2.
  """
  model_path = os.fspath(model_path)
  if not io_utils.exists(model_path):
    raise ValueError(f'{model_path}: no such SentencePiece model')
  vocabulary = seqio.SentencePieceVocabulary(model_path, extra_ids=extra_ids)
  ids = (vocabulary.pad_id, vocabulary.eos_id, vocabulary.unk_id)
  if ids != (PAD_ID, EOS_ID, UNK_ID):
    raise ValueError(f'{model_path}: pad/eos/unk ids are {ids}, expected '
                     f'{(PAD_ID, EOS_ID, UNK_ID)} (T5/seqio convention)')
  return vocabulary


def training_texts(data_dir: str | os.PathLike[str], subsets: Sequence[str] = DEFAULT_SUBSETS,
                   split: str = 'train', *, lenient: bool = False) -> list[str]:
  """Prompts and both responses of every pair of `split` in each subset, in file order."""
  texts: list[str] = []
  for subset in subsets:
    pairs, _ = hh.load_split(data_dir, subset, split, lenient=lenient)
    for pair in pairs:
      texts.extend((pair.prompt, pair.chosen, pair.rejected))
  return texts


# The `vocab` command's flags, as (flag, argparse keyword arguments) for the CLI's table.
FLAGS: tuple[tuple[str, dict[str, Any]], ...] = (
    ('--data_dir', {'required': True, 'help': 'root of the HH layout'}),
    ('--out', {'required': True, 'help': 'output model path (.../name.model)'}),
    ('--vocab_size', {'type': int, 'default': 8000, 'help': 'pieces incl. pad, eos, unk'}),
    ('--subsets', {'default': ','.join(DEFAULT_SUBSETS), 'help': 'comma-separated subsets'}),
    ('--split', {'default': 'train', 'help': 'split to train on'}),
    ('--model_type', {'default': 'unigram', 'choices': ('unigram', 'bpe')}),
    ('--character_coverage', {'type': float, 'default': 0.9995}),
    ('--num_threads', {'type': int, 'default': 1}),
    ('--lenient', {'action': 'store_true', 'help': 'skip bad lines instead of stopping'}),
)


def add_flags(parser: argparse.ArgumentParser) -> None:
  """Adds the `vocab` command's flags to a parser."""
  for flag, kwargs in FLAGS:
    parser.add_argument(flag, **kwargs)


def main(args: argparse.Namespace) -> int:
  """`lsc-align vocab`: trains a SentencePiece model on a data directory's training text."""
  out = io_utils.abspath(args.out)
  data_dir = io_utils.abspath(args.data_dir)
  prefix = out[:-len('.model')] if out.endswith('.model') else out
  subsets = tuple(s for s in args.subsets.split(',') if s)
  if not subsets:
    raise ValueError(f'--subsets {args.subsets!r}: name at least one subset directory')
  if args.vocab_size < 4:
    raise ValueError(f'--vocab_size {args.vocab_size}: must be at least 4 (pad, eos, unk, one '
                     'piece)')
  lenient = bool(getattr(args, 'lenient', None))
  # Bad lines stop here, naming file:line, before the trainer sees the text (unless --lenient).
  report = hh.check_splits(data_dir, subsets, (args.split,), lenient=lenient)
  if report.num_skipped:
    skipped_path = prefix + '.skipped_lines.json'
    io_utils.atomic_write_json(skipped_path, {
        'data_dir': data_dir, 'num_lines': report.num_lines, 'num_pairs': report.num_pairs,
        'skipped': [dataclasses.asdict(s) for s in report.skipped]})
    print(f'--lenient: skipped {report.num_skipped} bad lines of {report.num_lines} '
          f'(listed in {skipped_path})', flush=True)
  texts = training_texts(data_dir, subsets, args.split, lenient=lenient)
  vocabulary = train_sentencepiece(
      texts, prefix, args.vocab_size, model_type=args.model_type,
      character_coverage=args.character_coverage, num_threads=args.num_threads)
  io_utils.atomic_write_json(prefix + '.json', {
      'data_dir': data_dir, 'subsets': list(subsets), 'split': args.split,
      'num_texts': len(texts), 'vocab_size': vocabulary.vocab_size,
      'model_type': args.model_type})
  print(f'wrote {prefix}.model ({vocabulary.vocab_size} pieces from {len(texts)} texts)')
  return 0


if __name__ == '__main__':
  _parser = argparse.ArgumentParser(description=main.__doc__)
  add_flags(_parser)
  raise SystemExit(main(_parser.parse_args()))
