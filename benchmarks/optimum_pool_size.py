"""How the pooled optimum J*_N depends on the pool size N, on an experiment's evaluation prompts.

    python -m benchmarks.optimum_pool_size --exp_dir EXP --objectives combined_lsc_sum,\
        combined_raw_sum --gammas 0.05,0.1,0.15,0.3 --pool 1024 [--gin_file experiments/demo.gin]

Draws a fresh pool of `pool` π0 samples per evaluation prompt (seeded, apart from the
experiment's own pool), scores it with the experiment's proxy reward models, and for each
objective, γ and N = 64, 128, ..., pool reports (lsc_align.align.optimum_checks.pool_checks):
J*_N, J*_{N/2}, the half-pool gap as a share of the gain, KL*, log N, ESS and whether the estimate
passes all three checks. References are the experiment's evaluation references. Prints JSON.

With --runs RUN_DIR,... each PPO/RLOO run's final policy (its latest checkpoint; RUN_DIR@STEP for
a kept earlier one) is sampled (--policy_samples per prompt) on the same prompts; its per-prompt
J = E[u] − γ KL is set against J*_N of the fresh pool at the run's γ for every N, with a
bootstrap interval of the share.

--split train does the same on the pooled training prompts (the prompts PPO and RLOO trained
on, with the reference tables they trained with) instead of the evaluation prompts.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import jax
import numpy as np

from lsc_align import checkpointing, gin_utils, io_utils
from lsc_align.align import optimum, optimum_checks, pool_sampling, ppo, ppo_step
from lsc_align.conventions import PROPERTIES
from lsc_align.pipeline import experiment, layout, pools_stage, reference_tables, runs
from lsc_align.pipeline.pool import Pool, load_pool
from lsc_align.rewards import aggregate
from lsc_align.rewards.objectives import Objective


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--exp_dir', required=True)
  parser.add_argument('--objectives', default='combined_lsc_sum,combined_raw_sum')
  parser.add_argument('--gammas', default='0.05,0.1,0.15,0.3')
  parser.add_argument('--pool', type=int, default=1024)
  parser.add_argument('--prompts', type=int, default=0, help='first P prompts (0: all)')
  parser.add_argument('--gin_file', action='append', default=[])
  parser.add_argument('--seed', type=int, default=123)
  parser.add_argument('--runs', default='', help='PPO run directories, comma-separated')
  parser.add_argument('--policy_samples', type=int, default=16)
  parser.add_argument('--split', choices=('eval', 'train'), default='eval',
                      help='evaluation prompts, or the pooled training prompts')
  args = parser.parse_args(argv)
  gin_utils.parse(args.gin_file or ['experiments/demo.gin'], [])
  exp = layout.ExperimentDirs(args.exp_dir)
  arrays = load_pool(exp, args.split)
  models = pools_stage.load_models(exp)
  prompts = arrays.prompt_ids[:args.prompts or None]
  length = load_pool(exp, 'eval').response_length
  responses = pool_sampling.sample_pool(models.policy_params, models.policy_config, prompts,
                                     args.pool, jax.random.key(args.seed), length)
  rewards = {p: pool_sampling.score_pool(models.reward_fn(p), prompts, responses)
             for p in PROPERTIES}
  out = []
  for name in args.objectives.split(','):
    objective = experiment.load_objective(name)
    refs = _references(args.split, exp, models, objective, arrays, prompts.shape[0])
    u = aggregate.pool_utilities(objective, rewards, refs)
    for gamma in (float(g) for g in args.gammas.split(',')):
      n = 64
      while n <= args.pool:
        out.append({'objective': name, **optimum_checks.pool_checks(u[:, :n], gamma)})
        print(json.dumps(out[-1]), file=sys.stderr, flush=True)
        n *= 2
  shares = [_run_share(run, exp, models, arrays, prompts, rewards, args)
            for run in args.runs.split(',') if run]
  print(json.dumps({'exp_dir': args.exp_dir, 'split': args.split,
                    'prompts': int(prompts.shape[0]),
                    'rows': out, 'runs': shares}, indent=1))
  return 0


def _references(split: str, exp: layout.ExperimentDirs, models: pools_stage.Models,
                objective: Objective, arrays: Pool, n: int) -> np.ndarray:
  """[n, P] reference rewards: evaluation's, or the table the learners trained with."""
  del split  # the pool is the split's
  return reference_tables.references_for(exp, objective, arrays.prompt_ids, arrays, models)[:n]


