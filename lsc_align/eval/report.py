"""The sweep report: report.md with PNG figures, from per-run eval results (`RunResult`).

`write_report(source, out_dir)` reads eval results (a sweep directory, searched up to 3 levels
down for eval_results.json / eval_results.jsonl; one result file; or a list of RunResults / dicts),
averages seeds that share (method, objective, transform, γ, k), draws the figures of
`lsc_align.eval.plots` and writes report.md: a table of all runs, a seed-aggregated table,
headline comparisons at matched KL (each transform against the raw reward of the same property,
by linear interpolation along each frontier), the gap of PPO to the closed-form optimum, and the
figures. A figure whose data is missing is replaced by a line saying why.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from lsc_align import io_utils
from lsc_align.eval import win_rates as eval_metrics
from lsc_align.eval import paired
from lsc_align.eval import plots
from lsc_align.eval import results as eval_results
from lsc_align.eval.results import FrontierPoint, RunResult  # pylint: disable=unused-import

# (file name, title, plot function, whether it takes the matched KL)
FIGURES = (
    ('win_rate_vs_kl.png', 'Win rate against KL', plots.plot_win_rate_vs_kl, False),
    ('pairwise_win_rate_vs_kl.png', 'Pairwise judge win rate against KL',
     plots.plot_pairwise_win_rate_vs_kl, False),
    ('shortcut_rate_vs_kl.png', 'Shortcut rate against KL', plots.plot_shortcut_rate_vs_kl, False),
    ('reward_vs_kl.png', 'Gold and proxy reward against KL', plots.plot_reward_vs_kl, False),
    ('ablation.png', 'Ablation: centering only, log-sigmoid only, LSC, raw', plots.plot_ablation,
     False),
    ('optimum_frontier.png', 'PPO against the closed-form optimum', plots.plot_optimum_frontier,
     False),
    ('reward_histograms.png', 'Reward distributions at matched KL', plots.plot_reward_histograms,
     True),
    ('joint_density.png', 'Joint helpful / harmless density (combined objectives)',
     plots.plot_joint_density, True),
)


@dataclasses.dataclass(frozen=True)
class Comparison:
  """metric of `objective` and of `baseline` at the same KL, interpolated along each frontier."""
  method: str
  kl: float
  metric: str
  objective: str
  baseline: str
  value: float
  baseline_value: float

  @property
  def difference(self) -> float:
    return self.value - self.baseline_value


def _frontiers(points: Sequence[FrontierPoint], method: str) -> dict[str, list[FrontierPoint]]:
  grouped: dict[str, list[FrontierPoint]] = {}
  for point in points:
    if point.method == method:
      grouped.setdefault(point.objective, []).append(point)
  return grouped


def _compared_metrics(prop: str, a: Sequence[FrontierPoint], b: Sequence[FrontierPoint]):
  """Metrics that judge an objective of this property, present on both frontiers."""
  names = {n for p in a for n in p.values} & {n for p in b for n in p.values}
  if prop == 'combined':
    wanted = ['and_win_rate'] + sorted(n for n in names if n.startswith('win_rate/'))
  else:
    wanted = [f'win_rate/{prop}', f'pairwise_win_rate/{prop}']
  return [n for n in wanted if n in names]


def _interpolate(frontier: Sequence[FrontierPoint], metric: str, kl: float) -> float:
  with_metric = [p for p in frontier if metric in p.values]
  if not with_metric:
    return float('nan')
  return eval_metrics.interpolate_at_kl([p.kl for p in with_metric],
                                        [p.values[metric] for p in with_metric], kl)


def matched_kl_comparisons(points: Sequence[FrontierPoint],
                           kls: Sequence[float] | None = None) -> list[Comparison]:
  """Each non-raw objective against each raw objective of the same property, at matched KL.

  Compared at `kls` that lie inside both frontiers' KL ranges, or by default at the middle and
  the top of the overlap of the two ranges. Pairs whose KL ranges do not overlap are left out.
  """
  comparisons = []
  for method in eval_results.METHODS:
    frontiers = _frontiers(points, method)
    for name, frontier in sorted(frontiers.items()):
      if frontier[0].transform == 'raw':
        continue
      prop = eval_results.objective_property(name)
      for base_name, base in sorted(frontiers.items()):
        if base[0].transform != 'raw' or eval_results.objective_property(base_name) != prop:
          continue
        low = max(min(p.kl for p in frontier), min(p.kl for p in base))
        high = min(max(p.kl for p in frontier), max(p.kl for p in base))
        if low > high:
          continue
        targets = ([kl for kl in kls if low <= kl <= high] if kls is not None else
                   sorted({0.5 * (low + high), high}))
        for kl in targets:
          for metric in _compared_metrics(prop, frontier, base):
            value, base_value = _interpolate(frontier, metric, kl), _interpolate(base, metric, kl)
            if np.isfinite(value) and np.isfinite(base_value):
              comparisons.append(Comparison(method, float(kl), metric, name, base_name,
                                            float(value), float(base_value)))
  return comparisons


def optimum_gaps(points: Sequence[FrontierPoint]) -> list[dict[str, Any]]:
  """For each PPO or RLOO point, its win rates and the closed-form optimum's at the same KL."""
  optimum = _frontiers(points, 'optimum')
  rows = []
  for point in points:
    if point.method not in eval_results.LEARNER_METHODS or point.objective not in optimum:
      continue
    for metric in sorted(n for n in point.values if 'win_rate' in n):
      best = _interpolate(optimum[point.objective], metric, point.kl)
      if np.isfinite(best):
        rows.append(dict(objective=point.objective, label=point.label, kl=point.kl,
                         metric=metric, ppo=point.values[metric], optimum=float(best),
                         method=point.method))
  return rows


