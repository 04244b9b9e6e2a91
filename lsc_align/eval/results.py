"""Per-run evaluation results (`RunResult`), loading them from a sweep, and seed aggregation.

One run's eval result is a JSON object (file `eval_results.json` in the run directory, or one
line of an `eval_results.jsonl`); the schema is `RunResult`'s fields. Required keys: run, method,
objective, transform, seed, kl, win_rate; gamma is required (non-null) for the policy learners
("ppo", "rloo") and "optimum", k for "bok". Every other key may be missing or null, and the
report then skips what needs it. Unknown keys are kept in `extra` and written back by `to_json`.

Flat metric names used by the report and plots: 'kl', 'win_rate/<property>', 'and_win_rate',
'pairwise_win_rate/<property>', 'shortcut_rate/<kind>', 'proxy_reward/<property>',
'gold_reward/<property>'.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from lsc_align import io_utils
from lsc_align.conventions import LEARNERS

LEARNER_METHODS = LEARNERS  # trained policies (one run per γ and seed)
METHODS = (*LEARNER_METHODS, 'bok', 'optimum')
RESULT_FILENAMES = ('eval_results.json', 'eval_results.jsonl')
REQUIRED_FIELDS = ('run', 'method', 'objective', 'transform', 'seed', 'kl', 'win_rate')
# Flat metric name prefix -> the RunResult field holding its confidence intervals.
_CI_FIELDS = {'kl': 'kl_ci', 'win_rate': 'win_rate_ci', 'and_win_rate': 'and_win_rate_ci',
              'pairwise_win_rate': 'pairwise_win_rate_ci'}

Interval = tuple[float, float]


@dataclasses.dataclass(frozen=True)
class RunResult:
  """One evaluated policy (a PPO run at one γ, best-of-k at one k, or the closed-form optimum)."""
  run: str
  method: str                      # 'ppo' | 'rloo' | 'bok' | 'optimum'
  objective: str                   # e.g. 'helpful_raw', 'helpful_lsc', 'combined_lsc_sum'
  transform: str                   # 'raw' | 'centered' | 'log_sigmoid' | 'lsc' | ...
  seed: int
  kl: float                        # KL(π ‖ π0) estimate
  win_rate: dict[str, float]       # per property, against the SFT quantile
  gamma: float | None = None
  k: int | None = None
  kl_ci: Interval | None = None
  win_rate_ci: dict[str, Interval] = dataclasses.field(default_factory=dict)
  and_win_rate: float | None = None
  and_win_rate_ci: Interval | None = None
  pairwise_win_rate: dict[str, float] | None = None
  pairwise_win_rate_ci: dict[str, Interval] | None = None
  shortcut_rate: dict[str, float] = dataclasses.field(default_factory=dict)
  proxy_reward: dict[str, float] = dataclasses.field(default_factory=dict)
  gold_reward: dict[str, float] = dataclasses.field(default_factory=dict)
  reward_samples: dict[str, list[float]] = dataclasses.field(default_factory=dict)
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)

  @classmethod
  def from_json(cls, obj: Mapping[str, Any], source: str = '<dict>') -> RunResult:
    """Validates and converts one JSON object; errors name the field and `source` (the file)."""
    if not isinstance(obj, Mapping):
      raise ValueError(f'{source}: an eval result must be a JSON object, got {type(obj).__name__}')
    for name in REQUIRED_FIELDS:
      if name not in obj or obj[name] is None:
        raise ValueError(f'{source}: eval result is missing required field {name!r}')
    known = {f.name for f in dataclasses.fields(cls)} - {'extra'}
    where = f'{source} (run {obj["run"]!r})'
    method = str(obj['method'])
    if method not in METHODS:
      raise ValueError(f'{where}: field "method" must be one of {METHODS}, got {method!r}')
    gamma = _optional_number(obj.get('gamma'), 'gamma', where)
    k = obj.get('k')
    if (method in LEARNER_METHODS or method == 'optimum') and gamma is None:
      raise ValueError(f'{where}: method {method!r} needs field "gamma" (the KL coefficient)')
    if method == 'bok' and k is None:
      raise ValueError(f'{where}: method "bok" needs field "k"')
    if k is not None and (not isinstance(k, (int, float)) or k != int(k) or k < 1):
      raise ValueError(f'{where}: field "k" must be an integer >= 1, got {k!r}')
    pairwise = obj.get('pairwise_win_rate')
    pairwise_ci = obj.get('pairwise_win_rate_ci')
    return cls(
        run=str(obj['run']), method=method, objective=str(obj['objective']),
        transform=str(obj['transform']), seed=int(obj['seed']),
        kl=_number(obj['kl'], 'kl', where),
        win_rate=_number_dict(obj['win_rate'], 'win_rate', where, rate=True),
        gamma=gamma, k=None if k is None else int(k),
        kl_ci=_interval(obj.get('kl_ci'), 'kl_ci', where),
        win_rate_ci=_interval_dict(obj.get('win_rate_ci'), 'win_rate_ci', where),
        and_win_rate=_optional_number(obj.get('and_win_rate'), 'and_win_rate', where, rate=True),
        and_win_rate_ci=_interval(obj.get('and_win_rate_ci'), 'and_win_rate_ci', where),
        pairwise_win_rate=(None if pairwise is None else
                           _number_dict(pairwise, 'pairwise_win_rate', where, rate=True)),
        pairwise_win_rate_ci=(None if pairwise_ci is None else
                              _interval_dict(pairwise_ci, 'pairwise_win_rate_ci', where)),
        shortcut_rate=_number_dict(obj.get('shortcut_rate'), 'shortcut_rate', where, rate=True),
        proxy_reward=_number_dict(obj.get('proxy_reward'), 'proxy_reward', where),
        gold_reward=_number_dict(obj.get('gold_reward'), 'gold_reward', where),
        reward_samples=_samples_dict(obj.get('reward_samples'), where),
        extra={key: value for key, value in obj.items() if key not in known})

  def to_json(self) -> dict[str, Any]:
    """A JSON-serialisable dict that from_json reads back to an equal RunResult."""
    row = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != 'extra'}
    for name in ('kl_ci', 'and_win_rate_ci'):
      row[name] = None if row[name] is None else list(row[name])
    for name in ('win_rate_ci', 'pairwise_win_rate_ci'):
      row[name] = None if row[name] is None else {key: list(v) for key, v in row[name].items()}
    return {**self.extra, **row}

  @property
  def label(self) -> str:
    """'γ=0.05' or 'k=16': the point's position on its frontier."""
    return f'k={self.k}' if self.method == 'bok' else f'γ={self.gamma:g}'

  def metrics(self) -> dict[str, float]:
    """Flat metric name -> value, for every metric this run has."""
    flat = {'kl': self.kl}
    flat.update({f'win_rate/{key}': v for key, v in self.win_rate.items()})
    if self.and_win_rate is not None:
      flat['and_win_rate'] = self.and_win_rate
    for prefix in ('pairwise_win_rate', 'shortcut_rate', 'proxy_reward', 'gold_reward'):
      flat.update({f'{prefix}/{key}': v for key, v in (getattr(self, prefix) or {}).items()})
    return flat

  def metric_ci(self, name: str) -> Interval | None:
    """The confidence interval stored for a flat metric name, if any."""
    prefix, _, key = name.partition('/')
    field = _CI_FIELDS.get(prefix)
    value = getattr(self, field) if field else None
    if isinstance(value, dict):
      return value.get(key)
    return value


