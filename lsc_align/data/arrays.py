"""A data directory's seqio tasks as numpy arrays for the trainers, cached on disk as .npz.

Trainers index whole in-memory arrays by step (loop.EpochBatchSchedule), so a run resumes from
a step number alone. Tokenising goes through the seqio tasks of lsc_align.data.tasks (the same
path for Anthropic HH and the embedded world); the result is cached as one .npz per
(task, split, feature lengths), named by a hash of everything that determines its contents:
the data files (name, size, mtime), the vocabulary file's bytes, the feature lengths and the
task kind. A cache hit reads only numpy (no TensorFlow import); a changed data file or
vocabulary gives a new name, never a stale array. Files are written atomically.

Kinds (tasks.register_hh_tasks): 'pairs/<property>' (prompt_ids, chosen_ids, rejected_ids),
'sft' (inputs_ids, targets_ids), 'prompts/<property>' and 'prompts/all' (prompt_ids). Arrays
are int32 [N, L], right-padded with 0; response rows end in eos (1).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Mapping, Sequence

from absl import logging
import numpy as np

from lsc_align import io_utils
from lsc_align.conventions import PROPERTY_SUBSETS
from lsc_align.data import hh

CACHE_FORMAT_VERSION = 1
KINDS = ('pairs/helpful', 'pairs/harmless', 'sft', 'prompts/helpful', 'prompts/harmless',
         'prompts/all')
VOCABULARY_SUFFIXES = ('.txt', '.model')


def check_vocabulary_path(vocabulary_path: str | os.PathLike[str]) -> str:
  """The path as a string; ValueError unless it is an existing .txt (world) or .model file."""
  path = os.fspath(vocabulary_path)
  if not path.endswith(VOCABULARY_SUFFIXES):
    raise ValueError(f'vocabulary {path!r}: expected a world vocab.txt or a SentencePiece .model')
  if not io_utils.isfile(path):
    raise ValueError(f'vocabulary {path!r}: no such file')
  return path


def load_vocabulary(vocabulary_path: str | os.PathLike[str]) -> Any:
  """A seqio.Vocabulary: word vocabulary for a .txt file, SentencePiece for a .model file."""
  path = check_vocabulary_path(vocabulary_path)
  if path.endswith('.txt'):
    from lsc_align.world import vocabulary as word_vocab  # pylint: disable=g-import-not-at-top
    return word_vocab.seqio_vocabulary(path)
  from lsc_align.data import vocab  # pylint: disable=g-import-not-at-top  (imports seqio/TF)
  return vocab.load_vocabulary(path)


def vocabulary_size(vocabulary_path: str | os.PathLike[str]) -> int:
  """Number of ids (pad, eos, unk included), read without seqio or TensorFlow."""
  path = check_vocabulary_path(vocabulary_path)
  if path.endswith('.txt'):
    from lsc_align.world import vocabulary as word_vocab  # pylint: disable=g-import-not-at-top
    return word_vocab.WordVocabulary.load(path).size
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  return int(spm.SentencePieceProcessor(model_proto=io_utils.read_bytes(path)).get_piece_size())


def validation_split(data_dir: str | os.PathLike[str], subset: str = PROPERTY_SUBSETS['helpful']) -> str:
  """'validation' when the subset has one (on disk or derived from test), else 'test'.

  The world has train/test: its test split is the validation set. The shared HH copy has only
  test, from which train (80%) and validation (20%) are derived by prompt hash (lsc_align.data.hh).
  """
  splits = hh.available_splits(os.path.join(os.fspath(data_dir), subset))
  if 'validation' in splits:
    return 'validation'
  if 'test' in splits:
    return 'test'
  raise ValueError(f'{data_dir}/{subset}: no validation or test split (have {splits})')


def _subsets(kind: str) -> tuple[str, ...]:
  if kind == 'sft':
    return (PROPERTY_SUBSETS['helpful'],)
  if kind == 'prompts/all':
    return tuple(PROPERTY_SUBSETS.values())
  return (PROPERTY_SUBSETS[kind.split('/')[1]],)


def cache_key(data_dir: str | os.PathLike[str], vocabulary_path: str | os.PathLike[str],
              kind: str, split: str, feature_lengths: Mapping[str, int],
              validation_fraction: float = hh.DEFAULT_VALIDATION_FRACTION,
              lenient: bool = False) -> str:
  """Hex digest of everything that determines the arrays of (kind, split)."""
  data_dir = io_utils.abspath(data_dir)
  files = {}
  for subset in _subsets(kind):
    for split_name, path in hh.split_files(os.path.join(data_dir, subset)).items():
      files[f'{subset}/{split_name}'] = [os.path.basename(path), *io_utils.file_signature(path)]
  settings = {'version': CACHE_FORMAT_VERSION, 'data_dir': data_dir, 'files': files,
              'vocabulary': io_utils.file_digest(check_vocabulary_path(vocabulary_path)),
              'kind': kind,
              'split': split, 'lengths': {k: int(v) for k, v in sorted(feature_lengths.items())},
              'validation_fraction': validation_fraction}
  if lenient:  # a strict read fails on a bad line where a lenient one skips it
    settings['lenient'] = True
  return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _tokenize(data_dir: str, vocabulary_path: str, kind: str, split: str,
              feature_lengths: Mapping[str, int], validation_fraction: float,
              lenient: bool) -> dict[str, np.ndarray]:
  from lsc_align.data import tasks  # pylint: disable=g-import-not-at-top  (imports TF)
  registered = tasks.register_hh_tasks(data_dir, load_vocabulary(vocabulary_path),
                                       validation_fraction=validation_fraction, lenient=lenient)
  if kind == 'sft':
    task = registered.sft
  elif kind.startswith('pairs/'):
    task = registered.pairs[kind.split('/')[1]]
  else:
    task = registered.prompts[kind.split('/')[1]]
  return tasks.materialize(task, split, feature_lengths)


def task_arrays(data_dir: str | os.PathLike[str], vocabulary_path: str | os.PathLike[str],
                kind: str, split: str, feature_lengths: Mapping[str, int], *,
                cache_dir: str | os.PathLike[str] | None = None,
                validation_fraction: float = hh.DEFAULT_VALIDATION_FRACTION,
                lenient: bool = False) -> dict[str, np.ndarray]:
  """'<feature>_ids' int32 arrays of one (task kind, split), from the cache when present.

  Args:
    data_dir: root of the HH layout (real HH or a written world).
    vocabulary_path: world vocab.txt or SentencePiece .model.
    kind: one of KINDS.
    split: e.g. 'train', 'test', 'validation' (see validation_split).
    feature_lengths: token budget per feature, e.g. {'prompt': 32, 'chosen': 48, 'rejected': 48}.
    cache_dir: where the .npz goes; None disables caching.
    validation_fraction: for train/validation derived from test.
    lenient: skip bad data lines instead of failing on the first (see check_data).

  Raises:
    ValueError: unknown kind, missing feature lengths, bad vocabulary path, or no examples.
  """
  if kind not in KINDS:
    raise ValueError(f'task kind {kind!r} must be one of {KINDS}')
  data_dir = os.fspath(data_dir)
  vocabulary_path = check_vocabulary_path(vocabulary_path)
  path = None
  if cache_dir is not None:
    key = cache_key(data_dir, vocabulary_path, kind, split, feature_lengths, validation_fraction,
                    lenient)
    path = os.path.join(os.fspath(cache_dir), f'{kind.replace("/", "_")}_{split}_{key[:16]}.npz')
    if io_utils.exists(path):
      return io_utils.load_npz(path)
  arrays = _tokenize(data_dir, vocabulary_path, kind, split, feature_lengths, validation_fraction,
                     lenient)
  if not arrays or len(next(iter(arrays.values()))) == 0:
    raise ValueError(f'{data_dir}: task {kind!r} split {split!r} has no examples')
  if path is not None:
    io_utils.atomic_save_npz(path, arrays)
    logging.info('cached %s %s arrays in %s', kind, split, path)
  return arrays


def pair_arrays(data_dir: str | os.PathLike[str], vocabulary_path: str | os.PathLike[str],
                property_name: str, split: str, *, prompt_length: int, response_length: int,
                cache_dir: str | os.PathLike[str] | None = None,
                lenient: bool = False) -> dict[str, np.ndarray]:
  """prompt_ids [N, prompt_length], chosen_ids and rejected_ids [N, response_length]."""
  if property_name not in PROPERTY_SUBSETS:
    raise ValueError(f'property {property_name!r} must be one of {sorted(PROPERTY_SUBSETS)}')
  lengths = {'prompt': prompt_length, 'chosen': response_length, 'rejected': response_length}
  return task_arrays(data_dir, vocabulary_path, f'pairs/{property_name}', split, lengths,
                     cache_dir=cache_dir, lenient=lenient)


def sft_arrays(data_dir: str | os.PathLike[str], vocabulary_path: str | os.PathLike[str],
               split: str, *, prompt_length: int, response_length: int,
               cache_dir: str | os.PathLike[str] | None = None,
               lenient: bool = False) -> dict[str, np.ndarray]:
  """prompt_ids [N, prompt_length] and response_ids [N, response_length] of the SFT task."""
  arrays = task_arrays(data_dir, vocabulary_path, 'sft', split,
                       {'inputs': prompt_length, 'targets': response_length}, cache_dir=cache_dir,
                       lenient=lenient)
  return {'prompt_ids': arrays['inputs_ids'], 'response_ids': arrays['targets_ids']}


SKIPPED_LINES_FILE = 'skipped_lines.json'


def check_data(data_dir: str | os.PathLike[str], kinds: Sequence[str], splits: Sequence[str], *,
               lenient: bool = False, out_dir: str | os.PathLike[str] | None = None
               ) -> hh.ParseReport:
  """Reads the data files behind task kinds and splits before a stage does any work.

  Strict (the default), the first bad line raises hh.BadPairError naming file:line, so nothing
  is trained or written on data that would fail later. Lenient, bad lines are skipped: their
  count is printed and, with out_dir, the list is written to out_dir/skipped_lines.json.
  """
  subsets = sorted({subset for kind in kinds for subset in _subsets(kind)})
  report = hh.check_splits(data_dir, subsets, splits, lenient=lenient)
  if report.num_skipped:
    where = ''
    if out_dir is not None:
      path = os.path.join(os.fspath(out_dir), SKIPPED_LINES_FILE)
      io_utils.atomic_write_json(path, {
          'data_dir': os.fspath(data_dir), 'num_lines': report.num_lines,
          'num_pairs': report.num_pairs,
          'skipped': [dataclasses.asdict(s) for s in report.skipped]})
      where = f' (listed in {path})'
    print(f'--lenient: skipped {report.num_skipped} bad lines of {report.num_lines} in '
          f'{os.fspath(data_dir)}{where}', flush=True)
  return report


def full_rows(ids_NxL: np.ndarray) -> int:
  """Rows with no padding: an upper bound on how many were truncated to the length."""
  return int(np.sum(ids_NxL[:, -1] != 0))


def strip_padding(ids_NxL: np.ndarray) -> list[np.ndarray]:
  """Each right-padded row without its padding."""
  lengths = np.sum(ids_NxL != 0, axis=1)
  return [row[:n] for row, n in zip(ids_NxL, lengths)]


def checkpoint_pair_arrays(data_dir: str | os.PathLike[str], tokenizer: Any, property_name: str,
                           split: str, *, max_length: int, lenient: bool = False,
                           max_pairs: int | None = None) -> tuple[dict[str, np.ndarray], int]:
  """Pairs tokenised by a checkpoint's tokenizer (models.checkpoint_tokenizer) for a decoder
  reward model: ({'chosen', 'rejected'} int32 [N, max_length] right-padded with the tokenizer's
  pad id, {'chosen_lengths', 'rejected_lengths'} int32 [N]}, rows truncated).

  Each side is the text x ++ y encoded with the tokenizer's special tokens. Lengths are explicit
  because the pad id may equal eos. A row longer than max_length keeps its last max_length
  tokens (the response end, where the reward is read), its bos put back first; such rows are
  counted, not refused.
  """
  if property_name not in PROPERTY_SUBSETS:
    raise ValueError(f'property {property_name!r} must be one of {sorted(PROPERTY_SUBSETS)}')
  pairs, _ = hh.load_split(data_dir, PROPERTY_SUBSETS[property_name], split, lenient=lenient)
  pairs = pairs[:max_pairs] if max_pairs is not None else pairs
  if not pairs:
    raise ValueError(f'{data_dir}: pairs/{property_name} split {split!r} has no examples')
  bos = tokenizer.bos_id if tokenizer.add_bos else None
  arrays, truncated_rows = {}, np.zeros(len(pairs), bool)
  for side in ('chosen', 'rejected'):
    ids = np.full((len(pairs), max_length), tokenizer.pad_id, np.int32)
    lengths = np.zeros(len(pairs), np.int32)
    for i, pair in enumerate(pairs):
      row = tokenizer.encode(pair.prompt + getattr(pair, side))
      if len(row) > max_length:
        truncated_rows[i] = True
        row = ([bos] + row[len(row) - max_length + 1:]) if bos is not None else row[-max_length:]
      ids[i, :len(row)], lengths[i] = row, len(row)
    arrays[side], arrays[f'{side}_lengths'] = ids, lengths
  return arrays, int(truncated_rows.sum())
