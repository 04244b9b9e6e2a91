"""Learners against the exact KL-regularised optimum on an enumerable problem; prints JSON.

    python -m benchmarks.ppo_ground_truth [--variants baseline,prefit,...] [--out FILE]

The problem (lsc_align.align.ground_truth): the real policy LM and reward models, responses of at
most 4 tokens over 5 content tokens (781 responses per prompt, every one enumerated), 32 prompts.
J*, KL(π*‖π0) and each trained policy's J and KL are exact sums over responses. For each variant
(a learner and its settings), each objective (LSC sum, 0.5/0.5 raw sum) and each γ, it reports the
share of the exact gain (J − J_π0)/(J* − J_π0) and KL / KL*, with the critic's fit statistics.

The settings of variant 'world' are those of configs/runs/demo_align.gin (policy lr 2e-4, value lr
1e-3, λ = 0.95, absolute value clip 0.2, 60 iterations of 32 prompts, 2 epochs × 2 minibatches);
each other variant changes one or a few of them (VARIANTS). γ per objective is chosen so that
KL* lies between about 1 and 4 nats (computed from the problem alone, before any learner runs).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from typing import Any

from lsc_align.align import ground_truth, ppo_step

SIZES = ground_truth.GroundTruthSizes(vocab_size=7, max_response_length=4, num_prompts=32,
                                      prompt_length=3, seed=0)
GAMMAS = {'lsc_sum': (0.1, 0.3), 'raw_sum': (0.1, 0.3)}

WORLD_HP = ppo_step.PPOHyperparams(policy_lr=2e-4, value_lr=1e-3, warmup_steps=5, epochs=2,
                                   num_minibatches=2, max_response_length=4)
# name → (learner, iterations, batch size in prompts, changes to WORLD_HP)
VARIANTS: dict[str, tuple[str, int, int, dict[str, Any]]] = {
    'world': ('ppo', 60, 32, {}),
    'world_prefit': ('ppo', 60, 32, {'value_init': 'prefit'}),
    'world_mean_return': ('ppo', 60, 32, {'value_init': 'mean_return'}),
    'world_noclip': ('ppo', 60, 32, {'value_clip': None}),
    'world_lambda1': ('ppo', 60, 32, {'gae_lambda': 1.0}),
    'world_detach': ('ppo', 60, 32, {'detach_value': True}),
    'world_critic': ('ppo', 60, 32, {'value_init': 'prefit', 'value_clip': None,
                                     'gae_lambda': 1.0}),
    'budget': ('ppo', 600, 32, {}),
    'budget_critic': ('ppo', 600, 32, {'value_init': 'prefit', 'value_clip': None,
                                       'gae_lambda': 1.0}),
    'budget_critic_lr': ('ppo', 600, 32, {'value_init': 'prefit', 'value_clip': None,
                                          'gae_lambda': 1.0, 'policy_lr': 1e-3,
                                          'lr_decay_steps': 2400}),
    'rloo_world': ('rloo', 60, 8, {'samples_per_prompt': 4}),
    'rloo_budget': ('rloo', 600, 8, {'samples_per_prompt': 4}),
    'rloo_budget_lr': ('rloo', 600, 8, {'samples_per_prompt': 4, 'policy_lr': 1e-3,
                                        'lr_decay_steps': 2400}),
}


def run_variant(problem: ground_truth.GroundTruthProblem, name: str,
                seed: int = 0) -> list[dict[str, Any]]:
  """Every objective and γ of one variant: a row per run with the exact evaluation."""
  learner, iterations, batch_size, changes = VARIANTS[name]
  hp = dataclasses.replace(WORLD_HP, **changes)
  rows = []
  for objective_name, gammas in GAMMAS.items():
    for gamma in gammas:
      start = time.time()
      out = ground_truth.train(problem, problem.objective(objective_name), gamma, hp,
                               learner=learner, iterations=iterations, batch_size=batch_size,
                               seed=seed, eval_every=max(iterations // 6, 1), copies=1)
      rows.append({'variant': name, 'learner': learner, 'objective': objective_name,
                   'gamma': gamma, 'iterations': iterations, 'batch_prompts': batch_size,
                   'changes': {k: v for k, v in changes.items()}, 'seed': seed,
                   **{f'exact_{k}' if k == 'objective' else k: v
                      for k, v in out['final'].items()}, 'critic': out['critic'],
                   'share_history': [(h['iteration'], round(h['share'], 4))
                                     for h in out['history']],
                   'seconds': round(time.time() - start, 1)})
      print(json.dumps({k: rows[-1][k] for k in ('variant', 'objective', 'gamma', 'share',
                                                  'kl', 'optimum_kl', 'seconds')}),
            file=sys.stderr, flush=True)
  return rows


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--variants', default=','.join(VARIANTS))
  parser.add_argument('--seeds', default='0')
  parser.add_argument('--out', default=None, help='also write the JSON here')
  args = parser.parse_args(argv)
  problem = ground_truth.make_problem(SIZES)
  rows = []
  for seed in (int(s) for s in args.seeds.split(',')):
    for name in args.variants.split(','):
      rows.extend(run_variant(problem, name, seed))
  result = {'problem': dataclasses.asdict(SIZES), 'responses_per_prompt': int(
      problem.responses.shape[0]), 'runs': rows}
  text = json.dumps(result, indent=1)
  if args.out:
    with open(args.out, 'w') as f:
      f.write(text)
  print(text)
  return 0


if __name__ == '__main__':
  sys.exit(main())
