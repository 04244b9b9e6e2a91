"""Two objectives compared seed by seed at the same KL (e.g. two kinds of reference reward).

For each seed both objectives have a frontier of runs (one per γ). Each frontier is linearly
interpolated to the same KL (never extrapolated), the difference is taken per seed, and the
mean difference gets a t-interval across seeds: the seed's own variation (its π0 samples, its
PPO randomness) is paired out. KLs compared: inside every seed's frontiers of both objectives,
by default the middle and the top of that common range.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Sequence

import numpy as np

from lsc_align.eval import results as eval_results
from lsc_align.eval import win_rates


@dataclasses.dataclass(frozen=True)
class PairedComparison:
  """metric(objective) − metric(baseline) at one KL, per seed, with its mean and t-interval."""
  method: str
  metric: str
  objective: str
  baseline: str
  kl: float
  seeds: tuple[int, ...]
  values: tuple[float, ...]           # the objective's metric per seed
  baseline_values: tuple[float, ...]  # the baseline's
  interval: tuple[float, float] | None  # 95% t-interval of the mean difference (≥ 2 seeds)
  seconds: tuple[float | None, float | None]  # mean training seconds per run, when recorded

  @property
  def difference(self) -> float:
    return float(np.mean(np.subtract(self.values, self.baseline_values)))


def _seconds(results: Sequence[eval_results.RunResult]) -> float | None:
  values = [r.extra['train_seconds'] for r in results
            if isinstance(r.extra.get('train_seconds'), (int, float))]
  return float(np.mean(values)) if values else None


def paired_comparisons(results: Sequence[eval_results.RunResult], method: str = 'ppo',
                       metric: str | None = None,
                       pairs: Sequence[tuple[str, str]] | None = None,
                       kls: Sequence[float] | None = None,
                       level: float = 0.95) -> list[PairedComparison]:
  """Per-seed paired comparisons at matched KL (module docstring).

  Args:
    results: evaluated runs (several γ per objective and seed).
    method: which runs ('ppo' or 'rloo').
    metric: 'and_win_rate' or a metrics() name; default: AND for combined objectives, else
      win_rate/<property>.
    pairs: (objective, baseline) names; default every pair of objectives of the same transform
      and property (reference variants of one utility).
    kls: KLs to compare at (kept when inside the common range).
    level: of the t-interval.
  """
  groups: dict[tuple[str, int], list[eval_results.RunResult]] = {}
  transform: dict[str, str] = {}
  for r in results:
    if r.method == method:
      groups.setdefault((r.objective, r.seed), []).append(r)
      transform[r.objective] = r.transform
  names = sorted(transform)
  if pairs is None:
    pairs = [(b, a) for a, b in itertools.combinations(names, 2)
             if transform[a] == transform[b] and eval_results.objective_property(a) ==
             eval_results.objective_property(b)]
  out = []
  for name, base in pairs:
    prop = eval_results.objective_property(name)
    wanted = metric or ('and_win_rate' if prop == 'combined' else f'win_rate/{prop}')
    seeds = sorted({s for (o, s) in groups if o == name} & {s for (o, s) in groups if o == base})
    frontiers = {}
    for seed in seeds:
      for objective in (name, base):
        points = [(r.kl, r.metrics().get(wanted)) for r in groups[(objective, seed)]]
        points = [(k, v) for k, v in points if v is not None]
        if len(points) < 2:
          break
        frontiers[(objective, seed)] = points
    seeds = [s for s in seeds if (name, s) in frontiers and (base, s) in frontiers]
    if not seeds:
      continue
    low = max(min(k for k, _ in f) for f in frontiers.values())
    high = min(max(k for k, _ in f) for f in frontiers.values())
    if low > high:
      continue
    targets = ([k for k in kls if low <= k <= high] if kls is not None
               else sorted({0.5 * (low + high), high}))
    for kl in targets:
      def at(objective: str, seed: int) -> float:
        f = frontiers[(objective, seed)]
        return float(win_rates.interpolate_at_kl([k for k, _ in f], [v for _, v in f], kl))
      values = tuple(at(name, s) for s in seeds)
      base_values = tuple(at(base, s) for s in seeds)
      diffs = np.subtract(values, base_values)
      interval = None
      if len(seeds) >= 2:
        half = (eval_results.t_quantile(level, len(seeds) - 1) * diffs.std(ddof=1)
                / math.sqrt(len(seeds)))
        interval = (float(diffs.mean() - half), float(diffs.mean() + half))
      seconds = (_seconds([r for s in seeds for r in groups[(name, s)]]),
                 _seconds([r for s in seeds for r in groups[(base, s)]]))
      out.append(PairedComparison(method, wanted, name, base, float(kl), tuple(seeds), values,
                                  base_values, interval, seconds))
  return out


def against_raw_pairs(results: Sequence[eval_results.RunResult],
                      method: str = 'ppo') -> list[tuple[str, str]]:
  """(objective, baseline) for each non-raw objective of `method`'s runs and each raw objective
  of the same property (e.g. ('helpful_lsc', 'helpful_raw'))."""
  transform = {r.objective: r.transform for r in results if r.method == method}
  return [(name, base) for name in sorted(transform) for base in sorted(transform)
          if transform[name] != 'raw' and transform[base] == 'raw'
          and eval_results.objective_property(name) == eval_results.objective_property(base)]


def table(comparisons: Sequence[PairedComparison]) -> list[str]:
  """Markdown rows (with header) of paired comparisons."""
  lines = ['| method | metric | KL | objective | baseline | seeds | objective mean | '
           'baseline mean | difference [95% CI] | train s/run (objective, baseline) |',
           '|---|---|---|---|---|---|---|---|---|---|']
  for c in comparisons:
    ci = '' if c.interval is None else f' [{c.interval[0]:+.3f}, {c.interval[1]:+.3f}]'
    secs = ', '.join('–' if s is None else f'{s:.0f}' for s in c.seconds)
    lines.append(f'| {c.method} | {c.metric} | {c.kl:.2f} | {c.objective} | {c.baseline} | '
                 f'{len(c.seeds)} | {np.mean(c.values):.3f} | {np.mean(c.baseline_values):.3f} | '
                 f'{c.difference:+.3f}{ci} | {secs} |')
  return lines
