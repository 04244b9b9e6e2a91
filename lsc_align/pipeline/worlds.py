"""`lsc-align claims`: the LSC sum against the best weighted raw sum, world by world.

One embedded world is one draw. The combined-objective claims run on a list of worlds fixed in
advance (configs/experiments/worlds.gin; a world is WorldConfig bindings on top of the bound
world), each in its own experiment directory OUT/<world name>/ (experiment.prepare and
run_sweep, every stage skipped when done, so a killed command continues).

* Equal tuning budget: the weighted raw sum runs at each w of its grid, the LSC sum at as many
  reference settings. One rule picks each side's setting per world and claim: the highest value
  on the evaluation prompts (ties: the first listed), so both sides are equally optimistic.
* Claims (AND win rate): best-of-k at the largest k; the optimum (and PPO) at one matched KL,
  the top of every setting's common KL range, for the optimum capped at log N − margin.
* Intervals: each side's 95% bootstrap over prompts; the difference's a paired bootstrap over
  prompts of the per-prompt AND rates each evaluation stores, the picked settings held fixed
  (at matched KL, for one seed per setting; seeds averaged have no paired interval).
* A claim holds in a world when the LSC side's value is higher; the table also counts the
  worlds where the difference's interval excludes 0, in either direction.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import time
from typing import Any, Callable, Mapping, Sequence

import gin
import numpy as np

from lsc_align import io_utils
from lsc_align.eval import evaluate
from lsc_align.eval import results as results_lib
from lsc_align.eval import win_rates
from lsc_align.pipeline import experiment
from lsc_align.pipeline import layout

Interval = tuple[float, float]
CLAIMS = ('bok', 'optimum', 'ppo')
_TITLES = {'bok': 'best-of-k, AND win rate at the largest k',
           'optimum': 'closed-form optimum, AND win rate at matched KL',
           'ppo': 'PPO, AND win rate at matched KL'}


@dataclasses.dataclass(frozen=True)
class World:
  """One world: its WorldConfig bindings (as given) and the parsed field → value overrides."""
  bindings: tuple[str, ...]
  overrides: tuple[tuple[str, Any], ...]

  @property
  def name(self) -> str:
    """'default', or the overrides joined, e.g. 'seed2_list_value0.6'."""
    return re.sub(r'[^\w.-]', '-', '_'.join(f'{k}{v}' for k, v in self.overrides)) or 'default'


def parse_world(spec: str | Sequence[str]) -> World:
  """A world from WorldConfig bindings: a list, or one string separated by ';' or newlines.

  '' and 'default' are the default world. gin parses each binding; values are literals.
  ValueError names a binding that is not `WorldConfig.<field> = <literal>` or whose field
  WorldConfig lacks.
  """
  from lsc_align.world import config as world_config  # pylint: disable=g-import-not-at-top
  if isinstance(spec, str):
    spec = [] if spec.strip() in ('', 'default') else spec.replace(';', '\n').split('\n')
  fields = {f.name for f in dataclasses.fields(world_config.WorldConfig)}
  bindings, overrides = [], {}
  for binding in (b.strip() for b in spec):
    if not binding:
      continue
    statements = experiment.literal_bindings(binding, f'world binding {binding!r}')
    if len(statements) != 1 or statements[0].scope or not (
        statements[0].selector == 'WorldConfig' or
        statements[0].selector.endswith('.WorldConfig')):
      raise ValueError(f'world binding {binding!r}: must be "WorldConfig.<field> = <value>"')
    field = statements[0].arg_name
    if field not in fields:
      raise ValueError(f'world binding {binding!r}: WorldConfig has no field {field!r}')
    overrides[field] = statements[0].value
    bindings.append(binding)
  return World(tuple(bindings), tuple(overrides.items()))


def build_world(exp_dir: str, world: World, log: Callable[[str], Any] = print) -> None:
  """Writes EXP/world for `world` (gin-bound WorldConfig plus its overrides), unless there.

  ValueError when EXP/world holds another world (so a changed binding never reuses stale runs).
  """
  from lsc_align.world import config as world_config  # pylint: disable=g-import-not-at-top
  from lsc_align.world import dataset as world_lib  # pylint: disable=g-import-not-at-top
  exp = layout.ExperimentDirs(exp_dir)
  config = world_config.WorldConfig(**dict(world.overrides))
  if io_utils.exists(os.path.join(exp.data, 'world.json')):
    same = lambda c: json.loads(json.dumps(c.to_dict()))  # tuples as lists
    if same(world_lib.load_config(exp.data)) != same(config):
      raise ValueError(f'{exp.data} holds another world than {list(world.bindings) or "default"}'
                       ' (the bound WorldConfig changed?); choose another --out')
    return
  log(f'world {world.name}: {list(world.bindings) or "default"} -> {exp.data}')
  world_lib.build_world(exp.data, config)


def per_prompt_and(results: Sequence[results_lib.RunResult]) -> dict[str, np.ndarray]:
  """Run name → [P] per-prompt AND win rates, as the evaluation stored them (every method)."""
  return {r.run: np.asarray(r.extra[evaluate.PER_PROMPT_AND], np.float64) for r in results
          if r.extra.get(evaluate.PER_PROMPT_AND) is not None}


# ---------------------------------------------------------------- the claims table


@dataclasses.dataclass(frozen=True)
class Side:
  """One side's chosen setting in one world: value, 95% interval, and every setting's value."""
  setting: str
  value: float
  interval: Interval | None
  candidates: tuple[tuple[str, float], ...]
  per_prompt: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)


@dataclasses.dataclass(frozen=True)
class WorldClaim:
  """One claim in one world: the LSC side against the raw side at one k or KL."""
  claim: str
  world: str
  point: str                     # 'k=64' or 'KL=2.16'
  lsc: Side
  raw: Side
  interval: Interval | None      # 95% paired bootstrap interval of lsc − raw, if per-prompt data

  @property
  def difference(self) -> float:
    return self.lsc.value - self.raw.value

  @property
  def holds(self) -> bool:
    return self.difference > 0

  @property
  def verdict(self) -> str:
    """'holds' / 'fails' / 'tie', and whether the difference's interval excludes 0."""
    word = 'holds' if self.holds else 'tie' if self.difference == 0 else 'fails'
    if self.interval is None:
      return word
    covers = self.interval[0] <= 0 <= self.interval[1]
    return f'{word} (interval {"covers" if covers else "excludes"} 0)'


