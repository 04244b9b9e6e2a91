"""Read-only loaders for the notebooks: a run directory or a sweep as plain Python / numpy.

A run directory (lsc_align.pipeline.runs) may hold metrics.jsonl (PPO iterations), samples.jsonl
(rows {step, prompt, response}), run.json (the run's settings), config.gin and eval results
(eval_results.json for PPO, eval_results.jsonl with one result per k or γ for best-of-k and the
closed-form optimum). Every loader returns an empty value when its file is absent, so one
notebook inspects PPO, best-of-k and optimum runs alike. Paths may be local or gs://.
Nothing here trains, writes or imports TensorFlow.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from typing import Any, Mapping, Sequence

from etils import epath
import numpy as np

from lsc_align import training_log as metrics_lib
from lsc_align.eval import plots
from lsc_align.eval import results as results_lib
from lsc_align.eval.results import FrontierPoint, RunResult

METRICS_FILE = 'metrics.jsonl'
SAMPLES_FILE = 'samples.jsonl'
RUN_INFO_FILE = 'run.json'
CONFIG_FILE = 'config.gin'

# Training-curve panels: (title, metric names or prefixes ending in '*'), in display order.
CURVE_PANELS = (
    ('KL(π ‖ π0) per sequence', ('kl',)),
    ('utility and objective', ('utility', 'objective')),
    ('proxy reward per property', ('reward_*',)),
    ('entropy', ('entropy',)),
    ('clip fraction', ('clip_fraction', 'value_clip_fraction')),
    ('value loss', ('value_loss',)),
    ('approx. KL (old → new policy)', ('approx_kl',)),
    ('response length', ('response_length',)),
    ('seconds per iteration', ('time/*',)),
)


def sort_properties(names: Sequence[str]) -> list[str]:
  """Helpful before harmless, then the rest alphabetically (also for 'reward_<property>')."""
  rank = {'helpful': 0, 'harmless': 1}
  return sorted(names, key=lambda n: (rank.get(n.rsplit('_', 1)[-1], 2), n))


def _path(run_dir: str | os.PathLike[str], name: str) -> epath.Path:
  return epath.Path(run_dir) / name


# ---------------------------------------------------------------- one run


def training_curves(run_dir: str | os.PathLike[str]) -> dict[str, np.ndarray]:
  """Curves from run_dir/metrics.jsonl: {'step': [T], 'wall_time': [T], name: [T]}; {} if absent.

  Every array has one entry per logged step (sorted by step); a metric missing at a step is
  NaN there. Non-numeric values are left out.
  """
  path = _path(run_dir, METRICS_FILE)
  if not path.exists():
    return {}
  records = sorted(metrics_lib.read_metrics(path), key=lambda r: r.step)
  names = sorted({key for r in records for key, value in r.scalars.items()
                  if isinstance(value, (int, float)) and not isinstance(value, bool)})
  curves = {'step': np.array([r.step for r in records], np.int64),
            'wall_time': np.array([r.wall_time for r in records], np.float64)}
  for name in names:
    curves[name] = np.array([float(r.scalars[name]) if isinstance(r.scalars.get(name), (int, float))
                             else math.nan for r in records], np.float64)
  return curves


def curve_panels(curves: Mapping[str, np.ndarray],
                 panels: Sequence[tuple[str, Sequence[str]]] = CURVE_PANELS
                 ) -> list[tuple[str, list[str]]]:
  """The panels whose metrics the curves have: (title, [metric names]); empty panels dropped.

  A pattern ending in '*' matches every metric with that prefix.
  """
  out = []
  for title, patterns in panels:
    names = []
    for pattern in patterns:
      if pattern.endswith('*'):
        names += sort_properties([n for n in curves if n.startswith(pattern[:-1])])
      elif pattern in curves:
        names.append(pattern)
    names = [n for n in dict.fromkeys(names) if not np.all(np.isnan(curves[n]))]
    if names:
      out.append((title, names))
  return out


def read_samples(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
  """Rows {step, prompt, response} of run_dir/samples.jsonl, in file order; [] when absent.

  Raises:
    ValueError: a line is not a JSON object (the error names the file and line).
  """
  path = _path(run_dir, SAMPLES_FILE)
  if not path.exists():
    return []
  rows = []
  for number, line in enumerate(path.read_text().splitlines(), 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f'{path}:{number}: not valid JSON ({e})') from e
    if not isinstance(row, dict):
      raise ValueError(f'{path}:{number}: a sample row must be a JSON object')
    rows.append(row)
  return rows


def latest_samples(rows: Sequence[Mapping[str, Any]],
                   limit: int | None = None) -> list[dict[str, Any]]:
  """The rows of the highest step (at most `limit` of them); [] for no rows."""
  steps = [int(r['step']) for r in rows if 'step' in r]
  if not steps:
    return [dict(r) for r in rows[:limit]]
  last = max(steps)
  chosen = [dict(r) for r in rows if r.get('step') == last]
  return chosen if limit is None else chosen[:limit]


def read_run_info(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
  """run_dir/run.json (a PPO run's objective, γ, α, seed, steps, hyper-parameters); {} if absent."""
  path = _path(run_dir, RUN_INFO_FILE)
  return json.loads(path.read_text()) if path.exists() else {}


def read_config(run_dir: str | os.PathLike[str]) -> str:
  """The operative gin config the run wrote (run_dir/config.gin); '' when absent."""
  path = _path(run_dir, CONFIG_FILE)
  return path.read_text() if path.exists() else ''


def read_run_results(run_dir: str | os.PathLike[str]) -> list[RunResult]:
  """The eval results stored directly in run_dir (eval_results.json and/or .jsonl); [] if none."""
  out = []
  for name in results_lib.RESULT_FILENAMES:
    path = _path(run_dir, name)
    if path.exists():
      out += results_lib.read_result_file(os.fspath(path))
  return out


@dataclasses.dataclass(frozen=True)
class RunContents:
  """Everything a run directory holds that a notebook shows (empty where a file is absent)."""
  run_dir: str
  curves: dict[str, np.ndarray]
  samples: list[dict[str, Any]]
  info: dict[str, Any]
  config: str
  results: list[RunResult]

  @property
  def name(self) -> str:
    return os.path.basename(self.run_dir.rstrip('/'))


def load_run(run_dir: str | os.PathLike[str]) -> RunContents:
  """Curves, samples, run.json, config.gin and eval results of one run directory.

  Raises:
    FileNotFoundError: run_dir is not a directory.
  """
  if not epath.Path(run_dir).is_dir():
    raise FileNotFoundError(f'run directory {os.fspath(run_dir)!r} does not exist')
  return RunContents(run_dir=os.fspath(run_dir), curves=training_curves(run_dir),
                     samples=read_samples(run_dir), info=read_run_info(run_dir),
                     config=read_config(run_dir), results=read_run_results(run_dir))


_HEADLINE_EXTRA = ('utility', 'objective_value', 'objective_fraction_of_optimum', 'alpha',
                   'train_seconds')


def headline_row(result: RunResult) -> dict[str, Any]:
  """One result's headline numbers: identity, KL, win rates, AND, shortcuts, rewards, extras."""
  row: dict[str, Any] = {'run': result.run, 'method': result.method,
                         'objective': result.objective, 'transform': result.transform,
                         'point': result.label, 'seed': result.seed}
  metrics = result.metrics()
  for name in sorted(metrics, key=plots.metric_order):
    row[name] = metrics[name]
  for name in _HEADLINE_EXTRA:
    value = result.extra.get(name)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      row[name] = float(value)
  return row


def reward_sample_arrays(result: RunResult) -> dict[str, np.ndarray]:
  """Judge scores of the result's samples per property (for histograms); empty lists dropped."""
  return {key: np.asarray(values, np.float64) for key, values in result.reward_samples.items()
          if len(values)}


# ---------------------------------------------------------------- a sweep


def load_sweep(exp_dir: str | os.PathLike[str]) -> list[RunResult]:
  """Every eval result of an experiment (EXP/runs when it exists, else the directory itself).

  Raises:
    ValueError: the directory does not exist, a result fails validation, or two results share
      a run name.
  """
  runs = epath.Path(exp_dir) / 'runs'
  return results_lib.load_run_results(os.fspath(runs) if runs.is_dir() else os.fspath(exp_dir))


def point_row(point: FrontierPoint) -> dict[str, Any]:
  """One seed-aggregated point: method, objective, γ / k, seeds, KL and every metric's mean."""
  row: dict[str, Any] = {'method': point.method, 'objective': point.objective,
                         'transform': point.transform, 'point': point.label,
                         'seeds': ','.join(map(str, point.seeds))}
  for name in sorted(point.values, key=plots.metric_order):
    row[name] = point.values[name]
  return row


def points_by_method_objective(points: Sequence[FrontierPoint]
                               ) -> dict[tuple[str, str], list[FrontierPoint]]:
  """Points grouped by (method, objective), methods in METHODS order, each group sorted by KL."""
  groups: dict[tuple[str, str], list[FrontierPoint]] = {}
  order = {m: i for i, m in enumerate(results_lib.METHODS)}
  for point in sorted(points, key=lambda p: (order.get(p.method, len(order)), p.objective)):
    groups.setdefault((point.method, point.objective), []).append(point)
  return {key: sorted(group, key=lambda p: p.kl) for key, group in groups.items()}


def combined_points(points: Sequence[FrontierPoint]) -> list[FrontierPoint]:
  """The points of combined (helpful + harmless) objectives that have an AND win rate."""
  return [p for p in points if results_lib.objective_property(p.objective) == 'combined'
          and 'and_win_rate' in p.values]


def objectives_with_ppo_and_optimum(points: Sequence[FrontierPoint]) -> list[str]:
  """Objectives that have both PPO points and closed-form optimum points, sorted."""
  ppo = {p.objective for p in points if p.method in results_lib.LEARNER_METHODS}
  return sorted(ppo & {p.objective for p in points if p.method == 'optimum'})


# ---------------------------------------------------------------- display


_NEWLINES = re.compile(r'\s*\n\s*')


def _cell(value: Any, float_format: str) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return '–'
  if isinstance(value, float):
    return format(value, float_format)
  # One line per row: a prompt's newlines show as ⏎ (leading and trailing ones dropped).
  return _NEWLINES.sub(' ⏎ ', str(value).strip()).replace('|', '\\|')


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None,
                   float_format: str = '.3f') -> str:
  """A Markdown table of dict rows; columns default to every key in first-seen order.

  Examples:
    >>> print(markdown_table([{'a': 1, 'b': 0.5}]))
    | a | b |
    |---|---|
    | 1 | 0.500 |
  """
  if columns is None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
  lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
  lines += ['| ' + ' | '.join(_cell(row.get(c), float_format) for c in columns) + ' |'
            for row in rows]
  return '\n'.join(lines)
