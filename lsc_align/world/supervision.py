"""What trainers and diagnostics ask of the world's gold, in one place.

Every function takes a data directory and answers for the embedded world; on any other data
(HH text, which has no gold) it returns None or raises a ValueError that says so, so no trainer
needs to know which kind of data it reads:

* `gold_pair_differences`: gold u(y+) − u(y−) per pair of a split (validation agreement);
* `gold_label_targets`: noise-free or expected labels (`train_reward_model.world_labels`);
* `gold_agreement`: the Bayes accuracy of the labels and the model's agreement with the gold;
* `collection_policy_comparison`: the data-collection policy's entropy against π0's NLL on it.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Mapping

import numpy as np

from lsc_align import io_utils
from lsc_align import stats

# Training labels on the embedded world: the drawn labels (what a real data set gives), or
# diagnostics that separate label noise from what a model cannot learn.
WORLD_LABELS = ('drawn', 'gold_probability', 'gold_sign')


def is_world(data_dir: str | os.PathLike[str]) -> bool:
  """Whether the directory holds the embedded world (it has world.json)."""
  return io_utils.exists(os.path.join(os.fspath(data_dir), 'world.json'))


def gold_pair_differences(data_dir: str, property_name: str, split: str,
                          num_pairs: int) -> np.ndarray | None:
  """Gold u(y+) − u(y−) of each pair of a world split (file order), or None if not a world."""
  from lsc_align.world import dataset  # pylint: disable=g-import-not-at-top
  rows = dataset.read_gold_rows(data_dir, property_name, split)
  if rows is None:
    return None
  if len(rows) != num_pairs:
    logging.warning('%s/gold.jsonl.gz: %d gold rows for %s/%s but %d pairs; no gold comparison',
                    data_dir, len(rows), property_name, split, num_pairs)
    return None
  return dataset.gold_differences(rows, property_name)


def gold_label_targets(data_dir: str, property_name: str, split: str, num_pairs: int,
                       world_labels: str) -> np.ndarray:
  """p(y+ > y−) per training pair for `world_labels` 'gold_probability' or 'gold_sign'.

  'gold_probability' is the labelling model's own BT probability (the expectation of the drawn
  label); 'gold_sign' is 1 / 0 / ½ by the sign of the gold difference (noise-free labels).

  Raises:
    ValueError: an unknown mode, or data_dir is not a world with gold for every pair.
  """
  if world_labels not in WORLD_LABELS[1:]:
    raise ValueError(f'train_reward_model.world_labels {world_labels!r} must be one of '
                     f'{WORLD_LABELS}')
  from lsc_align.world import dataset  # pylint: disable=g-import-not-at-top
  rows = dataset.read_gold_rows(data_dir, property_name, split)
  if rows is None or len(rows) != num_pairs:
    raise ValueError(f'train_reward_model.world_labels = {world_labels!r} needs an embedded world '
                     f'with gold for each of the {num_pairs} {split} pairs; {data_dir} has '
                     f'{"no gold.jsonl.gz" if rows is None else f"{len(rows)} gold rows"}')
  if world_labels == 'gold_probability':
    return np.array([r['p_chosen'] for r in rows], np.float32)
  diff = dataset.gold_differences(rows, property_name)
  return np.where(np.isclose(diff, 0.0), 0.5, (diff > 0).astype(np.float64)).astype(np.float32)


def gold_agreement(margins: np.ndarray, gold_diff: np.ndarray) -> dict[str, Any]:
  """How the labels and the model's margins r+ − r− compare with the gold preference.

  `gold_label_agreement` (ties 1/2) is the Bayes accuracy: no reward model can expect to beat
  it on these labels. `model_gold_agreement` is over pairs with a gold difference (None if
  there are none).
  """
  gold_diff = np.asarray(gold_diff, np.float64)
  tie = np.isclose(gold_diff, 0.0)
  label_agreement = np.where(tie, 0.5, (gold_diff > 0).astype(float))
  low, high = stats.wilson_interval(float(label_agreement.sum()), len(label_agreement))
  agrees = np.sign(np.asarray(margins)[~tie]) == np.sign(gold_diff[~tie])
  return {'gold_label_agreement': float(label_agreement.mean()),
          'gold_label_agreement_ci95': [low, high], 'gold_tie_share': float(tie.mean()),
          'model_gold_agreement': float(agrees.mean()) if agrees.size else None}


def collection_policy_comparison(
    data_dir: str, vocabulary: str, split: str,
    score: Callable[[Mapping[str, np.ndarray]], Mapping[str, float]], *, prompt_length: int,
    response_length: int, samples_per_prompt: int, seed: int) -> dict[str, Any] | None:
  """For a world: the collection policy's entropy per token and π0's NLL on its samples.

  Args:
    data_dir, vocabulary, split: the world and its validation split.
    score: {'prompt_ids', 'response_ids'} rows -> {'nll_per_token', 'nll_per_response'} of π0.
    prompt_length, response_length: π0's token budgets (a prompt keeps its end).
    samples_per_prompt, seed: fresh collection-policy samples per validation prompt.

  Returns:
    None when data_dir is not a world.
  """
  if not is_world(data_dir):
    return None
  from lsc_align.world import policy_entropy  # pylint: disable=g-import-not-at-top
  from lsc_align.world import vocabulary as word_vocab  # pylint: disable=g-import-not-at-top
  estimate = policy_entropy.estimate_from_data(
      data_dir, split, samples_per_prompt=samples_per_prompt, seed=seed)
  words = word_vocab.WordVocabulary.load(vocabulary)
  prompts = np.zeros((len(estimate.samples), prompt_length), np.int32)
  responses = np.zeros((len(estimate.samples), response_length), np.int32)
  for i, (prompt, response) in enumerate(estimate.samples):
    p_ids = words.encode_words(prompt)[-prompt_length:]  # keep the end, as the seqio task
    r_ids = (words.encode_words(response) + [word_vocab.EOS_ID])[:response_length]
    prompts[i, :len(p_ids)] = p_ids
    responses[i, :len(r_ids)] = r_ids
  on_samples = score({'prompt_ids': prompts, 'response_ids': responses})
  return {'collection_policy': estimate.summary(),
          'sft_nll_per_token_on_policy_samples': on_samples['nll_per_token'],
          'sft_nll_per_response_on_policy_samples': on_samples['nll_per_response']}


def refusal_phrases(data_dir: str) -> tuple[str, ...] | None:
  """The world's own canned refusals (its words), or None for other data."""
  if not is_world(data_dir):
    return None
  from lsc_align.world import dataset  # pylint: disable=g-import-not-at-top
  return tuple(dataset.load_config(data_dir).refusal_phrases)
