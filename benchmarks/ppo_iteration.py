"""A PPO iteration's time split into rollout / scoring / update, and the scoring step's cost of
the LSC transform + aggregation (combined LSC sum vs the weighted raw sum, 2 reward models).

    python -m benchmarks.ppo_iteration [--iterations 8] [--score_repeats 40]

With --checkpoint DIR, π and π0 are a Hugging Face decoder checkpoint loaded through
models/pretrained.py (its config.json gives the PolicyConfig; --policy_gin and PolicyConfig
bindings are then unused); the reward models stay random T5 encoders from --rm_gin.

Part 1: lsc_align.align.ppo.ppo_iteration on random-init world-sized models (configs/models/
t5_world.gin for both reward models, policy_world.gin for π and π0), objective configs/
objectives/combined_lsc_sum.gin; the iteration itself fills setup.timings (rollout_s, scoring_s,
update_s; update_s includes the GAE pass). Iteration 1 compiles everything and is reported apart.

Part 2: scoring_step.score (jitted) on the same rollout with combined_raw_sum.gin and with
combined_lsc_sum.gin. The two are timed alternately (raw, lsc, raw, lsc, ...) so machine load
drifts hit both alike; the overhead is median(lsc) / median(raw) − 1 and the median of the
per-pair ratios. XLA's FLOP counts of the two compiled steps are reported too (noise-free).

Part 3 (a bound, since timing noise exceeds a few percent on a shared machine): the transform +
aggregation (rewards.aggregate.utility) alone in a jitted function, per call (dispatch included,
an upper bound on its in-step cost) and per application inside a jitted fori_loop of dependent
applications (the in-graph cost), against the two reward-model forward passes alone.
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Any

import gin
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from lsc_align.models import policy, reward_model, sampling
from lsc_align.rewards import aggregate, objectives
from lsc_align.align import ppo, ppo_step, scoring_step


def load_objective(gin_file: str) -> objectives.Objective:
  """The Objective that configs/<gin_file> binds for make_objective."""
  gin.clear_config()
  gin.parse_config_file(os.path.join(common.CONFIG_DIR, gin_file))
  objective = objectives.make_objective()
  gin.clear_config()
  return objective


def ratio_stats(a: np.ndarray, b: np.ndarray, seed: int) -> dict[str, Any]:
  """b/a − 1 from medians, the paired ratios' quartiles, and a bootstrap 95% CI of the former."""
  rng = np.random.default_rng(seed)
  boots = []
  for _ in range(2000):
    ia, ib = rng.integers(0, len(a), len(a)), rng.integers(0, len(b), len(b))
    boots.append(np.median(b[ib]) / np.median(a[ia]) - 1.0)
  paired = b / a - 1.0
  return {'overhead_of_medians': float(np.median(b) / np.median(a) - 1.0),
          'overhead_of_medians_ci95_bootstrap': np.percentile(boots, [2.5, 97.5]).tolist(),
          'paired_overhead_median': float(np.median(paired)),
          'paired_overhead_q1_q3': np.percentile(paired, [25, 75]).tolist()}


def interleaved_times(fns: dict[str, Any], *, warmup: int, repeats: int,
                      calls_per_repeat: int) -> dict[str, np.ndarray]:
  """Seconds per call of each fn, the fns' repeats interleaved (a, b, a, b, ...)."""
  for fn in fns.values():
    common.time_repeats(fn, warmup=warmup, repeats=0)
  times: dict[str, list[float]] = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      times[name] += common.time_repeats(fn, warmup=0, repeats=1,
                                         calls_per_repeat=calls_per_repeat)
  return {name: np.asarray(t) for name, t in times.items()}


def iteration_benchmark(setup: ppo.PPOSetup, state: ppo.PPOState,
                        iterations: int) -> tuple[dict[str, Any], ppo.PPOState]:
  """Runs 1 + `iterations` PPO iterations; the first (compiles) is reported apart."""
  phases = ('rollout_s', 'scoring_s', 'update_s')
  history, lengths = [], []
  for step in range(1, iterations + 2):
    state, metrics = ppo.ppo_iteration(setup, state, setup.batch(step))
    timings = dict(setup.timings)
    timings['total_s'] = sum(timings[p] for p in phases)
    history.append(timings)
    lengths.append(float(metrics['response_length']))
  first, rest = history[0], history[1:]
  summary = {name: common.summarize([h[name] for h in rest]) for name in (*phases, 'total_s')}
  total = summary['total_s']['median']
  share = {p: float(np.median([h[p] / h['total_s'] for h in rest])) for p in phases}
  return {'first_iteration_with_compile': first, 'timed_iterations': len(rest),
          'seconds': summary, 'median_share_of_iteration': share,
          'iterations_per_s': 1.0 / total,
          'mean_response_length': float(np.mean(lengths[1:])),
          'per_iteration': rest}, state


