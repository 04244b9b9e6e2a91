"""Report figures (PNG) from seed-aggregated frontier points.

Every function takes `results.FrontierPoint`s (means across seeds, with intervals), writes one
PNG atomically and returns its path, or raises `MissingData(reason)` when the points lack what
the figure needs; the report then prints the reason instead of the figure. Matplotlib is
imported inside the functions (Agg canvas, no pyplot state), so importing this module is cheap.
"""
from __future__ import annotations

import io
from typing import Any, Callable, Sequence

import numpy as np

from lsc_align import io_utils
from lsc_align.eval import win_rates as eval_metrics
from lsc_align.eval import results as eval_results

FrontierPoint = eval_results.FrontierPoint
ABLATION_TRANSFORMS = ('raw', 'centered', 'log_sigmoid', 'lsc')
_DPI = 80
_LEGEND_WIDTH = 2.2  # inches


class MissingData(Exception):
  """The data a figure needs is absent; str(error) says what is missing."""


# ---------------------------------------------------------------- plumbing


def _new_figure(rows: int, cols: int, panel_size: tuple[float, float] = (4.2, 3.2),
                legend_width: float = 0.0):
  """rows x cols panels with fixed margins (a layout engine costs seconds per figure here),
  and legend_width inches on the right for a figure legend."""
  from matplotlib import figure  # pylint: disable=g-import-not-at-top
  width, height = panel_size[0] * cols + legend_width, panel_size[1] * rows + 0.4
  fig = figure.Figure(figsize=(width, height), dpi=_DPI)
  axes = np.asarray(fig.subplots(rows, cols, squeeze=False))
  fig.subplots_adjust(left=0.75 / width, right=1 - (0.2 + legend_width) / width,
                      bottom=0.55 / height, top=1 - 0.75 / height, wspace=0.3,
                      hspace=0.45)
  return fig, axes


def _figure_legend(fig: Any, axes: np.ndarray) -> None:
  """One legend for the figure (labels deduplicated across panels), right of the panels."""
  entries = {}
  for ax in axes.ravel():
    for handle, label in zip(*ax.get_legend_handles_labels()):
      entries.setdefault(label, handle)
  if entries:
    fig.legend(list(entries.values()), list(entries), loc='center left', fontsize=7,
               frameon=False, bbox_to_anchor=(fig.subplotpars.right + 0.01, 0.5))


def _save(fig: Any, path: str) -> str:
  """PNG bytes written atomically (local) or with etils.epath (gs://)."""
  from matplotlib.backends import backend_agg  # pylint: disable=g-import-not-at-top
  backend_agg.FigureCanvasAgg(fig)
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png')
  io_utils.atomic_write_bytes(path, buffer.getvalue())
  return path


def objective_colors(points: Sequence[FrontierPoint]) -> dict[str, Any]:
  """A fixed colour per objective (sorted names), shared by all figures."""
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
  objectives = sorted({p.objective for p in points})
  cmap = colormaps['tab10' if len(objectives) <= 10 else 'tab20']
  return {name: cmap(i % cmap.N) for i, name in enumerate(objectives)}


def _errors(points: Sequence[FrontierPoint], name: str) -> np.ndarray | None:
  """[2, N] distances from each value to its interval's ends (0 where there is no interval)."""
  errors = np.zeros((2, len(points)))
  for i, point in enumerate(points):
    ci = point.cis.get(name)
    if ci is not None:
      value = point.values[name]
      errors[:, i] = max(value - ci[0], 0.0), max(ci[1] - value, 0.0)
  return errors if errors.any() else None


def _draw_frontier(ax: Any, points: Sequence[FrontierPoint], metric: str, color: Any, label: str,
                   style: str = 'o-', error_bars: bool = True) -> bool:
  """One objective's points sorted by KL, with x/y error bars from the intervals."""
  points = sorted((p for p in points if metric in p.values), key=lambda p: p.kl)
  if not points:
    return False
  kl = np.array([p.kl for p in points])
  values = np.array([p.values[metric] for p in points])
  ax.errorbar(kl, values, xerr=_errors(points, 'kl') if error_bars else None,
              yerr=_errors(points, metric) if error_bars else None, fmt=style, color=color,
              label=label, markersize=4, linewidth=1.2, elinewidth=0.7, capsize=2)
  return True


