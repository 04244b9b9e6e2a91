"""The share of the optimum's gain each PPO / RLOO run of a sweep reached, from its eval results.

    python -m benchmarks.learner_shares --exp_dir EXP [--objectives combined_lsc_sum,...]

Every learner run's evaluation (runs.evaluate_learner) holds its share (J − J_π0)/(J*_N − J_π0) on
the evaluation prompts with a 95% bootstrap interval over prompts, and the checks of the pooled
J*_N (pool size N, ESS, KL*, half-pool gap, trusted). This prints one JSON row per run and one
per (learner, objective, γ): the mean share over seeds with a 95% t-interval across seeds, the
lowest per-seed bootstrap bound, KL against KL*, and the ESS of J*_N. The pool's J*_N is an
estimate; benchmarks.optimum_pool_size measures how far it is from J* with larger pools.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np

from lsc_align.eval import results as results_lib


def rows(exp_dir: str, objectives: set[str]) -> list[dict]:
  out = []
  for r in results_lib.load_run_results(os.path.join(exp_dir, 'runs')):
    if r.method not in results_lib.LEARNER_METHODS or r.objective not in objectives:
      continue
    share, checks = r.extra.get('objective_fraction_interval'), r.extra.get('optimum_pool_checks')
    if not share or not checks:
      continue
    out.append({'run': r.run, 'learner': r.method, 'objective': r.objective, 'gamma': r.gamma,
                'seed': r.seed, 'kl': r.kl, 'optimum_kl': checks['optimum_kl'],
                'share': share['share'], 'share_low': share['share_low'],
                'share_high': share['share_high'], 'pool_size': checks['pool_size'],
                'ess_median': checks['ess_median'], 'trusted': checks['trusted'],
                'half_pool_gap_of_gain': checks['half_pool_gap_of_gain']})
  return sorted(out, key=lambda x: (x['learner'], x['objective'], x['gamma'], x['seed']))


def summary(per_run: list[dict]) -> list[dict]:
  groups: dict[tuple, list[dict]] = {}
  for row in per_run:
    groups.setdefault((row['learner'], row['objective'], row['gamma']), []).append(row)
  out = []
  for (learner, objective, gamma), group in sorted(groups.items()):
    shares = np.array([g['share'] for g in group])
    half = (results_lib.t_quantile(0.95, len(group) - 1) * shares.std(ddof=1)
            / math.sqrt(len(group)) if len(group) > 1 else None)
    out.append({'learner': learner, 'objective': objective, 'gamma': gamma,
                'seeds': len(group), 'share_mean': float(shares.mean()),
                'share_ci95': None if half is None else [float(shares.mean() - half),
                                                         float(shares.mean() + half)],
                'lowest_bootstrap_bound': min(g['share_low'] for g in group),
                'kl_mean': float(np.mean([g['kl'] for g in group])),
                'optimum_kl': group[0]['optimum_kl'], 'pool_size': group[0]['pool_size'],
                'ess_median': group[0]['ess_median'], 'trusted': group[0]['trusted']})
  return out


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--exp_dir', required=True)
  parser.add_argument('--objectives', default='combined_lsc_sum,combined_raw_sum')
  args = parser.parse_args(argv)
  per_run = rows(args.exp_dir, set(args.objectives.split(',')))
  if not per_run:
    raise SystemExit(f'{args.exp_dir}/runs holds no PPO or RLOO result for {args.objectives}')
  print(json.dumps({'runs': per_run, 'summary': summary(per_run)}, indent=1))
  return 0


if __name__ == '__main__':
  sys.exit(main())