def make_setup(rm_config: Any, policy_config: policy.PolicyConfig,
               objective: objectives.Objective, *, batch_size: int, prompt_length: int,
               response_length: int, epochs: int, num_minibatches: int,
               seed: int = 0, pi0: Any = None,
               **hp_overrides: Any) -> tuple[ppo.PPOSetup, ppo.PPOState]:
  """Random-init reward models (one per property), π0 = π (random-init unless `pi0` is given,
  e.g. a loaded checkpoint's params), 4 batches of random prompts."""
  num_props = len(objective.properties)
  keys = jax.random.split(jax.random.key(seed), num_props + 1)
  dummy = jnp.ones((1, 8), jnp.int32)
  reward_params = tuple(jax.jit(reward_model.RewardModel(rm_config).init)(k, dummy)['params']
                        for k in keys[:num_props])
  if pi0 is None:
    pi0 = jax.jit(policy.init_params, static_argnums=0)(policy_config, keys[-1])
  rng = np.random.default_rng(seed)
  num_prompts = 4 * batch_size
  prompts = common.random_prompts(rng, num_prompts, prompt_length, policy_config.vocab_size)
  table_refs = rng.normal(size=(num_prompts, num_props)).astype(np.float32)
  hp = ppo_step.PPOHyperparams(max_response_length=response_length, epochs=epochs,
                               num_minibatches=num_minibatches, warmup_steps=10, **hp_overrides)
  setup = ppo.PPOSetup(scorer=scoring_step.Scorer(objective, (rm_config,) * num_props,
                                              policy_config),
                       hp=hp, kl_coef=0.05, reward_params=reward_params, ref_policy_params=pi0,
                       prompt_ids=prompts, table_refs=table_refs, batch_size=batch_size,
                       seed=seed)
  return setup, ppo.init_state(pi0, hp, seed=seed)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rm_gin', default='models/t5_world.gin')
  parser.add_argument('--policy_gin', default='models/policy_world.gin')
  parser.add_argument('--batch_size', type=int, default=32, help='prompts per iteration')
  parser.add_argument('--prompt_length', type=int, default=32)
  parser.add_argument('--response_length', type=int, default=48)
  parser.add_argument('--epochs', type=int, default=1)
  parser.add_argument('--num_minibatches', type=int, default=1)
  parser.add_argument('--iterations', type=int, default=8, help='timed, after 1 compiling one')
  parser.add_argument('--score_repeats', type=int, default=40, help='per objective, interleaved')
  parser.add_argument('--calls_per_repeat', type=int, default=3)
  parser.add_argument('--loop_applications', type=int, default=1000)
  parser.add_argument('--label', default='world')
  parser.add_argument('--checkpoint', default=None,
                      help='a Hugging Face decoder checkpoint directory for π and π0')
  common.add_common_flags(parser, warmup=3, repeats=40)
  args = parser.parse_args()

  machine = common.machine_info()
  run_share = common.CpuShare()
  rm_config, policy_config = common.model_configs(args.rm_gin, args.policy_gin, args.gin_param)
  pi0, load_s = None, None
  if args.checkpoint:
    from lsc_align.models import pretrained  # pylint: disable=g-import-not-at-top
    start = time.perf_counter()
    loaded = pretrained.load(args.checkpoint)
    pi0 = jax.block_until_ready(loaded.params)
    load_s = time.perf_counter() - start
    policy_config = loaded.config
  raw_objective = load_objective('objectives/combined_raw_sum.gin')
  lsc_objective = load_objective('objectives/combined_lsc_sum.gin')
  num_props = len(lsc_objective.properties)
  assert raw_objective.properties == lsc_objective.properties

  # Part 1: the iteration.
  share = common.CpuShare()
  setup, state = make_setup(rm_config, policy_config, lsc_objective, batch_size=args.batch_size,
                            prompt_length=args.prompt_length,
                            response_length=args.response_length, epochs=args.epochs,
                            num_minibatches=args.num_minibatches, seed=args.seed, pi0=pi0)
  hp, reward_params, pi0 = setup.hp, setup.reward_params, setup.ref_policy_params
  iteration, state = iteration_benchmark(setup, state, args.iterations)
  iteration['cpu_share'] = share.report()

  # Part 2: the scoring step, raw sum vs LSC sum, on one rollout of the trained π.
  share = common.CpuShare()
  batch = {k: jnp.asarray(v) for k, v in setup.batch(1).items()}
  sample = sampling.sample(state.policy.params, policy_config, batch['prompt_ids'],
                           jax.random.key(args.seed + 7), max_response_length=args.response_length)
  score_args = (reward_params, pi0, (), batch['prompt_ids'], sample.response_ids, sample.logprobs,
                batch['table_refs'], jnp.float32(0.05))
  compiled, compile_s, flops, utilities = {}, {}, {}, {}
  for name, objective in (('raw_sum', raw_objective), ('lsc_sum', lsc_objective)):
    scorer = scoring_step.Scorer(objective, (rm_config,) * num_props, policy_config)
    jax.clear_caches()  # part 1 compiled the LSC scorer already; time a fresh compile of each
    compiled[name], compile_s[name] = common.compile_timed(scoring_step.score, scorer, *score_args)
    flops[name] = common.compiled_flops(compiled[name])
    utilities[name] = np.asarray(compiled[name](*score_args).utility)
  times = interleaved_times({n: (lambda c=c: c(*score_args)) for n, c in compiled.items()},
                            warmup=args.warmup, repeats=args.score_repeats,
                            calls_per_repeat=args.calls_per_repeat)
  scoring = {
      'objectives': {'raw_sum': raw_objective.to_dict(), 'lsc_sum': lsc_objective.to_dict()},
      'compile_s': compile_s, 'seconds': {n: common.summarize(t) for n, t in times.items()},
      'lsc_vs_raw': ratio_stats(times['raw_sum'], times['lsc_sum'], args.seed),
      'flops_xla': flops,
      'flops_relative_difference': (flops['lsc_sum'] / flops['raw_sum'] - 1.0
                                    if flops['raw_sum'] and flops['lsc_sum'] else None),
      'utility_means': {n: float(u.mean()) for n, u in utilities.items()},
      'cpu_share': share.report()}

  # Part 3: transform + aggregation alone vs the reward-model forward passes alone.
  share = common.CpuShare()
  rewards = jnp.asarray(compiled['lsc_sum'](*score_args).rewards)
  refs = batch['table_refs']
  n_loop = args.loop_applications
  parts: dict[str, Any] = {}

  def rm_forward(params, prompt_ids, response_ids):
    return scoring_step.reward_model_rewards((rm_config,) * num_props, params, prompt_ids,
                                         response_ids)

  fns = {'reward_model_forwards': (jax.jit(rm_forward),
                                   (reward_params, batch['prompt_ids'], sample.response_ids))}
  for name, objective in (('raw_sum', raw_objective), ('lsc_sum', lsc_objective)):
    fns[f'utility_{name}'] = (jax.jit(lambda r, x, o=objective: aggregate.utility(r, x, o)),
                              (rewards, refs))

    def looped(r, x, o=objective):
      # Each application feeds the next, so XLA cannot hoist or merge them.
      def body(_, carry):
        return carry + 1e-6 * aggregate.utility(r + carry[:, None], x, o)
      return jax.lax.fori_loop(0, n_loop, body, jnp.zeros(r.shape[:1], r.dtype))
    fns[f'utility_{name}_x{n_loop}_in_loop'] = (jax.jit(looped), (rewards, refs))
  # The same loop without the utility: what the loop itself costs.
  fns[f'empty_loop_x{n_loop}'] = (jax.jit(lambda r, x: jax.lax.fori_loop(
      0, n_loop, lambda _, c: c + 1e-6 * (r[:, 0] + c), jnp.zeros(r.shape[:1], r.dtype))),
                                  (rewards, refs))
  for name, (fn, fn_args) in fns.items():
    c, cs = common.compile_timed(fn, *fn_args)
    t = common.time_repeats(lambda c=c, a=fn_args: c(*a), warmup=args.warmup,
                            repeats=args.repeats, calls_per_repeat=args.calls_per_repeat)
    parts[name] = {'compile_s': cs, 'seconds': common.summarize(t), 'flops_xla':
                   common.compiled_flops(c)}
  rm_s = parts['reward_model_forwards']['seconds']['median']
  score_raw_s = scoring['seconds']['raw_sum']['median']
  empty = parts[f'empty_loop_x{n_loop}']['seconds']['median']
  bound = {}
  for name in ('raw_sum', 'lsc_sum'):
    per_call = parts[f'utility_{name}']['seconds']['median']
    in_graph = (parts[f'utility_{name}_x{n_loop}_in_loop']['seconds']['median'] - empty) / n_loop
    bound[name] = {'per_jitted_call_s': per_call, 'in_graph_per_application_s': in_graph,
                   'per_jitted_call_vs_rm_forwards': per_call / rm_s,
                   'in_graph_vs_rm_forwards': in_graph / rm_s,
                   'in_graph_vs_score_step_raw': in_graph / score_raw_s}
  bound['lsc_minus_raw_in_graph_vs_score_step_raw'] = (
      bound['lsc_sum']['in_graph_per_application_s']
      - bound['raw_sum']['in_graph_per_application_s']) / score_raw_s
  isolated = {'parts': parts, 'bound': bound, 'cpu_share': share.report()}

  common.emit({
      'benchmark': 'ppo_iteration', 'label': args.label, 'machine': machine,
      'config': {'rm_gin': args.rm_gin,
                 'policy_gin': None if args.checkpoint else args.policy_gin,
                 'checkpoint': args.checkpoint, 'checkpoint_load_s': load_s,
                 'gin_params': args.gin_param, 'reward_model': rm_config,
                 'policy': policy_config, 'num_reward_models': num_props,
                 'policy_params': common.count_params(pi0),
                 'reward_model_params_each': common.count_params(reward_params[0]),
                 'batch_size': args.batch_size, 'prompt_length': args.prompt_length,
                 'response_length': args.response_length, 'hp': hp,
                 'iterations': args.iterations, 'score_repeats': args.score_repeats,
                 'calls_per_repeat': args.calls_per_repeat, 'warmup': args.warmup,
                 'repeats': args.repeats, 'seed': args.seed},
      'iteration': iteration, 'scoring': scoring, 'transform_aggregate_alone': isolated,
      'cpu_share': run_share.report()})


if __name__ == '__main__':
  main()
