"""Which parts of the gold utility a world reward model gets wrong.

On the embedded world the gold h*(x, y) and s*(x, y) are sums of named terms
(world_gold.HELPFULNESS_TERMS / HARMLESSNESS_TERMS: content, off-topic words, repeats, list
formatting, ...). For each validation pair this module takes the difference of every term between
the chosen and the rejected response, and compares the reward model's margin r(x, y+) − r(x, y−)
with them:

  * accuracy against the drawn labels, the gold-label Bayes accuracy, and agreement with the sign
    of the gold difference, overall and by quartile of |Δgold|;
  * per term: on how many pairs it differs, and the model's disagreement with the gold sign on
    those pairs against the others;
  * credited weight per term: the least-squares fit margin ≈ Σ_k c_k Δterm_k, divided by the fit
    margin ≈ c Δgold. A reward model proportional to the gold scores 1 on every term; a weight
    below 0 means the model rewards what the gold penalises (or the reverse) — a term it misreads.

`lsc-align rm-diagnose --run_dir RUN` runs it on a finished `train-rm` run and prints JSON (and
writes `rm_diagnostics.json` into the run). Diagnostics only: nothing here trains or tunes.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Any, Sequence

import numpy as np

from lsc_align import io_utils
from lsc_align.world import dataset as world
from lsc_align.world import gold as world_gold
from lsc_align.world import stats as world_stats
from lsc_align.world import supervision

OUTPUT_FILE = 'rm_diagnostics.json'
# A term that differs on fewer pairs than this share has too little support for a weight.
MIN_TERM_SUPPORT = 0.02


def term_differences(data_dir: str | os.PathLike[str], property_name: str, split: str
                     ) -> tuple[tuple[str, ...], np.ndarray]:
  """(term names, [pairs, terms] chosen-minus-rejected gold terms) of a world split, file order.

  Raises:
    ValueError: not a world directory, an unknown property, or the recomputed gold does not
      match gold.jsonl.gz (the data and its gold file disagree).
  """
  data_dir = os.fspath(data_dir)
  if property_name not in world.PROPERTIES:
    raise ValueError(f'property {property_name!r} must be one of {world.PROPERTIES}')
  gold_path = os.path.join(data_dir, 'gold.jsonl.gz')
  gold = world.read_gold_rows(data_dir, property_name, split)
  if gold is None:
    raise ValueError(f'{data_dir}: no gold.jsonl.gz; term diagnostics need an embedded world')
  config = world.load_config(data_dir)
  lexicon = world_gold.build_lexicon(config)
  helpful = property_name == 'helpful'
  names = world_gold.HELPFULNESS_TERMS if helpful else world_gold.HARMLESSNESS_TERMS
  terms_fn = world_gold.helpfulness_terms if helpful else world_gold.harmlessness_terms
  rows = world_stats.read_pairs(data_dir, property_name, split)
  if len(gold) != len(rows):
    raise ValueError(f'{gold_path}: {len(gold)} gold rows for {property_name}/{split} but '
                     f'{len(rows)} pairs')
  expected = world.gold_differences(gold, property_name)
  diffs = np.zeros((len(rows), len(names)))
  for i, row in enumerate(rows):
    props = world_gold.prompt_properties(lexicon, row['prompt'])
    sides = [terms_fn(config, props, world_gold.response_features(lexicon, props, row[side]))
             for side in ('chosen', 'rejected')]
    diffs[i] = [sides[0][n] - sides[1][n] for n in names]
    if not np.isclose(diffs[i].sum(), expected[i], atol=1e-6):
      raise ValueError(f'{gold_path}: pair {i} of {property_name}/{split} has gold difference '
                       f'{expected[i]:.6f} but its words give {diffs[i].sum():.6f}')
  return names, diffs


def _share(mask: np.ndarray) -> float | None:
  return float(mask.mean()) if mask.size else None  # None, not NaN: the output is JSON


def _complement(share: float | None) -> float | None:
  return None if share is None else 1.0 - share


def diagnose(margins: np.ndarray, term_diffs: np.ndarray, names: Sequence[str]
             ) -> dict[str, Any]:
  """Compares reward margins [N] with gold term differences [N, K] (see the module docstring).

  Args:
    margins: r(x, y+) − r(x, y−) per pair, y+ the chosen (labelled) response.
    term_diffs: chosen-minus-rejected gold terms; their row sums are the gold differences.
    names: the K term names.

  Returns:
    A JSON-ready dict: accuracy (ties 1/2), gold_label_agreement (the Bayes accuracy: the share
    of labels the gold sign agrees with, ties 1/2), model_gold_agreement,
    agreement_by_gold_quartile, terms (per-term support, disagreement and credited weight),
    misread_terms, term_fit_r2.
  """
  margins = np.asarray(margins, np.float64)
  term_diffs = np.asarray(term_diffs, np.float64)
  if margins.ndim != 1 or term_diffs.shape != (len(margins), len(names)):
    raise ValueError(f'margins {margins.shape} and term differences {term_diffs.shape} do not '
                     f'match {len(names)} terms')
  if not np.all(np.isfinite(margins)):
    raise ValueError(f'{int((~np.isfinite(margins)).sum())} reward margins are not finite')
  gold = term_diffs.sum(axis=1)
  tie = np.isclose(gold, 0.0)
  correct = np.where(margins > 0, 1.0, np.where(margins == 0, 0.5, 0.0))
  disagrees = (np.sign(margins) != np.sign(gold)) & ~tie
  out: dict[str, Any] = {'pairs': int(len(margins)), 'accuracy': float(correct.mean()),
                         **supervision.gold_agreement(margins, gold)}
  edges = np.quantile(np.abs(gold[~tie]), [0.25, 0.5, 0.75]) if (~tie).any() else np.zeros(3)
  bins = np.digitize(np.abs(gold), edges)
  out['gold_quartile_edges'] = [float(e) for e in edges]
  out['agreement_by_gold_quartile'] = [_complement(_share(disagrees[(bins == b) & ~tie]))
                                       for b in range(4)]
  # Credited weights: fit the margin on the terms, in units of the fit on the gold itself.
  scale = float(margins @ gold / max(gold @ gold, 1e-12))
  coef, *_ = np.linalg.lstsq(term_diffs, margins, rcond=None)
  residual = margins - term_diffs @ coef
  out['term_fit_r2'] = float(1.0 - residual.var() / max(margins.var(), 1e-12))
  out['gold_fit_scale'] = scale
  terms = {}
  for k, name in enumerate(names):
    differs = ~np.isclose(term_diffs[:, k], 0.0)
    support = _share(differs)
    terms[name] = {
        'differs_share': support,
        'disagreement_where_differs': _share(disagrees[differs & ~tie]),
        'disagreement_elsewhere': _share(disagrees[~differs & ~tie]),
        'credited_weight': (float(coef[k] / scale)
                            if support is not None and support >= MIN_TERM_SUPPORT
                            and scale != 0 else None),
    }
  out['terms'] = terms
  out['misread_terms'] = sorted(n for n, t in terms.items()
                                if t['credited_weight'] is not None and t['credited_weight'] < 0)
  return out


def reward_margins(run_dir: str, data_dir: str, split: str) -> np.ndarray:
  """r(x, y+) − r(x, y−) of a finished train-rm run on a split of an HH-layout directory."""
  import jax  # pylint: disable=g-import-not-at-top
  from lsc_align import partitioning  # pylint: disable=g-import-not-at-top
  from lsc_align.models import reward_model  # pylint: disable=g-import-not-at-top
  from lsc_align.data import arrays as data_arrays  # pylint: disable=g-import-not-at-top
  from lsc_align.train import reward_model_trainer as trainer  # pylint: disable=g-import-not-at-top
  from lsc_align.train import trainer_utils  # pylint: disable=g-import-not-at-top
  info = trainer.reward_model_info(run_dir)
  config, params = trainer.load_reward_model(run_dir)
  raw = data_arrays.pair_arrays(data_dir, info['vocabulary'], info['property'], split,
                                cache_dir=os.path.join(run_dir, 'arrays'),
                                prompt_length=info['prompt_length'],
                                response_length=info['response_length'])
  pairs = trainer.pack_pairs(raw, info['max_length'], info['response_length'])
  mesh = partitioning.create_mesh((1, 1), devices=jax.devices()[:1])
  reward_fn = jax.jit(trainer.make_pair_reward_fn(reward_model.RewardModel(config)))
  rewards = trainer_utils.batched_apply(lambda batch: reward_fn(params, batch), pairs, 256, mesh)
  return rewards['chosen'].astype(np.float64) - rewards['rejected'].astype(np.float64)


def diagnose_run(run_dir: str | os.PathLike[str], data_dir: str | None = None,
                 split: str = 'test') -> dict[str, Any]:
  """Diagnostics of a world reward model run on `split`; writes run_dir/rm_diagnostics.json."""
  from lsc_align.train import reward_model_trainer as trainer  # pylint: disable=g-import-not-at-top
  run_dir = io_utils.abspath(run_dir)
  info = trainer.reward_model_info(run_dir)
  data_dir = io_utils.abspath(data_dir or info['data_dir'])
  names, diffs = term_differences(data_dir, info['property'], split)
  margins = reward_margins(run_dir, data_dir, split)
  if len(margins) != len(diffs):
    raise ValueError(f'{run_dir}: {len(margins)} scored pairs but {len(diffs)} in {data_dir}')
  result = {'run_dir': run_dir, 'data_dir': data_dir, 'property': info['property'],
            'split': split, **diagnose(margins, diffs, names)}
  io_utils.atomic_write_json(os.path.join(run_dir, OUTPUT_FILE), result)
  return result


def main(args: argparse.Namespace) -> int:
  """`lsc-align rm-diagnose --run_dir RUN [--data DIR] [--split test]`."""
  result = diagnose_run(args.run_dir, getattr(args, 'data', None),
                        getattr(args, 'split', 'test'))
  print(json.dumps(result, indent=1))
  return 0