def _point(runs_: Sequence[results_lib.RunResult], kl: float,
           per_prompt: Mapping[str, np.ndarray]) -> tuple[float, Interval | None, Any]:
  """(AND value, interval, per-prompt values) of a frontier linearly interpolated at `kl`.

  Runs sharing a KL-defining setting (several seeds at one γ) are averaged first. Per-prompt
  values interpolate with the same weights; their bootstrap then gives the interval, else the
  stored intervals are interpolated.
  """
  points = results_lib.aggregate_seeds(runs_)
  points = sorted((p for p in points if 'and_win_rate' in p.values), key=lambda p: p.kl)
  kls = [p.kl for p in points]
  j = max(1, min(int(np.searchsorted(kls, kl)), len(points) - 1))
  a, b = points[j - 1], points[j]
  t = 0.0 if b.kl == a.kl else min(1.0, max(0.0, (kl - a.kl) / (b.kl - a.kl)))
  value = (1 - t) * a.values['and_win_rate'] + t * b.values['and_win_rate']
  ci_a, ci_b = a.cis.get('and_win_rate'), b.cis.get('and_win_rate')
  interval = (None if ci_a is None or ci_b is None else
              ((1 - t) * ci_a[0] + t * ci_b[0], (1 - t) * ci_a[1] + t * ci_b[1]))
  pp = None
  if len(a.runs) == 1 and len(b.runs) == 1 and all(p.runs[0].run in per_prompt for p in (a, b)):
    pp = (1 - t) * per_prompt[a.runs[0].run] + t * per_prompt[b.runs[0].run]
    ci = win_rates.bootstrap_ci(pp)
    interval = (ci.low, ci.high)
  return float(value), interval, pp


