"""Can the policy represent the KL-regularised optimum? Distil π* into it and measure the share.

    python -m benchmarks.distill_optimum --exp_dir EXP --gin_file experiments/reproduce.gin \
        --objective combined_lsc_sum --gamma 0.15 [--pool 256 --steps 3000 --split eval]

π*(y|x) ∝ π0(y|x) exp(u(x,y)/γ) is approximated on the pooled training prompts by π0's samples
reweighted with self-normalised weights softmax(u/γ) (`--pool` samples per prompt, a fresh seed).
Starting from π0, the policy is trained by maximum likelihood on responses drawn from those
weights (a batch of prompts drawn uniformly, one response each from its prompt's weights), i.e.
it moves towards the M-projection argmin_θ KL(π*‖π_θ), with no policy gradient and no critic.
At the listed steps the policy's J = E[u] − γ KL is set against J*_N of a fresh π0 pool
(benchmarks.optimum_pool_size.policy_share, N up to --eval_pool) on the first --eval_prompts
prompts of --split. Prints JSON.

What it tells: if the distilled policy reaches a share near 1 where PPO and RLOO stop short, the
policy can represent π* and the learners' shortfall is optimisation; if it stops short too, what
a policy learns from samples is the limit, not the policy-gradient learners.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import optimum_pool_size
from lsc_align import gin_utils
from lsc_align.align import pool_sampling
from lsc_align.models import sampling
from lsc_align.pipeline import experiment, layout, pools_stage, reference_tables
from lsc_align.pipeline.pool import load_pool
from lsc_align.rewards import aggregate


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--exp_dir', required=True)
  parser.add_argument('--gin_file', action='append', default=[])
  parser.add_argument('--objective', default='combined_lsc_sum')
  parser.add_argument('--gamma', type=float, default=0.15)
  parser.add_argument('--pool', type=int, default=256, help='π0 samples per training prompt')
  parser.add_argument('--train_prompts', type=int, default=0,
                      help='distil on the first P pooled training prompts only (0: all)')
  parser.add_argument('--steps', type=int, default=3000)
  parser.add_argument('--eval_at', default='', help='steps to measure at (default: --steps)')
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--lr', type=float, default=1e-4)
  parser.add_argument('--eval_prompts', type=int, default=32)
  parser.add_argument('--eval_pool', type=int, default=1024)
  parser.add_argument('--split', choices=('eval', 'train'), default='eval')
  parser.add_argument('--policy_samples', type=int, default=16)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  gin_utils.parse(args.gin_file or ['experiments/demo.gin'], [])
  exp = layout.ExperimentDirs(args.exp_dir)
  models = pools_stage.load_models(exp)
  objective = experiment.load_objective(args.objective)
  length = load_pool(exp, 'eval').response_length
  start = time.time()

  # π0's pool on the training prompts, with the reference table the learners train with.
  prompts, train_pool, _ = pools_stage.training_prompts(exp, objective, models, 'pool')
  table = reference_tables.references_for(exp, objective, prompts, train_pool, models)
  prompts, table = prompts[:args.train_prompts or None], table[:args.train_prompts or None]
  pool = pool_sampling.sample_pool(models.policy_params, models.policy_config, prompts,
                                   args.pool, jax.random.key(10_000 + args.seed), length)
  u = aggregate.pool_utilities(objective, {p: pool_sampling.score_pool(
      models.reward_fn(p), prompts, pool) for p in objective.properties}, table)
  logits = u / args.gamma
  weights = np.exp(logits - logits.max(axis=1, keepdims=True))
  weights /= weights.sum(axis=1, keepdims=True)
  ess = 1.0 / np.sum(weights ** 2, axis=1)
  pool_seconds = time.time() - start

  # The measuring pool: fresh π0 samples on the evaluation (or training) prompts.
  measured = load_pool(exp, args.split)
  eval_prompts = measured.prompt_ids[:args.eval_prompts]
  eval_pool = pool_sampling.sample_pool(models.policy_params, models.policy_config, eval_prompts,
                                     args.eval_pool, jax.random.key(123), length)
  eval_rewards = {p: pool_sampling.score_pool(models.reward_fn(p), eval_prompts, eval_pool)
                  for p in objective.properties}

  config = models.policy_config
  optimizer = optax.adam(args.lr)

  @jax.jit
  def step(params, opt_state, x, y):
    def loss_fn(p):
      scores = sampling.response_logprobs(p, config, x, y)
      return -jnp.mean(jnp.sum(scores.logprobs * scores.response_mask, axis=-1))
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  eval_at = sorted({int(s) for s in args.eval_at.split(',') if s} | {args.steps})
  params = models.policy_params
  opt_state = optimizer.init(params)
  rng = np.random.default_rng(args.seed)
  cumulative = np.cumsum(weights, axis=1)
  rows, losses, train_seconds = [], [], 0.0
  for i in range(1, args.steps + 1):
    t = time.time()
    rows_p = rng.integers(0, prompts.shape[0], args.batch)
    pick = np.minimum((cumulative[rows_p] < rng.random((args.batch, 1))).sum(axis=1),
                      args.pool - 1)
    params, opt_state, loss = step(params, opt_state, jnp.asarray(prompts[rows_p]),
                                   jnp.asarray(pool[rows_p, pick]))
    losses.append(float(loss))
    train_seconds += time.time() - t
    if i in eval_at:
      share = optimum_pool_size.policy_share(
          params, objective, args.gamma, exp, models, measured, eval_prompts, eval_rewards,
          args.split, args.policy_samples, 7, length)
      rows.append({'step': i, 'nll': float(np.mean(losses[-100:])), **share})
      print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
  print(json.dumps({'exp_dir': args.exp_dir, 'objective': args.objective, 'gamma': args.gamma,
                    'pool': args.pool, 'train_prompts': int(prompts.shape[0]),
                    'median_ess': float(np.median(ess)), 'lr': args.lr, 'batch': args.batch,
                    'split': args.split, 'pool_seconds': round(pool_seconds, 1),
                    'train_seconds': round(train_seconds, 1), 'rows': rows}, indent=1))
  return 0


if __name__ == '__main__':
  sys.exit(main())
