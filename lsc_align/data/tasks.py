"""seqio Tasks over a directory in the HH layout (real HH or the embedded world), and numpy arrays.

`register_hh_tasks(data_dir, vocabulary)` registers, for any seqio.Vocabulary:
  * pairs per property (helpful, harmless): features prompt, chosen, rejected (reward models);
  * sft: inputs = prompt, targets = chosen response of the helpful set (π0);
  * prompts per property and 'all' (RL and reference estimation), each prompt once per split.
Splits are those of `lsc_align.data.hh.available_splits` (files on disk; train/validation derived
from test when neither exists). A bad line is an error naming file and line; with `lenient`
bad lines are skipped and logged, never mis-split.

Truncation to feature lengths: a dialogue prompt keeps its END (the latest turns, which the
response answers); a response keeps its beginning, and eos (id 1) is always its last token.
`count_truncated` says how many examples lost tokens, per feature. `materialize` turns a
(task, split) into padded int32 arrays (pad 0, right) that trainers index by step, so iteration
resumes exactly from a step number.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from typing import Any, Callable, Mapping, Sequence

from absl import logging
import numpy as np
from lsc_align import tf_import

tf_import.import_quietly()
import seqio
import tensorflow as tf

from lsc_align import io_utils
from lsc_align.conventions import PROPERTY_SUBSETS
from lsc_align.data import hh

KEEP_END_FEATURES = ('prompt', 'inputs')  # dialogue prompts: the latest turns matter most
_PROBE_TEXT = '\n\nHuman: What is 2 + 2?\n\nAssistant: It is 4.'
_REGISTERED: dict[str, str] = {}  # task name -> fingerprint of how it was registered


@dataclasses.dataclass(frozen=True)
class HHTasks:
  """Names of the registered seqio tasks."""
  pairs: Mapping[str, str]  # property -> task with features prompt, chosen, rejected
  sft: str  # features inputs (prompt), targets (chosen response)
  prompts: Mapping[str, str]  # property or 'all' -> task with feature prompt


def vocabulary_fingerprint(vocabulary: seqio.Vocabulary) -> str:
  """Identifies a vocabulary by type, size and model bytes (or its ids for a probe text)."""
  parts = [type(vocabulary).__module__, type(vocabulary).__qualname__, str(vocabulary.vocab_size)]
  sp_model = getattr(vocabulary, 'sp_model', None)
  if isinstance(sp_model, bytes):
    parts.append(hashlib.sha256(sp_model).hexdigest())
  else:
    parts.append(repr(list(vocabulary.encode(_PROBE_TEXT))))
  return '|'.join(parts)


def truncate_dialogue_features(dataset: tf.data.Dataset, sequence_length: Mapping[str, int] | None,
                               output_features: Mapping[str, seqio.Feature],
                               keep_end: Sequence[str] = KEEP_END_FEATURES) -> tf.data.Dataset:
  """Truncates token features to sequence_length and appends eos where Feature.add_eos.

  Features named in keep_end keep their last tokens, the others their first. Each feature also
  gets '<name>_num_tokens': its length before truncation (eos included), for count_truncated.
  """
  for name, length in (sequence_length or {}).items():
    if name in output_features and length is not None and length < 1:
      raise ValueError(f'feature length of "{name}" must be >= 1, got {length}')

  def truncate(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    example = dict(example)
    for name, feature in output_features.items():
      if name not in example:
        continue
      tokens = tf.cast(example[name], feature.dtype)
      eos = tf.constant([feature.vocabulary.eos_id], feature.dtype) if feature.add_eos else None
      num_tokens = tf.size(tokens) + (1 if feature.add_eos else 0)
      example[f'{name}_num_tokens'] = tf.cast(num_tokens, tf.int32)
      length = (sequence_length or {}).get(name)
      if length is not None:
        body = length - (1 if feature.add_eos else 0)
        if name in keep_end:
          tokens = tokens[tf.maximum(tf.size(tokens) - body, 0):]
        else:
          tokens = tokens[:body]
      example[name] = tokens if eos is None else tf.concat([tokens, eos], axis=0)
    return example

  return dataset.map(truncate, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _columns_dataset(columns: Mapping[str, Sequence[str]]) -> tf.data.Dataset:
  return tf.data.Dataset.from_tensor_slices(
      {k: tf.constant(list(v), dtype=tf.string, shape=[len(v)]) for k, v in columns.items()})


def _load(data_dir: str, subset: str, split: str, lenient: bool,
          validation_fraction: float) -> list[hh.PreferencePair]:
  pairs, report = hh.load_split(data_dir, subset, split, lenient=lenient,
                                validation_fraction=validation_fraction)
  if report.num_skipped:
    logging.log_first_n(logging.WARNING, '%s/%s:%s skipped %d bad lines:\n%s', 32, data_dir,
                        subset, split, report.num_skipped, report.summary())
  return pairs


def _pairs_dataset_fn(split: str, shuffle_files: bool, seed: int | None = None, *, data_dir: str,
                      subset: str, lenient: bool, validation_fraction: float) -> tf.data.Dataset:
  del shuffle_files, seed  # one file per split, read in file order
  pairs = _load(data_dir, subset, split, lenient, validation_fraction)
  return _columns_dataset({'prompt': [p.prompt for p in pairs],
                           'chosen': [p.chosen for p in pairs],
                           'rejected': [p.rejected for p in pairs]})


def _sft_dataset_fn(split: str, shuffle_files: bool, seed: int | None = None, *, data_dir: str,
                    subset: str, lenient: bool, validation_fraction: float) -> tf.data.Dataset:
  del shuffle_files, seed
  pairs = _load(data_dir, subset, split, lenient, validation_fraction)
  return _columns_dataset({'inputs': [p.prompt for p in pairs],
                           'targets': [p.chosen for p in pairs]})


def _prompts_dataset_fn(split: str, shuffle_files: bool, seed: int | None = None, *, data_dir: str,
                        subsets: Sequence[str], lenient: bool,
                        validation_fraction: float) -> tf.data.Dataset:
  del shuffle_files, seed
  # A prompt that appears in several pairs is one prompt for RL and for reference estimates.
  prompts = dict.fromkeys(p.prompt for subset in subsets
                          for p in _load(data_dir, subset, split, lenient, validation_fraction))
  return _columns_dataset({'prompt': list(prompts)})


def _register(name: str, fingerprint: str, make_task: Callable[[], dict[str, Any]]) -> str:
  """Adds a task once; the same call again is a no-op, a different one under the name an error."""
  if name in seqio.TaskRegistry.names():
    if _REGISTERED.get(name) == fingerprint:
      return name
    raise ValueError(f'seqio task "{name}" is already registered with other parameters; '
                     'pass another name_prefix')
  seqio.TaskRegistry.add(name, **make_task())
  _REGISTERED[name] = fingerprint
  return name


def register_hh_tasks(data_dir: str | os.PathLike[str], vocabulary: seqio.Vocabulary, *,
                      name_prefix: str | None = None,
                      properties: Mapping[str, str] = PROPERTY_SUBSETS,
                      sft_property: str = 'helpful', lenient: bool = False,
                      validation_fraction: float = hh.DEFAULT_VALIDATION_FRACTION) -> HHTasks:
  """Registers pairs, SFT and prompts tasks for one data directory and vocabulary.

  Args:
    data_dir: root of the HH layout (`<data_dir>/<subset>/<split>.jsonl.gz`).
    vocabulary: any seqio.Vocabulary with pad 0 and eos 1.
    name_prefix: task name prefix; by default a hash of all arguments, so distinct data or
      vocabularies never share names and repeated calls return the same names.
    properties: property name -> subset directory name.
    sft_property: whose chosen responses are the SFT targets.
    lenient: skip bad lines (logged) instead of failing on the first.
    validation_fraction: for train/validation derived from test.

  Returns:
    The task names.

  Raises:
    ValueError: a subset directory is missing, or a name is taken with other parameters.
  """
  data_dir = io_utils.abspath(data_dir)
  if sft_property not in properties:
    raise ValueError(f'sft_property "{sft_property}" is not one of {sorted(properties)}')
  settings = {'data_dir': data_dir, 'vocabulary': vocabulary_fingerprint(vocabulary),
              'properties': dict(properties), 'lenient': lenient,
              'validation_fraction': validation_fraction}
  if name_prefix is None:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    name_prefix = f'hh_{digest}'
  splits = {prop: hh.available_splits(os.path.join(data_dir, subset))
            for prop, subset in properties.items()}
  read = {'data_dir': data_dir, 'lenient': lenient, 'validation_fraction': validation_fraction}
  prompt_feature = seqio.Feature(vocabulary, add_eos=False, dtype=tf.int32)
  response_feature = seqio.Feature(vocabulary, add_eos=True, dtype=tf.int32)
  preprocessors = [
      functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False, with_eos=False),
      truncate_dialogue_features,
  ]

  def task(dataset_fn: Callable[..., tf.data.Dataset], task_splits: Sequence[str],
           features: Mapping[str, seqio.Feature]) -> dict[str, Any]:
    source = seqio.FunctionDataSource(dataset_fn, splits=list(task_splits))
    return {'source': source, 'output_features': dict(features),
            'preprocessors': preprocessors}

  def add(kind: str, name: str, **make: Any) -> str:
    fingerprint = json.dumps({**settings, 'kind': kind}, sort_keys=True)
    return _register(name, fingerprint, lambda: task(**make))

  pairs, prompts = {}, {}
  for prop, subset in properties.items():
    pairs[prop] = add(f'pairs/{prop}', f'{name_prefix}_pairs_{prop}',
                      dataset_fn=functools.partial(_pairs_dataset_fn, subset=subset, **read),
                      task_splits=splits[prop],
                      features={'prompt': prompt_feature, 'chosen': response_feature,
                                'rejected': response_feature})
    prompts[prop] = add(f'prompts/{prop}', f'{name_prefix}_prompts_{prop}',
                        dataset_fn=functools.partial(_prompts_dataset_fn, subsets=(subset,),
                                                     **read),
                        task_splits=splits[prop], features={'prompt': prompt_feature})
  common = [s for s in splits[next(iter(properties))] if all(s in v for v in splits.values())]
  prompts['all'] = add('prompts/all', f'{name_prefix}_prompts_all',
                       dataset_fn=functools.partial(_prompts_dataset_fn,
                                                    subsets=tuple(properties.values()), **read),
                       task_splits=common, features={'prompt': prompt_feature})
  sft = add('sft', f'{name_prefix}_sft',
            dataset_fn=functools.partial(_sft_dataset_fn, subset=properties[sft_property], **read),
            task_splits=splits[sft_property],
            features={'inputs': prompt_feature, 'targets': response_feature})
  return HHTasks(pairs=pairs, sft=sft, prompts=prompts)


def _token_batches(task: str | seqio.Task, split: str,
                   feature_lengths: Mapping[str, int]) -> tuple[dict[str, np.ndarray], ...]:
  """(padded token arrays [N, L] per feature, untruncated lengths [N] per feature)."""
  task = seqio.get_mixture_or_task(task) if isinstance(task, str) else task
  missing = sorted(set(task.output_features) - set(feature_lengths))
  if missing:
    raise ValueError(f'{task.name}: no feature length for {missing}')
  names = list(task.output_features)
  lengths = {name: int(feature_lengths[name]) for name in names}
  ds = task.get_dataset(sequence_length=lengths, split=split, shuffle=False, num_epochs=1,
                        try_in_mem_cache=False)
  ds = ds.map(lambda ex: {k: ex[k] for k in names + [f'{n}_num_tokens' for n in names]})
  ds = ds.padded_batch(
      1024, padded_shapes={**{n: [lengths[n]] for n in names},
                           **{f'{n}_num_tokens': [] for n in names}},
      padding_values={**{n: np.int32(0) for n in names},
                      **{f'{n}_num_tokens': np.int32(0) for n in names}})
  batches = list(ds.as_numpy_iterator())
  tokens, untruncated = {}, {}
  for name in names:
    tokens[name] = (np.concatenate([b[name] for b in batches]).astype(np.int32) if batches
                    else np.zeros((0, lengths[name]), np.int32))
    untruncated[name] = (np.concatenate([b[f'{name}_num_tokens'] for b in batches]) if batches
                         else np.zeros((0,), np.int32))
  return tokens, untruncated


def materialize(task: str | seqio.Task, split: str,
                feature_lengths: Mapping[str, int]) -> dict[str, np.ndarray]:
  """All examples of (task, split) in source order as '<feature>_ids': int32 [N, L], pad 0.

  E.g. a pairs task gives prompt_ids [N, Lp], chosen_ids [N, Lr], rejected_ids [N, Lr]; every
  response row ends in eos (1) before its padding.
  """
  tokens, _ = _token_batches(task, split, feature_lengths)
  return {f'{name}_ids': array for name, array in tokens.items()}


def count_truncated(task: str | seqio.Task, split: str,
                    feature_lengths: Mapping[str, int]) -> dict[str, int]:
  """How many examples of (task, split) lose tokens to each feature's length."""
  _, untruncated = _token_batches(task, split, feature_lengths)
  return {name: int(np.sum(n > feature_lengths[name])) for name, n in untruncated.items()}
