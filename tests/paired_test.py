"""Tests for lsc_align.eval.paired: per-seed comparisons of two objectives at matched KL."""
import numpy as np
import pytest

from lsc_align.eval import paired
from lsc_align.eval.results import RunResult


def _run(objective, seed, kl, and_rate, transform='lsc', seconds=10.0):
  return RunResult(run=f'{objective}_{seed}_{kl}', method='ppo', objective=objective,
                   transform=transform, seed=seed, kl=kl, win_rate={'helpful': 0.5},
                   gamma=1.0 / kl, and_win_rate=and_rate, extra={'train_seconds': seconds})


def _frontiers(offsets, shift=0.0):
  """Per seed a line AND = 0.1·KL + offset (the baseline) and the same + shift + noise."""
  out = []
  for seed, (offset, noise) in enumerate(offsets):
    for kl in (1.0, 5.0):
      out.append(_run('combined_lsc_sum', seed, kl, 0.1 * kl + offset, seconds=20.0))
      out.append(_run('combined_lsc_sum_gaussian', seed, kl + 0.5, 0.1 * (kl + 0.5) + offset
                      + shift + noise, seconds=40.0))
  return out


def test_difference_is_paired_by_seed_and_interpolated():
  # Large seed-to-seed offsets cancel in the paired difference.
  results = _frontiers([(0.0, 0.01), (0.3, -0.01), (-0.2, 0.0)], shift=0.05)
  rows = paired.paired_comparisons(results)
  assert [(r.objective, r.baseline) for r in rows] == [('combined_lsc_sum_gaussian',
                                                          'combined_lsc_sum')] * 2
  assert [r.kl for r in rows] == [pytest.approx(3.25), pytest.approx(5.0)]  # middle, top
  for row in rows:
    assert row.metric == 'and_win_rate' and row.seeds == (0, 1, 2)
    assert row.difference == pytest.approx(0.05)
    low, high = row.interval
    assert low < 0.05 < high and high - low < 0.1
    assert row.seconds == (40.0, 20.0)
  assert 'combined_lsc_sum_gaussian' in paired.table(rows)[2]


def test_other_transforms_and_disjoint_kl_ranges_are_not_compared():
  results = [_run('combined_raw_sum', s, kl, 0.3, transform='raw')
             for s in (0, 1) for kl in (1.0, 2.0)]
  results += [_run('combined_lsc_sum', s, kl, 0.3) for s in (0, 1) for kl in (1.0, 2.0)]
  results += [_run('combined_lsc_sum_canned', s, kl, 0.3) for s in (0, 1) for kl in (3.0, 4.0)]
  assert paired.paired_comparisons(results) == []


def test_one_seed_has_no_interval():
  rows = paired.paired_comparisons(_frontiers([(0.0, 0.0)], shift=-0.02), kls=[2.0, 9.0])
  assert len(rows) == 1 and rows[0].interval is None
  assert rows[0].difference == pytest.approx(-0.02) and np.isfinite(rows[0].values[0])


def test_against_raw_pairs_each_transform_with_the_raw_objective_of_its_property():
  results = [_run(o, 0, 1.0, 0.3, transform=t) for o, t in [
      ('helpful_raw', 'raw'), ('helpful_lsc', 'lsc'), ('helpful_centered', 'centered'),
      ('harmless_raw', 'raw'), ('harmless_lsc', 'lsc'), ('combined_lsc_sum', 'lsc'),
      ('combined_raw_sum', 'raw')]]
  assert paired.against_raw_pairs(results) == [
      ('combined_lsc_sum', 'combined_raw_sum'), ('harmless_lsc', 'harmless_raw'),
      ('helpful_centered', 'helpful_raw'), ('helpful_lsc', 'helpful_raw')]
  assert paired.against_raw_pairs(results, 'rloo') == []  # no RLOO runs


def test_learners_are_compared_separately():
  """RLOO runs of the same objectives do not enter the PPO comparison, and vice versa."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  ppo_runs = _frontiers([(0.0, 0.0), (0.1, 0.0)], shift=0.05)
  rloo_runs = [dataclasses.replace(r, method='rloo', and_win_rate=r.and_win_rate - 0.2)
               for r in _frontiers([(0.0, 0.0), (0.1, 0.0)], shift=-0.03)]
  both = ppo_runs + rloo_runs
  assert [r.difference for r in paired.paired_comparisons(both)] == [pytest.approx(0.05)] * 2
  rows = paired.paired_comparisons(both, 'rloo')
  assert [r.difference for r in rows] == [pytest.approx(-0.03)] * 2
  assert {r.method for r in rows} == {'rloo'}