# ---------------------------------------------------------------- field validation


def _number(value: Any, name: str, where: str, rate: bool = False) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    raise ValueError(f'{where}: field {name!r} must be a finite number, got {value!r}')
  if rate and not 0.0 <= value <= 1.0:
    raise ValueError(f'{where}: field {name!r} is a rate and must lie in [0, 1], got {value!r}')
  return float(value)


def _optional_number(value: Any, name: str, where: str, rate: bool = False) -> float | None:
  return None if value is None else _number(value, name, where, rate)


def _number_dict(value: Any, name: str, where: str, rate: bool = False) -> dict[str, float]:
  if value is None:
    return {}
  if not isinstance(value, Mapping):
    raise ValueError(f'{where}: field {name!r} must be an object of numbers, got {value!r}')
  return {str(key): _number(v, f'{name}.{key}', where, rate) for key, v in value.items()}


def _interval(value: Any, name: str, where: str) -> Interval | None:
  if value is None:
    return None
  if not isinstance(value, (list, tuple)) or len(value) != 2:
    raise ValueError(f'{where}: field {name!r} must be [low, high], got {value!r}')
  low, high = (_number(v, name, where) for v in value)
  if low > high:
    raise ValueError(f'{where}: field {name!r} has low > high: {value!r}')
  return (low, high)


def _interval_dict(value: Any, name: str, where: str) -> dict[str, Interval]:
  if value is None:
    return {}
  if not isinstance(value, Mapping):
    raise ValueError(f'{where}: field {name!r} must be an object of [low, high], got {value!r}')
  return {str(key): _interval(v, f'{name}.{key}', where) for key, v in value.items()
          if v is not None}


def _samples_dict(value: Any, where: str) -> dict[str, list[float]]:
  if value is None:
    return {}
  if not isinstance(value, Mapping):
    raise ValueError(f'{where}: field "reward_samples" must be an object of lists, got '
                     f'{type(value).__name__}')
  samples = {}
  for key, values in value.items():
    array = np.asarray(values if values is not None else [], np.float64)
    if array.ndim != 1 or not np.all(np.isfinite(array)):
      raise ValueError(f'{where}: field "reward_samples.{key}" must be a flat list of finite '
                       f'numbers')
    samples[str(key)] = array.tolist()
  return samples


# ---------------------------------------------------------------- loading


def _read_text(path: str) -> str:
  from etils import epath  # pylint: disable=g-import-not-at-top
  return epath.Path(path).read_text()


