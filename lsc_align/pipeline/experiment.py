"""An experiment end to end: world → reward models → π0 → pools → (reference predictors) →
sweeps → report.

`prepare` runs the stages that every alignment run shares; `run_sweep` expands a sweep (PPO over
objectives × γ × seeds, best-of-k and the closed-form optimum over objectives) into runs and
runs them one after another, first training the reference predictors that its objectives'
Gaussian references need (lsc_align.pipeline.reference_stage). Every stage is skipped when its
output exists and resumed from its latest checkpoint when it was interrupted, so re-running a
killed command continues it.
Objectives are named by their files under configs/objectives/ (`load_objective`); the weighted
raw-sum baseline is swept over w with `weighted_variants`.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import re
import time
from typing import Any, Mapping, Sequence

import gin
from gin import config_parser

from lsc_align import gin_utils
from lsc_align import io_utils
from lsc_align.conventions import LEARNERS
from lsc_align.pipeline import runs
from lsc_align.pipeline import pools_stage
from lsc_align.pipeline import reference_stage
from lsc_align.rewards import objectives as objectives_lib
from lsc_align.rewards.objectives import Objective, ReferenceKind
from lsc_align.pipeline import layout
from lsc_align.train import loop

class _NotLiteral:
  """What the parser makes of a @reference or %macro: a value this loader refuses."""

  def __init__(self, text: str) -> None:
    self.text = text


class _LiteralsOnly(config_parser.ParserDelegate):
  def configurable_reference(self, scoped_configurable_name: str, evaluate: bool) -> _NotLiteral:
    return _NotLiteral('@' + scoped_configurable_name + ('()' if evaluate else ''))

  def macro(self, macro_name: str) -> _NotLiteral:
    return _NotLiteral('%' + macro_name)


def _references_in(value: Any) -> list[str]:
  if isinstance(value, _NotLiteral):
    return [value.text]
  if isinstance(value, Mapping):
    value = [*value.keys(), *value.values()]
  if isinstance(value, (list, tuple)):
    return [text for v in value for text in _references_in(v)]
  return []


def literal_bindings(text: str, where: str) -> list[config_parser.BindingStatement]:
  """The binding statements of a gin text, parsed by gin, whose values are all literals.

  Import statements are honoured; an include, a @reference or a %macro is a ValueError naming
  `where` and the line.
  """
  out = []
  try:
    statements = list(config_parser.ConfigParser(text, _LiteralsOnly()))
  except SyntaxError as e:
    raise ValueError(f'{where}: {e}') from e
  for statement in statements:
    line = statement.location.line_num
    if isinstance(statement, config_parser.ImportStatement):
      importlib.import_module(statement.module)
    elif not isinstance(statement, config_parser.BindingStatement):
      raise ValueError(f'{where}:{line}: only literal bindings are supported here, got '
                       f'{statement.location.line_content.strip()!r}')
    elif _references_in(statement.value):
      raise ValueError(f'{where}:{line}: {_references_in(statement.value)[0]!r} is not a '
                       'literal')
    else:
      out.append(statement)
  return out


def load_objective(name: str) -> Objective:
  """The objective of configs/objectives/<name>.gin (or a .gin path): its make_objective bindings.

  gin parses the file; its bindings are bound in the scope named after the file
  (`combined_lsc_sum/make_objective.name = ...`), so a sweep's objectives live side by side in
  the config, and make_objective is called in that scope: the run's operative config lists them
  and its config.gin header names the file.
  """
  path = gin_utils.resolve_gin_file(name if name.endswith('.gin') else f'objectives/{name}')
  scope = re.sub(r'\W', '_', os.path.splitext(os.path.basename(path))[0])
  with open(path, encoding='utf-8') as f:
    statements = literal_bindings(f.read(), path)
  for statement in statements:
    if statement.scope or statement.selector != 'make_objective':
      raise ValueError(f'{path}:{statement.location.line_num}: only make_objective.<arg> = '
                       f'<literal> bindings are supported in objective files, got '
                       f'{statement.location.line_content.strip()!r}')
  given = {statement.arg_name: statement for statement in statements}
  parameters = inspect.signature(objectives_lib.make_objective).parameters
  missing = [n for n, p in parameters.items() if p.default is gin.REQUIRED and n not in given]
  if missing:
    raise ValueError(f'objective file {path}: no make_objective.{missing[0]} binding')
  with gin.unlock_config():  # every argument bound, so an earlier file of this name leaves none
    for arg, parameter in parameters.items():
      statement = given.pop(arg, None)
      gin.bind_parameter(f'{scope}/make_objective.{arg}',
                         parameter.default if statement is None else statement.value)
  if given:
    statement = next(iter(given.values()))
    raise ValueError(f'{path}:{statement.location.line_num}: make_objective has no argument '
                     f'{statement.arg_name!r}')
  gin_utils.record_file(path)
  try:  # the file's scope alone, also when loaded inside a learner's scope (commands.ppo_main)
    with gin.config_scope(None), gin.config_scope(scope):
      return objectives_lib.make_objective()
  except (ValueError, TypeError) as e:  # a bad value (e.g. a quantile outside (0, 1))
    raise ValueError(f'objective file {path}: {e}') from e


def weighted_variants(objective: Objective, helpful_weights: Sequence[float]) -> list[Objective]:
  """The weighted raw-sum baseline at each w: w·r_helpful + (1 − w)·r_harmless."""
  if set(objective.properties) != {'helpful', 'harmless'}:
    raise ValueError(f'objective {objective.name!r} is not a helpful + harmless sum')
  out = []
  for w in helpful_weights:
    weights = {'helpful': w, 'harmless': 1.0 - w}
    out.append(dataclasses.replace(objective, name=f'{objective.name}_w{w:g}',
                                   weights=tuple(weights[p] for p in objective.properties)))
  return out


def _stage_done(path: str) -> bool:
  return io_utils.exists(path)


def _resume_flag(run_dir: str) -> bool:
  return io_utils.isdir(layout.checkpoints(run_dir))


@gin.configurable
def prepare(exp_dir: str, pool_sizes: pools_stage.PoolSizes | None = None,
            seed: int = 0, data_dir: str | None = None, vocabulary: str | None = None,
            judge_model: Any = None, lenient: bool = False,
            log: Any = print) -> layout.ExperimentDirs:
  """Data, both reward models, π0 and the pools (each skipped if done, resumed if started).

  Args:
    exp_dir: the experiment directory.
    pool_sizes: default PoolSizes() as bound by gin.
    seed: of every stage.
    data_dir, vocabulary: an HH-layout data source (e.g. Anthropic HH) and its vocabulary,
      instead of the embedded world. Such data has no gold utilities, so a judge reward model
      per property is trained too (EXP/judge_<property>, another seed, `judge_model`'s sizes:
      bind e.g. `prepare.judge_model = @judge/RewardModelConfig()` for a larger judge).
    judge_model: RewardModelConfig of the judges; default that of the proxy reward models.
    lenient: skip bad lines of an HH-layout source (each stage lists them in its directory)
      instead of failing on the first.
    log: progress lines.
  """
  from lsc_align.world import dataset as world_lib  # pylint: disable=g-import-not-at-top
  from lsc_align.train import reward_model_trainer  # pylint: disable=g-import-not-at-top
  from lsc_align.train import sft_trainer  # pylint: disable=g-import-not-at-top
  exp = layout.ExperimentDirs(exp_dir)  # its root is absolute
  io_utils.makedirs(exp.root)
  if (data_dir is None) != (vocabulary is None):
    raise ValueError('prepare: give both data_dir and vocabulary (or neither, for the world)')
  if data_dir is not None:
    exp.set_source(data_dir, vocabulary)
  elif not _stage_done(os.path.join(exp.data, 'world.json')):
    log(f'[1/4] world -> {exp.data}')
    world_lib.build_world(exp.data)

  def train_rm(run_dir: str, prop: str, seed: int, **kwargs: Any) -> None:
    if _stage_done(os.path.join(run_dir, reward_model_trainer.PARAMS_FILE)):
      return
    log(f'[2/4] reward model {prop} -> {run_dir}')
    loop.check_completed(reward_model_trainer.train_reward_model(
        run_dir=run_dir, data_dir=exp.data, vocabulary=exp.vocabulary, property_name=prop,
        settings=reward_model_trainer.configured_settings(seed=seed),
        resume=_resume_flag(run_dir), lenient=lenient, **kwargs), run_dir)

  for prop in layout.PROPERTIES:
    train_rm(exp.reward_model(prop), prop, seed=seed)
  if not exp.is_world:  # no gold: a separately trained judge
    for prop in layout.PROPERTIES:
      train_rm(exp.judge_model(prop), prop, seed=seed + 1000,
               **({'model': judge_model} if judge_model is not None else {}))
  if not _stage_done(os.path.join(exp.sft, sft_trainer.PARAMS_FILE)):
    log(f'[3/4] SFT policy pi0 -> {exp.sft}')
    result = sft_trainer.train_sft(run_dir=exp.sft, data_dir=exp.data,
                                   vocabulary=exp.vocabulary,
                                   settings=sft_trainer.configured_settings(seed=seed),
                                   resume=_resume_flag(exp.sft), lenient=lenient)
    loop.check_completed(result, exp.sft)
  if not all(_stage_done(exp.pool(s)) for s in ('train', 'eval')):
    log(f'[4/4] pi0 sample pools -> {os.path.dirname(exp.pool("train"))}')
  pools_stage.build_pools(exp.root, pool_sizes or pools_stage.PoolSizes(), seed=seed,
                          lenient=lenient)
  return exp


@gin.configurable
def run_sweep(exp_dir: str, ppo_objectives: Sequence[str] = (),
              kl_coefs: Sequence[float] = (), seeds: Sequence[int] = (0,),
              bok_objectives: Sequence[str] = (), ks: Sequence[int] = (1, 2, 4, 8, 16, 32, 64),
              optimum_objectives: Sequence[str] = (),
              optimum_kl_coefs: Sequence[float] = (0.03, 0.1, 0.3, 1.0),
              helpful_weights: Sequence[float] = (), ppo_helpful_weights: Sequence[float] = (),
              learners: Sequence[str] | Mapping[str, Sequence[str]] = ('ppo',),
              log: Any = print) -> list[str]:
  """Runs every point of the sweep that has no eval results yet; returns the run directories.

  kl_coefs is a list of γ for every PPO objective, or a mapping objective name → list (raw and
  transformed utilities live on different scales, so their γ ranges differ). An objective name
  ending in 'raw_sum' expands to one weighted variant per helpful_weights entry for best-of-k
  and the optimum, and per ppo_helpful_weights entry for PPO (when given).

  learners: every PPO point runs once per learner ('ppo', 'rloo'), in runs/<learner>_...; or a
  mapping learner → the ppo_objectives it runs. Each learner's run_learner is called inside the gin
  scope of its name, so a config sets one learner's own settings with scoped bindings, e.g.
  `rloo/run_learner.batch_size = 16` and `rloo/ppo.PPOHyperparams.samples_per_prompt = 4`;
  unscoped bindings apply to every learner.
  """
  unknown = sorted(set(learners) - set(LEARNERS))
  if unknown or not learners:
    raise ValueError(f'run_sweep.learners: {unknown or "none"}; known: {sorted(LEARNERS)}')
  per_learner = {learner: (list(learners[learner]) if isinstance(learners, Mapping)
                           else list(ppo_objectives)) for learner in learners}
  for learner, names in per_learner.items():
    if set(names) - set(ppo_objectives):
      raise ValueError(f'run_sweep.learners[{learner!r}] names objectives that are not in '
                       f'run_sweep.ppo_objectives: {sorted(set(names) - set(ppo_objectives))}')
  exp = layout.ExperimentDirs(exp_dir)

  def expand(names: Sequence[str], weights: Sequence[float]) -> list[tuple[str, Objective]]:
    out = []
    for name in names:
      objective = load_objective(name)
      if name.endswith('raw_sum') and weights:
        out.extend((name, o) for o in weighted_variants(objective, weights))
      else:
        out.append((name, objective))
    return out

  def kl_coefs_of(name: str) -> Sequence[float]:
    if isinstance(kl_coefs, Mapping):
      if name not in kl_coefs:
        raise ValueError(f'run_sweep.kl_coefs has no entry for PPO objective {name!r}')
      return kl_coefs[name]
    return kl_coefs

  needed = sorted({p for names, weights in ((bok_objectives, helpful_weights),
                                             (optimum_objectives, helpful_weights),
                                             (ppo_objectives, ppo_helpful_weights))
                    for _, objective in expand(names, weights)
                    for p in objective.properties_with(ReferenceKind.GAUSSIAN)})
  if needed:  # the stage is skipped when its predictors exist
    reference_stage.prepare_references(exp_dir, needed, log=log)
  done: list[str] = []
  for _, objective in expand(bok_objectives, helpful_weights):
    run_dir = exp.run(f'bok_{objective.name}')
    if not _has_results(run_dir):
      log(f'best-of-k {objective.name}: k in {list(ks)}')
      runs.run_best_of_k(exp_dir, objective, ks=ks)
    done.append(run_dir)
  for _, objective in expand(optimum_objectives, helpful_weights):
    run_dir = exp.run(f'optimum_{objective.name}')
    if not _has_results(run_dir):
      log(f'closed-form optimum {objective.name}: gamma in {list(optimum_kl_coefs)}')
      runs.run_optimum(exp_dir, objective, kl_coefs=optimum_kl_coefs)
    done.append(run_dir)
  points = [(learner, o, g, s) for learner, names in per_learner.items()
            for name, o in expand(names, ppo_helpful_weights)
            for g in kl_coefs_of(name) for s in seeds]
  for i, (learner, objective, kl_coef, seed) in enumerate(points, 1):
    run_dir = exp.run(runs.learner_run_name(objective, kl_coef, seed, learner))
    if not _has_results(run_dir):
      log(f'{learner.upper()} {i}/{len(points)}: {objective.name} gamma={kl_coef:g} seed={seed}')
      start = time.time()
      with gin.config_scope(learner):
        result = runs.run_learner(exp_dir, objective, kl_coef=kl_coef, seed=seed,
                              resume=_resume_flag(run_dir), run_dir=run_dir, learner=learner)
      loop.check_completed(result, run_dir)
      log(f'  done in {time.time() - start:.0f} s: KL {result.kl:.2f}, win rates '
          + ', '.join(f'{k} {v:.3f}' for k, v in result.win_rate.items()))
    done.append(run_dir)
  return done


def _has_results(run_dir: str) -> bool:
  return any(io_utils.exists(os.path.join(run_dir, runs.RESULTS_FILE + s)) for s in ('', 'l'))