_PREFIX_ORDER = ('kl', 'win_rate', 'and_win_rate', 'pairwise_win_rate', 'shortcut_rate',
                 'gold_reward', 'proxy_reward')


def metric_order(name: str) -> tuple[int, int, str]:
  """Sort key: win rates, AND, pairwise, shortcuts, rewards; helpful before harmless."""
  prefix, _, key = name.partition('/')
  rank = _PREFIX_ORDER.index(prefix) if prefix in _PREFIX_ORDER else len(_PREFIX_ORDER)
  return rank, {'helpful': 0, 'harmless': 1}.get(key, 2), name


def _metric_names(points: Sequence[FrontierPoint], prefix: str) -> list[str]:
  return sorted({name for p in points for name in p.values if name.startswith(prefix)},
                key=metric_order)


def _methods(points: Sequence[FrontierPoint]) -> list[str]:
  return [m for m in eval_results.METHODS if any(p.method == m for p in points)]


def _by_objective(points: Sequence[FrontierPoint]) -> dict[str, list[FrontierPoint]]:
  grouped: dict[str, list[FrontierPoint]] = {}
  for point in points:
    grouped.setdefault(point.objective, []).append(point)
  return grouped


def metric_vs_kl_grid(points: Sequence[FrontierPoint], metric_names: Sequence[str], path: str,
                      title: str,
                      group: Callable[[FrontierPoint], str] = lambda p: p.objective) -> str:
  """Panels: rows = methods, columns = metrics; one line per group (objective), x = KL."""
  if not metric_names:
    raise MissingData(f'no metric for "{title}" in any run')
  methods = _methods(points)
  colors = objective_colors(points)
  fig, axes = _new_figure(len(methods), len(metric_names), legend_width=_LEGEND_WIDTH)
  for row, method in enumerate(methods):
    method_points = [p for p in points if p.method == method]
    for col, metric in enumerate(metric_names):
      ax = axes[row, col]
      drawn = False
      for name, group_points in sorted(_by_objective(method_points).items()):
        drawn |= _draw_frontier(ax, group_points, metric, colors[name], group(group_points[0]))
      ax.set_title(f'{method}: {metric}', fontsize=9)
      ax.set_xlabel('KL(π ‖ π0)', fontsize=8)
      ax.grid(alpha=0.3)
      if not drawn:
        ax.text(0.5, 0.5, 'no data', ha='center', va='center', transform=ax.transAxes)
  _figure_legend(fig, axes)
  fig.suptitle(title, fontsize=10)
  return _save(fig, path)


# ---------------------------------------------------------------- the figures


def plot_win_rate_vs_kl(points: Sequence[FrontierPoint], path: str) -> str:
  """Win rate (vs SFT quantile, and AND win rate) against KL, per method and property."""
  names = _metric_names(points, 'win_rate/') + _metric_names(points, 'and_win_rate')
  return metric_vs_kl_grid(points, names, path, 'Win rate against KL (one point per γ or k)')


def plot_pairwise_win_rate_vs_kl(points: Sequence[FrontierPoint], path: str) -> str:
  names = _metric_names(points, 'pairwise_win_rate/')
  return metric_vs_kl_grid(points, names, path, 'Pairwise judge win rate against KL')


def plot_shortcut_rate_vs_kl(points: Sequence[FrontierPoint], path: str) -> str:
  names = _metric_names(points, 'shortcut_rate/')
  return metric_vs_kl_grid(points, names, path, 'Shortcut rate against KL')