def _run_share(run_dir: str, exp: layout.ExperimentDirs, models: pools_stage.Models,
               arrays: Pool, prompts: np.ndarray,
               pool_rewards: dict[str, np.ndarray], args: argparse.Namespace) -> dict:
  """The run's per-prompt J against J*_N of the fresh pool, for every N (module docstring)."""
  run_dir, _, at = run_dir.partition('@')
  info = json.loads(io_utils.read_text(os.path.join(run_dir, 'run.json')))
  objective = Objective.from_dict(info['objective'])
  gamma, hp = float(info['kl_coef']), ppo_step.PPOHyperparams(**info['hp'])
  template = ppo.init_state(models.policy_params, hp, info['seed'])
  with checkpointing.TrainCheckpointer(checkpointing.checkpoint_dir(run_dir)) as checkpointer:
    step = int(at) if at else checkpointer.latest_step()
    state, _ = checkpointer.restore(template, step)
  result = policy_share(state.policy.params, objective, gamma, exp, models, arrays, prompts,
                        pool_rewards, args.split, args.policy_samples, args.seed,
                        hp.max_response_length, hp.temperature)
  result = {'run': os.path.basename(run_dir.rstrip('/')), 'checkpoint_step': step, **result}
  print(json.dumps(result), file=sys.stderr, flush=True)
  return result


def policy_share(params: Any, objective: Objective, gamma: float, exp: layout.ExperimentDirs,
                 models: pools_stage.Models, arrays: Pool, prompts: np.ndarray,
                 pool_rewards: dict[str, np.ndarray], split: str, policy_samples: int,
                 seed: int, max_response_length: int, temperature: float = 1.0) -> dict:
  """A policy's per-prompt J = E[u] − γ KL against J*_N of π0's pool, for N = 64, 128, ...

  pool_rewards: property -> [P, N] proxy rewards of π0's pool on `prompts`. Returns the KL,
  J and, per N, KL*_N with the share of the gain and its bootstrap interval over prompts.
  """
  responses = pool_sampling.sample_pool(params, models.policy_config, prompts, policy_samples,
                                     jax.random.key(seed + 1), max_response_length,
                                     temperature)
  kl = runs.kl_per_prompt(params, models.policy_params, models.policy_config, prompts,
                          responses, temperature, 256)
  refs = _references(split, exp, models, objective, arrays, prompts.shape[0])
  u = aggregate.pool_utilities(objective, {p: pool_sampling.score_pool(
      models.reward_fn(p), prompts, responses) for p in objective.properties}, refs)
  u_pool = aggregate.pool_utilities(objective, pool_rewards, refs)
  reached = u.mean(axis=1) - gamma * kl
  rows, n = [], 64
  while n <= u_pool.shape[1]:
    best = np.asarray(optimum.optimum_objective(u_pool[:, :n], gamma), np.float64)
    rows.append({'pool_size': n, 'optimum_kl': float(np.mean(optimum.optimum_kl(
        u_pool[:, :n], gamma))), **optimum_checks.share_interval(
            reached, best, u_pool[:, :n].mean(axis=1), seed=seed)})
    n *= 2
  return {'objective': objective.name, 'gamma': gamma, 'kl': float(kl.mean()),
          'objective_value': float(reached.mean()), 'shares': rows}


if __name__ == '__main__':
  sys.exit(main())