# ---------------------------------------------------------------- markdown


def _fmt(value: float | None, ci: tuple[float, float] | None = None) -> str:
  if value is None:
    return '–'
  return f'{value:.3f}' if ci is None else f'{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]'


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  return (['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)] +
          ['| ' + ' | '.join(row) + ' |' for row in rows])


def _metric_columns(points: Sequence[FrontierPoint]) -> list[str]:
  return sorted({n for p in points for n in p.values if n != 'kl'}, key=plots.metric_order)


def _runs_table(results: Sequence[RunResult], columns: Sequence[str]) -> list[str]:
  rows = []
  for r in sorted(results, key=lambda r: (r.method, r.objective, r.gamma or 0, r.k or 0, r.seed)):
    flat = r.metrics()
    rows.append([r.run, r.method, r.objective, r.transform, _fmt(r.gamma) if r.gamma is not None
                 else '–', str(r.k) if r.k is not None else '–', str(r.seed),
                 _fmt(r.kl, r.kl_ci)] + [_fmt(flat.get(c), r.metric_ci(c)) for c in columns])
  return _table(['run', 'method', 'objective', 'transform', 'γ', 'k', 'seed', 'KL', *columns],
                rows)


def _aggregate_table(points: Sequence[FrontierPoint], columns: Sequence[str]) -> list[str]:
  rows = [[p.method, p.objective, p.label, ', '.join(map(str, p.seeds)),
           _fmt(p.kl, p.cis.get('kl'))] + [_fmt(p.values.get(c), p.cis.get(c)) for c in columns]
          for p in points]
  return _table(['method', 'objective', 'point', 'seeds', 'KL', *columns], rows)


def _comparison_table(comparisons: Sequence[Comparison]) -> list[str]:
  """One row per (method, KL, objective, baseline), one column per metric."""
  metrics = sorted({c.metric for c in comparisons}, key=plots.metric_order)
  rows: dict[tuple[str, float, str, str], dict[str, Comparison]] = {}
  for c in comparisons:
    rows.setdefault((c.method, c.kl, c.objective, c.baseline), {})[c.metric] = c
  body = [[method, f'{kl:.3f}', objective, baseline] +
          [f'{cells[m].value:.3f} vs {cells[m].baseline_value:.3f} ({cells[m].difference:+.3f})'
           if m in cells else '–' for m in metrics]
          for (method, kl, objective, baseline), cells in rows.items()]
  return _table(['method', 'KL', 'objective', 'baseline', *metrics], body)


def calibration_table(calibrations: Sequence[Mapping[str, Any]]) -> list[str]:
  """Markdown lines: reference-predictor calibration per property on unseen prompts.

  Each calibration is a reference predictor's calibration.json (lsc_align.pipeline.
  reference_stage.calibrate): the Gaussian predictor, the empirical quantile of the prompt's
  SFT samples and a constant predictor, each against fresh π0 samples.
  """
  rows = []
  for c in calibrations:
    sources = [('gaussian', 'Gaussian predictor'),
               ('empirical', f'empirical, {c["empirical"]["samples_per_prompt"]} SFT samples'),
               ('constant', 'constant')]
    for key, label in sources:
      for row in c[key]['quantiles']:
        rows.append([c['property'], label, f'{row["q"]:g}',
                     f'{row["coverage"]:.3f} ± {1.96 * row["coverage_se"]:.3f}',
                     f'{row["quantile_error_mean"]:+.3f}', f'{row["quantile_error_mae"]:.3f}',
                     f'{row["quantile_error_mae_in_std"]:.2f}',
                     f'{row["empirical_quantile_se"]:.3f}' if 'empirical_quantile_se' in row
                     else ''])
  n = calibrations[0]['gaussian']['prompts'] if calibrations else 0
  m = calibrations[0]['fresh_samples_per_prompt'] if calibrations else 0
  return ([f'Evaluation prompts the predictor never saw ({n}), {m} fresh π0 samples each. '
           'Coverage: share of the samples below the reference (ideal: q; ± 95% over prompts). '
           'Error: reference − empirical q-quantile of the fresh samples (mean, mean absolute, '
           'and mean absolute in units of the prompt\'s sample std); the empirical quantile\'s '
           'own standard error is the noise floor of that error.', '']
          + _table(['property', 'reference', 'q', 'coverage', 'error (mean)', 'error (MAE)',
                    'MAE / std', 'empirical quantile s.e.'], rows))


def render_markdown(results: Sequence[RunResult], points: Sequence[FrontierPoint],
                    comparisons: Sequence[Comparison], gaps: Sequence[Mapping[str, Any]],
                    figures: Sequence[tuple[str, str, str | None]],
                    calibrations: Sequence[Mapping[str, Any]] = ()) -> str:
  """report.md text; figures are (file name, title, skip reason or None if drawn)."""
  columns = _metric_columns(points)
  lines = ['# Evaluation report', '',
           f'{len(results)} runs, {len(points)} points after averaging seeds that share '
           '(method, objective, transform, γ, k). Intervals: 95% bootstrap over prompts for a '
           'single seed, t-interval across seeds otherwise. Win rate: judge reward above the '
           'per-prompt SFT quantile; AND: both properties above the SFT median.', '']
  lines += ['## Headline: comparisons at matched KL', '']
  if comparisons:
    lines += ['Each objective against the raw-reward objective of the same property, with both '
              'frontiers linearly interpolated to the same KL. Cells: objective vs baseline '
              '(difference).', '']
    lines += _comparison_table(comparisons)
  else:
    lines.append('No comparison: no pair of a raw objective and another transform of the same '
                 'property with overlapping KL ranges.')
  against_raw = [row for method in eval_results.LEARNER_METHODS
                 for row in paired.paired_comparisons(
                     results, method, pairs=paired.against_raw_pairs(results, method))]
  if against_raw:
    lines += ['', '## Against raw rewards, seed by seed at matched KL', '',
              'Each transformed objective against each raw objective of the same property, per '
              'learner: each seed\'s frontier (one run per γ) interpolated to the same KL, '
              'difference = objective − baseline averaged over seeds, with a 95% t-interval '
              'across seeds (the seed\'s own variation paired out).', '']
    lines += paired.table(against_raw)
  lines += ['', '## Learners against the closed-form optimum', '']
  if gaps:
    lines += _table(['learner', 'objective', 'point', 'KL', 'metric', 'learner\'s value',
                     'optimum at same KL', 'gap'],
                    [[g['method'], g['objective'], g['label'], f'{g["kl"]:.3f}', g['metric'],
                      _fmt(g['ppo']), _fmt(g['optimum']), f'{g["ppo"] - g["optimum"]:+.3f}']
                     for g in gaps])
  else:
    lines.append('No gap computed: no PPO or RLOO point lies inside the KL range of an '
                 '"optimum" frontier of the same objective.')
  paired_rows = [row for method in eval_results.LEARNER_METHODS
                 for row in paired.paired_comparisons(results, method)]
  if paired_rows:
    lines += ['', '## Variants of one utility, seed by seed at matched KL', '',
              'Objectives of the same transform and property (e.g. other reference rewards), '
              'each seed\'s frontier interpolated to the same KL; difference = objective − '
              'baseline, averaged over seeds, with a 95% t-interval across seeds.', '']
    lines += paired.table(paired_rows)
  if calibrations:
    lines += ['', '## Reference predictors: calibration', ''] + calibration_table(calibrations)
  lines += ['', '## Figures', '']
  for file_name, title, reason in figures:
    lines.append(f'### {title}')
    lines.append('')
    lines.append(f'![{title}]({file_name})' if reason is None else
                 f'Figure `{file_name}` skipped: {reason}.')
    lines.append('')
  lines += ['## Seed-aggregated points', ''] + _aggregate_table(points, columns)
  lines += ['', '## All runs', ''] + _runs_table(results, columns) + ['']
  return '\n'.join(lines)


def _check_kls(matched_kl: float | None, comparison_kls: Sequence[float] | None) -> None:
  """A KL is a finite number >= 0 (KL(π‖π0) cannot be negative): refused before anything is read."""
  given = [('--matched_kl', matched_kl)] if matched_kl is not None else []
  given += [('comparison_kls', kl) for kl in (comparison_kls or ())]
  for name, kl in given:
    if isinstance(kl, bool) or not isinstance(kl, (int, float)) or not math.isfinite(kl) or kl < 0:
      raise ValueError(f'report {name} must be a finite KL >= 0, got {kl!r}')


def write_report(source: str | os.PathLike[str] | Sequence[RunResult | Mapping[str, Any]],
                 out_dir: str | os.PathLike[str], matched_kl: float | None = None,
                 comparison_kls: Sequence[float] | None = None,
                 calibrations: Sequence[Mapping[str, Any]] = ()) -> str:
  """Writes out_dir/report.md and its PNG figures; returns the path of report.md.

  Args:
    source: a sweep directory (searched 3 levels down for eval_results.json / .jsonl), one result
      file, or a list of RunResults or their JSON dicts.
    out_dir: where report.md and the figures go (created if needed; gs:// works).
    matched_kl: KL at which reward histograms / joint densities pick runs (nearest run per
      objective); default: per method, the largest KL every objective reaches.
    comparison_kls: KLs for the headline comparisons; default: middle and top of each pair's
      common KL range.
    calibrations: reference predictors' calibration.json contents, tabulated when given.

  Raises:
    ValueError: no results, or an eval result fails validation (naming its file and field).
  """
  _check_kls(matched_kl, comparison_kls)
  results = eval_results.load_run_results(source)
  if not results:
    raise ValueError(f'no eval results found in {source!r}')
  points = eval_results.aggregate_seeds(results)
  out_dir = os.fspath(out_dir)
  figures = []
  for file_name, title, plot_fn, takes_kl in FIGURES:
    path = f'{out_dir.rstrip("/")}/{file_name}'
    try:
      plot_fn(points, path, matched_kl) if takes_kl else plot_fn(points, path)
      figures.append((file_name, title, None))
    except plots.MissingData as e:
      figures.append((file_name, title, str(e)))
  text = render_markdown(results, points, matched_kl_comparisons(points, comparison_kls),
                         optimum_gaps(points), figures, calibrations)
  report_path = f'{out_dir.rstrip("/")}/report.md'
  io_utils.atomic_write_text(report_path, text)
  return report_path


def main(args: argparse.Namespace) -> int:
  """`lsc-align report --sweep_dir DIR [--out_dir DIR] [--matched_kl X]`."""
  out_dir = getattr(args, 'out_dir', None) or os.path.join(os.fspath(args.sweep_dir), 'report')
  path = write_report(args.sweep_dir, out_dir, matched_kl=getattr(args, 'matched_kl', None),
                      comparison_kls=getattr(args, 'comparison_kls', None))
  print(path)
  return 0