def _best(settings: Sequence[str], values: Mapping[str, tuple[float, Any, Any]]) -> Side:
  """The selection rule, the same for both sides: the highest value, ties to the first listed."""
  name = max(settings, key=lambda s: (values[s][0], -settings.index(s)))
  value, interval, pp = values[name]
  return Side(name, value, interval, tuple((s, values[s][0]) for s in settings), pp)


def world_claim(claim: str, world: str, results: Sequence[results_lib.RunResult],
                lsc_settings: Sequence[str], raw_settings: Sequence[str],
                per_prompt: Mapping[str, np.ndarray] | None = None,
                kl_cap: float | None = None, seed: int = 0) -> WorldClaim | None:
  """One claim ('bok', 'optimum' or 'ppo') in one world from its RunResults; None when some
  setting has no runs for it (or, at matched KL, the frontiers share no KL below kl_cap).

  Settings are objective names (raw: the weighted variants, e.g. combined_raw_sum_w0.5);
  per_prompt maps run names to [P] per-prompt AND rates (per_prompt_and) for the paired interval.
  """
  if claim not in CLAIMS:
    raise ValueError(f'claim {claim!r}: must be one of {CLAIMS}')
  per_prompt = per_prompt or {}
  by_setting = {s: [r for r in results if r.method == claim and r.objective == s
                    and r.and_win_rate is not None] for s in [*lsc_settings, *raw_settings]}
  if not all(by_setting.values()):
    return None
  if claim == 'bok':
    k = min(max(r.k for r in rs) for rs in by_setting.values())
    hits = {s: [r for r in rs if r.k == k] for s, rs in by_setting.items()}
    if not all(hits.values()):
      return None
    point = f'k={k}'
    values = {s: (h[0].and_win_rate, h[0].and_win_rate_ci, per_prompt.get(h[0].run))
              for s, h in hits.items()}
  else:
    low = max(min(r.kl for r in rs) for rs in by_setting.values())
    high = min(max(r.kl for r in rs) for rs in by_setting.values())
    kl = min(high, kl_cap) if kl_cap is not None else high
    if kl < low:
      return None
    point = f'KL={kl:.2f}'
    values = {s: _point(rs, kl, per_prompt) for s, rs in by_setting.items()}
  lsc, raw = _best(list(lsc_settings), values), _best(list(raw_settings), values)
  interval = None
  if lsc.per_prompt is not None and raw.per_prompt is not None:
    ci = win_rates.bootstrap_ci(lsc.per_prompt - raw.per_prompt, seed=seed)
    interval = (ci.low, ci.high)
  return WorldClaim(claim, world, point, lsc, raw, interval)


def tally(claims: Sequence[WorldClaim]) -> dict[str, dict[str, int]]:
  """Per claim: worlds compared, LSC higher, the difference's interval above / below 0."""
  out: dict[str, dict[str, int]] = {}
  for c in claims:
    row = out.setdefault(c.claim, {'worlds': 0, 'holds': 0, 'above_0': 0, 'below_0': 0})
    row['worlds'] += 1
    row['holds'] += int(c.holds)
    row['above_0'] += int(c.interval is not None and c.interval[0] > 0)
    row['below_0'] += int(c.interval is not None and c.interval[1] < 0)
  return out


def _fmt(value: float, interval: Interval | None, sign: str = '') -> str:
  ci = '' if interval is None else f' [{interval[0]:{sign}.3f}, {interval[1]:{sign}.3f}]'
  return f'{value:{sign}.3f}{ci}'


