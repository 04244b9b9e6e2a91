"""How the pooled optimum J*_N depends on the pool size N, on an experiment's evaluation prompts.

    python -m benchmarks.optimum_pool_size --exp_dir EXP --objectives combined_lsc_sum,\
        combined_raw_sum --gammas 0.05,0.1,0.15,0.3 --pool 1024 [--gin_file experiments/demo.gin]

Draws a fresh pool of `pool` π0 samples per evaluation prompt (seeded, apart from the
experiment's own pool), scores it with the experiment's proxy reward models, and for each
objective, γ and N = 64, 128, ..., pool reports (lsc_align.train.optimum_checks.pool_checks):
J*_N, J*_{N/2}, the half-pool gap as a share of the gain, KL*, log N, ESS and whether the estimate
passes all three checks. References are the experiment's evaluation references. Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import sys

import jax
import numpy as np

from lsc_align import gin_utils
from lsc_align.pipeline import align, experiment, pools_stage
from lsc_align.train import optimum_checks, pools, references


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--exp_dir', required=True)
  parser.add_argument('--objectives', default='combined_lsc_sum,combined_raw_sum')
  parser.add_argument('--gammas', default='0.05,0.1,0.15,0.3')
  parser.add_argument('--pool', type=int, default=1024)
  parser.add_argument('--prompts', type=int, default=0, help='first P prompts (0: all)')
  parser.add_argument('--gin_file', action='append', default=[])
  parser.add_argument('--seed', type=int, default=123)
  args = parser.parse_args(argv)
  gin_utils.parse(args.gin_file or ['experiments/demo.gin'], [])
  exp = pools.ExperimentDirs(args.exp_dir)
  arrays = pools.load_npz(exp.pool('eval'))
  models = pools_stage.load_models(exp)
  prompts = arrays['prompt_ids'][:args.prompts or None]
  length = arrays['pool_responses'].shape[-1]
  responses = references.sample_pool(models.policy_params, models.policy_config, prompts,
                                     args.pool, jax.random.key(args.seed), length)
  rewards = {p: references.score_pool(models.reward_fn(p), prompts, responses)
             for p in pools.PROPERTIES}
  out = []
  for name in args.objectives.split(','):
    objective = experiment.load_objective(name)
    refs = align.eval_references(objective, arrays)[:prompts.shape[0]]
    u = align.pool_utilities(objective, np.stack([rewards[p] for p in objective.properties], -1),
                             refs)
    for gamma in (float(g) for g in args.gammas.split(',')):
      n = 64
      while n <= args.pool:
        out.append({'objective': name, **optimum_checks.pool_checks(u[:, :n], gamma)})
        print(json.dumps(out[-1]), file=sys.stderr, flush=True)
        n *= 2
  print(json.dumps({'exp_dir': args.exp_dir, 'prompts': int(prompts.shape[0]),
                    'rows': out}, indent=1))
  return 0


if __name__ == '__main__':
  sys.exit(main())
