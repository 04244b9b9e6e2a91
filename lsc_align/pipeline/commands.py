"""The stage commands' functions: `lsc-align pools | references | bok | optimum | ppo | eval |
sweep`.

Each takes the parsed flags (gin is already bound by cli.py), calls one pipeline function and
prints its result as JSON lines.
"""
from __future__ import annotations

import argparse
import json

import gin

from lsc_align.pipeline import experiment
from lsc_align.pipeline import reference_stage
from lsc_align.pipeline import runs
from lsc_align.train import loop


def pools_main(args: argparse.Namespace) -> int:
  experiment.prepare(args.exp_dir, **({'lenient': True} if getattr(args, 'lenient', None) else {}))
  return 0


def sweep_main(args: argparse.Namespace) -> int:
  for run_dir in experiment.run_sweep(args.exp_dir):
    print(run_dir)
  return 0


def _objective(args: argparse.Namespace):
  return experiment.load_objective(args.objective)


def bok_main(args: argparse.Namespace) -> int:
  results = runs.run_best_of_k(args.exp_dir, _objective(args))
  print(json.dumps([{'k': r.k, 'kl': r.kl, 'win_rate': r.win_rate,
                     'and_win_rate': r.and_win_rate} for r in results]))
  return 0


def optimum_main(args: argparse.Namespace) -> int:
  results = runs.run_optimum(args.exp_dir, _objective(args))
  print(json.dumps([{'gamma': r.gamma, 'kl': r.kl, 'win_rate': r.win_rate,
                     'and_win_rate': r.and_win_rate} for r in results]))
  return 0


def ppo_main(args: argparse.Namespace) -> int:
  """`lsc-align ppo --exp_dir EXP --objective NAME (--kl_coef G | --alpha A) [--resume]`.

  Runs inside the gin scope of its learner (run_learner.learner), as a sweep does, so a config's
  learner-scoped bindings (`rloo/run_learner.batch_size = 16`) hold for a single run too.
  """
  given = {k: getattr(args, k) for k in ('kl_coef', 'alpha', 'seed', 'run_dir')
           if getattr(args, k) is not None}  # what is not given comes from gin (run_learner.*)
  with gin.config_scope(bound_learner()):
    result = runs.run_learner(args.exp_dir, _objective(args), resume=args.resume, **given)
  if result is None:
    return loop.EXIT_CODE_PREEMPTED
  print(json.dumps({'run': result.run, 'kl': result.kl, 'win_rate': result.win_rate,
                    'and_win_rate': result.and_win_rate,
                    'objective_fraction_of_optimum':
                        result.extra.get('objective_fraction_of_optimum')}))
  return 0


def bound_learner() -> str:
  """run_learner.learner as bound in gin ('ppo' when unbound)."""
  try:
    return str(gin.query_parameter('run_learner.learner'))
  except ValueError:
    return 'ppo'


def eval_main(args: argparse.Namespace) -> int:
  """`lsc-align eval --run_dir RUN_DIR [--step N]`: a PPO run, judged from its checkpoint."""
  result = runs.evaluate_run(args.run_dir, args.step)
  print(json.dumps({'run': result.run, 'kl': result.kl, 'win_rate': result.win_rate,
                    'and_win_rate': result.and_win_rate, 'shortcut_rate': result.shortcut_rate}))
  return 0


def references_main(args: argparse.Namespace) -> int:
  """`lsc-align references --exp_dir EXP [--properties helpful,harmless]`."""
  kwargs = {}
  if getattr(args, 'properties', None):
    kwargs['properties'] = [p.strip() for p in args.properties.split(',') if p.strip()]
  for prop, result in reference_stage.prepare_references(args.exp_dir, **kwargs).items():
    print(json.dumps({'property': prop, 'coverage': {
        f'{row["q"]:g}': round(row['coverage'], 4) for row in result['gaussian']['quantiles']}}))
  return 0