def render_markdown(claims: Sequence[WorldClaim], labels: Mapping[str, str] | None = None,
                    world_bindings: Mapping[str, Sequence[str]] | None = None) -> str:
  """The claims table: per claim, a 'holds in X of N worlds' line and one row per world."""
  labels = labels or {}
  lines = []
  if world_bindings:
    lines += ['Worlds (WorldConfig bindings on top of configs/world/default.gin):', '']
    lines += [f'- `{name}`: ' + ('; '.join(f'`{b}`' for b in bindings) or 'the default world')
              for name, bindings in world_bindings.items()]
    lines.append('')
  counts = tally(claims)
  for claim in CLAIMS:
    rows = [c for c in claims if c.claim == claim]
    if not rows:
      continue
    n = counts[claim]
    lines += [f'### {_TITLES[claim]}', '',
              f'**Holds in {n["holds"]} of {n["worlds"]} worlds** (LSC sum higher); the paired '
              f'95% interval of the difference lies above 0 in {n["above_0"]} and below 0 in '
              f'{n["below_0"]}.', '',
              '| world | at | LSC sum: setting picked | LSC sum AND [95%] | weighted raw sum: '
              'setting picked | raw sum AND [95%] | difference [95% paired] | verdict |',
              '|---|---|---|---|---|---|---|---|']
    for c in rows:
      lines.append(f'| {c.world} | {c.point} | {labels.get(c.lsc.setting, c.lsc.setting)} | '
                   f'{_fmt(c.lsc.value, c.lsc.interval)} | '
                   f'{labels.get(c.raw.setting, c.raw.setting)} | '
                   f'{_fmt(c.raw.value, c.raw.interval)} | '
                   f'{_fmt(c.difference, c.interval, "+")} | {c.verdict} |')
    lines += ['', 'Every setting\'s value (the picks are the highest of each side):', '']
    for c in rows:
      cands = [f'{labels.get(s, s)} {v:.3f}' for s, v in c.lsc.candidates + c.raw.candidates]
      lines.append(f'- {c.world} ({c.point}): ' + '; '.join(cands))
    lines.append('')
  return '\n'.join(lines)


# ---------------------------------------------------------------- the command


def setting_label(objective: Any) -> str:
  """'q=(0.75, 0.5)' for an LSC sum's quantile references, 'w=0.3' for a weighted raw sum."""
  if objective.transform.value == 'raw':
    return f'w={objective.weights[objective.properties.index("helpful")]:g}'
  qs = ', '.join(f'{spec.quantile:g}' if spec.quantile is not None else spec.kind.value
                 for spec in objective.references)
  return f'q=({qs})'