def read_result_file(path: str | os.PathLike[str]) -> list[RunResult]:
  """RunResults from one .json file (an object or a list of objects) or .jsonl file."""
  path = os.fspath(path)
  text = _read_text(path)
  if path.endswith('.jsonl'):
    rows = []
    for line_number, line in enumerate(text.splitlines(), 1):
      if line.strip():
        try:
          rows.append((json.loads(line), f'{path}:{line_number}'))
        except json.JSONDecodeError as e:
          raise ValueError(f'{path}:{line_number}: not valid JSON ({e})') from e
  else:
    try:
      data = json.loads(text)
    except json.JSONDecodeError as e:
      raise ValueError(f'{path}: not valid JSON ({e})') from e
    items = data if isinstance(data, list) else [data]
    rows = [(item, path if len(items) == 1 else f'{path}[{i}]') for i, item in enumerate(items)]
  return [RunResult.from_json(row, source) for row, source in rows]


def find_result_files(sweep_dir: str | os.PathLike[str], max_depth: int = 3) -> list[str]:
  """Every eval_results.json / .jsonl in sweep_dir or up to max_depth folders below, sorted.

  (Depth-limited globs rather than '**', which etils.epath refuses on gs://.)
  """
  from etils import epath  # pylint: disable=g-import-not-at-top
  root = epath.Path(sweep_dir)
  if not root.is_dir():
    raise ValueError(f'sweep directory {os.fspath(sweep_dir)!r} does not exist')
  patterns = ['*/' * depth + name for depth in range(max_depth + 1) for name in RESULT_FILENAMES]
  return sorted({os.fspath(p) for pattern in patterns for p in root.glob(pattern)})


def load_run_results(
    source: str | os.PathLike[str] | Sequence[RunResult | Mapping[str, Any]]) -> list[RunResult]:
  """RunResults from a sweep directory, a result file, or a list of RunResults / dicts.

  Raises:
    ValueError: a result fails validation (naming file and field), or two results share a run
      name.
  """
  if isinstance(source, (str, os.PathLike)):
    path = os.fspath(source)
    files = [path] if path.endswith(('.json', '.jsonl')) else find_result_files(path)
    results = [r for f in files for r in read_result_file(f)]
  else:
    results = [r if isinstance(r, RunResult) else RunResult.from_json(r, f'results[{i}]')
               for i, r in enumerate(source)]
  seen = {}
  for result in results:
    if result.run in seen:
      raise ValueError(f'two eval results share the run name {result.run!r}')
    seen[result.run] = result
  return results


def write_run_result(path: str | os.PathLike[str], result: RunResult) -> None:
  """Writes one eval_results.json (atomically)."""
  io_utils.atomic_write_json(path, result.to_json())


# ---------------------------------------------------------------- seed aggregation


@dataclasses.dataclass(frozen=True)
class FrontierPoint:
  """Runs sharing (method, objective, transform, γ, k) across seeds: means and intervals.

  With two or more seeds a metric's interval is the t-interval of the mean across seeds
  (level 95%); with one seed it is that run's own interval (bootstrap over prompts), if any.
  """
  method: str
  objective: str
  transform: str
  gamma: float | None
  k: int | None
  runs: tuple[RunResult, ...]
  values: dict[str, float]
  cis: dict[str, Interval | None]

  @property
  def seeds(self) -> tuple[int, ...]:
    return tuple(run.seed for run in self.runs)

  @property
  def kl(self) -> float:
    return self.values['kl']

  @property
  def label(self) -> str:
    return self.runs[0].label


def t_quantile(level: float, dof: int) -> float:
  """The two-sided level quantile of Student's t with dof degrees of freedom."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  return float(stats.t.ppf(0.5 + level / 2, dof))


def aggregate_seeds(results: Sequence[RunResult], level: float = 0.95) -> list[FrontierPoint]:
  """One FrontierPoint per (method, objective, transform, γ, k); sorted by method, objective, KL."""
  groups: dict[tuple[Any, ...], list[RunResult]] = {}
  for result in results:
    key = (result.method, result.objective, result.transform, result.gamma, result.k)
    groups.setdefault(key, []).append(result)
  points = []
  for (method, objective, transform, gamma, k), runs in groups.items():
    runs = sorted(runs, key=lambda r: r.seed)
    names = sorted({name for run in runs for name in run.metrics()})
    values, cis = {}, {}
    for name in names:
      per_seed = np.array([run.metrics()[name] for run in runs if name in run.metrics()])
      values[name] = float(per_seed.mean())
      if per_seed.size >= 2:
        half = t_quantile(level, per_seed.size - 1) * per_seed.std(ddof=1) / math.sqrt(
            per_seed.size)
        cis[name] = (values[name] - half, values[name] + half)
      else:
        cis[name] = next(run.metric_ci(name) for run in runs if name in run.metrics())
    points.append(FrontierPoint(method, objective, transform, gamma, k, tuple(runs), values, cis))
  method_order = {m: i for i, m in enumerate(METHODS)}
  return sorted(points, key=lambda p: (method_order[p.method], p.objective, p.kl))


def objective_property(objective: str) -> str:
  """'helpful' / 'harmless' / 'combined' (the prefix of the objective name), else the name."""
  prefix = objective.split('_', 1)[0]
  return prefix if prefix in ('helpful', 'harmless', 'combined') else objective