def plot_reward_vs_kl(points: Sequence[FrontierPoint], path: str) -> str:
  """Gold (judge) and proxy reward against KL: over-optimisation shows as diverging curves."""
  names = _metric_names(points, 'gold_reward/') + _metric_names(points, 'proxy_reward/')
  if not _metric_names(points, 'gold_reward/'):
    raise MissingData('no run has gold_reward')
  return metric_vs_kl_grid(points, names, path, 'Gold and proxy reward against KL')


def plot_ablation(points: Sequence[FrontierPoint], path: str) -> str:
  """Centering only, log-sigmoid only, LSC and raw: win rate against KL (single properties)."""
  ablation = [p for p in points if p.transform in ABLATION_TRANSFORMS
              and eval_results.objective_property(p.objective) != 'combined']
  present = {p.transform for p in ablation}
  if not present & {'centered', 'log_sigmoid'}:
    raise MissingData('no run with transform "centered" or "log_sigmoid" (the ablations)')
  properties = sorted({eval_results.objective_property(p.objective) for p in ablation})
  names = [f'win_rate/{prop}' for prop in properties
           if any(f'win_rate/{prop}' in p.values for p in ablation)]
  return metric_vs_kl_grid(ablation, names, path,
                           f'Ablation: transforms {sorted(present)}, win rate against KL',
                           group=lambda p: f'{p.objective} ({p.transform})')


def plot_optimum_frontier(points: Sequence[FrontierPoint], path: str) -> str:
  """Closed-form optimum as a line, PPO and RLOO as points with error bars, per win-rate
  metric."""
  learned = {p.objective for p in points if p.method in eval_results.LEARNER_METHODS}
  both = sorted(learned & {p.objective for p in points if p.method == 'optimum'})
  if not both:
    raise MissingData('no objective has both PPO (or RLOO) runs and closed-form optimum '
                      '("optimum") runs')
  selected = [p for p in points if p.objective in both
              and (p.method in eval_results.LEARNER_METHODS or p.method == 'optimum')]
  names = _metric_names(selected, 'win_rate/') + _metric_names(selected, 'and_win_rate')
  colors = objective_colors(points)
  fig, axes = _new_figure(1, len(names), legend_width=_LEGEND_WIDTH)
  for col, metric in enumerate(names):
    ax = axes[0, col]
    for objective in both:
      optimum = [p for p in selected if p.objective == objective and p.method == 'optimum']
      _draw_frontier(ax, optimum, metric, colors[objective], f'{objective} optimum', style='-',
                     error_bars=False)
      for method, style in zip(eval_results.LEARNER_METHODS, ('o', 's')):
        learned_points = [p for p in selected if p.objective == objective and p.method == method]
        if learned_points:
          _draw_frontier(ax, learned_points, metric, colors[objective],
                         f'{objective} {method.upper()}', style=style)
    ax.set_title(metric, fontsize=9)
    ax.set_xlabel('KL(π ‖ π0)', fontsize=8)
    ax.grid(alpha=0.3)
  _figure_legend(fig, axes)
  fig.suptitle('Learners against the closed-form optimum', fontsize=10)
  return _save(fig, path)


def _runs_with_samples(points: Sequence[FrontierPoint], keys: Sequence[str]):
  return [run for p in points for run in p.runs
          if all(len(run.reward_samples.get(key, [])) > 0 for key in keys)]


def default_matched_kl(kls_per_objective: Sequence[Sequence[float]]) -> float:
  """The largest KL every objective reaches: min over objectives of their max KL."""
  return float(min(max(kls) for kls in kls_per_objective))


def matched_runs(points: Sequence[FrontierPoint], keys: Sequence[str], method: str,
                 target_kl: float | None):
  """Per objective, the run (with reward samples for keys) nearest target_kl; and the target."""
  runs = [r for r in _runs_with_samples(points, keys) if r.method == method]
  by_objective: dict[str, list[Any]] = {}
  for run in runs:
    by_objective.setdefault(run.objective, []).append(run)
  if not by_objective:
    return {}, None
  if target_kl is None:
    target_kl = default_matched_kl([[r.kl for r in rs] for rs in by_objective.values()])
  chosen = {name: rs[eval_metrics.nearest_kl_index([r.kl for r in rs], target_kl)]
            for name, rs in sorted(by_objective.items())}
  return chosen, target_kl