@gin.configurable
def run_claims(out_dir: str, worlds: Sequence[Sequence[str] | str] = ((),),
               lsc_objectives: Sequence[str] = ('combined_lsc_sum_bok', 'combined_lsc_sum',
                                                'combined_lsc_sum_q50_q75'),
               raw_objective: str = 'combined_raw_sum',
               helpful_weights: Sequence[float] = (0.3, 0.5, 0.7),
               optimum_kl_margin: float | None = 2.0, ppo: bool = False,
               ppo_kl_coefs: Mapping[str, Sequence[float]] | None = None,
               log: Callable[[str], Any] = print) -> tuple[list[WorldClaim], str]:
  """Runs every world's stages (skipping what is done) and writes OUT/claims.md and .json.

  Returns the world claims and the markdown table. ValueError names a bad binding: a world
  binding, unequal budgets (len(lsc_objectives) != len(helpful_weights)), a raw_objective that
  is not a weighted raw sum, or two worlds with one name.
  """
  if len(lsc_objectives) != len(helpful_weights) or not lsc_objectives:
    raise ValueError(f'run_claims: equal tuning budget needs as many lsc_objectives '
                     f'({len(lsc_objectives)}) as helpful_weights ({len(helpful_weights)}), > 0')
  lsc = [experiment.load_objective(name) for name in lsc_objectives]
  raw = experiment.weighted_variants(experiment.load_objective(raw_objective), helpful_weights)
  if not raw_objective.endswith('raw_sum') or any(o.transform.value != 'raw' for o in raw):
    raise ValueError(f'run_claims.raw_objective = {raw_objective!r}: not a raw sum whose name '
                     "ends in 'raw_sum'")
  if any(o.transform.value != 'lsc' for o in lsc):
    raise ValueError(f'run_claims.lsc_objectives = {list(lsc_objectives)}: all must be LSC sums')
  parsed = [parse_world(w) for w in worlds]
  if len({w.name for w in parsed}) != len(parsed):
    raise ValueError(f'run_claims.worlds: two worlds share a name ({[w.name for w in parsed]})')
  kl_coefs = dict(ppo_kl_coefs or {'lsc': [0.05, 0.15], 'raw': [0.1, 0.3]})
  names = [o.name for o in lsc] + [raw_objective]
  out_dir, start = io_utils.abspath(out_dir), time.time()
  claims, seconds = [], {}
  for i, world in enumerate(parsed, 1):
    world_start, exp_dir = time.time(), os.path.join(out_dir, world.name)
    wlog = lambda m, n=world.name: log(f'[claims {time.time() - start:6.0f} s] {n}: {m}')
    wlog(f'world {i}/{len(parsed)} -> {exp_dir}')
    build_world(exp_dir, world, log=wlog)
    experiment.prepare(exp_dir, log=wlog)
    experiment.run_sweep(
        exp_dir, bok_objectives=names, optimum_objectives=names, helpful_weights=helpful_weights,
        ppo_objectives=names if ppo else [], ppo_helpful_weights=helpful_weights,
        kl_coefs={n: kl_coefs['raw' if n == raw_objective else 'lsc'] for n in names}, log=wlog)
    seconds[world.name] = round(time.time() - world_start, 1)
    exp = layout.ExperimentDirs(exp_dir)
    results = results_lib.load_run_results(exp.runs)
    per_prompt = per_prompt_and(results)
    pool = layout.load_npz(exp.pool('eval'))['pool_responses']
    for claim in CLAIMS if ppo else CLAIMS[:2]:
      cap = (math.log(pool.shape[1]) - optimum_kl_margin
             if claim == 'optimum' and optimum_kl_margin is not None else None)
      found = world_claim(claim, world.name, results, [o.name for o in lsc],
                          [o.name for o in raw], per_prompt, kl_cap=cap)
      claims += [found] if found else []
      if found is None:
        wlog(f'{claim}: not comparable (missing runs, or no common KL below the cap)')
  labels = {o.name: f'{o.name} {setting_label(o)}' for o in lsc}
  labels.update({o.name: setting_label(o) for o in raw})
  text = render_markdown(claims, labels, {w.name: w.bindings for w in parsed})
  io_utils.atomic_write_text(os.path.join(out_dir, 'claims.md'), text + '\n')
  side = lambda s: {k: getattr(s, k) for k in ('setting', 'value', 'interval', 'candidates')}
  io_utils.atomic_write_json(os.path.join(out_dir, 'claims.json'), {
      'worlds': {w.name: list(w.bindings) for w in parsed}, 'tally': tally(claims),
      'seconds_this_invocation': seconds,
      'claims': [{'claim': c.claim, 'world': c.world, 'at': c.point, 'lsc': side(c.lsc),
                  'raw': side(c.raw), 'difference': c.difference,
                  'difference_interval': c.interval, 'holds': c.holds} for c in claims]})
  return claims, text


def claims_main(args: argparse.Namespace) -> int:
  """`lsc-align claims [--out DIR] [--world BINDINGS ...] [--ppo]`: worlds.gin unless --gin_file.

  Each --world is one world's WorldConfig bindings separated by ';' ('' or 'default': the
  default world); given, they replace run_claims.worlds.
  """
  kwargs: dict[str, Any] = {'worlds': list(args.world)} if getattr(args, 'world', None) else {}
  kwargs.update({'ppo': True} if getattr(args, 'ppo', None) else {})
  _, text = run_claims(args.out, **kwargs)
  print(text, flush=True)
  print(f'claims: {os.path.join(io_utils.abspath(args.out), "claims.md")}', flush=True)
  return 0