def plot_reward_histograms(points: Sequence[FrontierPoint], path: str,
                           target_kl: float | None = None) -> str:
  """Judge reward histograms at matched KL: per method and property, one curve per objective."""
  properties = sorted({key for p in points for run in p.runs for key, v in
                       run.reward_samples.items() if len(v)}, key=metric_order)
  if not properties:
    raise MissingData('no run has reward_samples')
  methods = [m for m in _methods(points) if any(
      _runs_with_samples([p for p in points if p.method == m], [prop]) for prop in properties)]
  colors = objective_colors(points)
  fig, axes = _new_figure(len(methods), len(properties))
  for row, method in enumerate(methods):
    for col, prop in enumerate(properties):
      ax = axes[row, col]
      chosen, kl = matched_runs(points, [prop], method, target_kl)
      if not chosen:
        ax.text(0.5, 0.5, 'no data', ha='center', va='center', transform=ax.transAxes)
        continue
      value_range = eval_metrics.shared_range(*[r.reward_samples[prop] for r in chosen.values()])
      for objective, run in chosen.items():
        hist = eval_metrics.reward_histogram(run.reward_samples[prop], bins=30,
                                             value_range=value_range)
        ax.stairs(hist.values, hist.edges, color=colors[objective],
                  label=f'{objective} ({run.label}, KL {run.kl:.2f})')
      ax.set_title(f'{method}: judge {prop} reward at KL ≈ {kl:.2f}', fontsize=9)
      ax.set_ylabel('density', fontsize=8)
      ax.legend(fontsize=6, loc='upper left')
  fig.suptitle('Reward distributions at matched KL', fontsize=10)
  return _save(fig, path)


def plot_joint_density(points: Sequence[FrontierPoint], path: str,
                       target_kl: float | None = None, keys: tuple[str, str] = (
                           'helpful', 'harmless')) -> str:
  """Joint (helpful, harmless) judge reward density for combined objectives, at matched KL."""
  combined = [p for p in points if eval_results.objective_property(p.objective) == 'combined']
  panels = []
  for method in _methods(combined):
    chosen, kl = matched_runs(combined, keys, method, target_kl)
    panels += [(method, objective, run, kl) for objective, run in chosen.items()
               if len(run.reward_samples[keys[0]]) == len(run.reward_samples[keys[1]])]
  if not panels:
    raise MissingData(f'no combined-objective run has paired reward_samples {list(keys)}')
  x_range = eval_metrics.shared_range(*[run.reward_samples[keys[0]] for _, _, run, _ in panels])
  y_range = eval_metrics.shared_range(*[run.reward_samples[keys[1]] for _, _, run, _ in panels])
  cols = min(len(panels), 3)
  fig, axes = _new_figure((len(panels) + cols - 1) // cols, cols, panel_size=(3.6, 3.4))
  for ax in axes.ravel()[len(panels):]:
    ax.set_axis_off()
  for ax, (method, objective, run, kl) in zip(axes.ravel(), panels):
    density, x_edges, y_edges = eval_metrics.joint_histogram(
        run.reward_samples[keys[0]], run.reward_samples[keys[1]], bins=25,
        ranges=(x_range, y_range))
    ax.pcolormesh(x_edges, y_edges, density.T, cmap='viridis')
    ax.set_title(f'{method}: {objective}\n{run.label}, KL {run.kl:.2f} (target {kl:.2f})',
                 fontsize=8)
    ax.set_xlabel(f'judge {keys[0]}', fontsize=8)
    ax.set_ylabel(f'judge {keys[1]}', fontsize=8)
  fig.suptitle('Joint judge reward density, combined objectives', fontsize=10)
  return _save(fig, path)
