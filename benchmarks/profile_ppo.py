"""Where a PPO iteration's time goes, op by op: sampling, scoring, the advantages pass, the update.

    python -m benchmarks.profile_ppo [--shapes small large] [--repeats 5]

At the peer comparison's shapes (`SHAPES`, as ../shared/peers/compare.py binds them: batch 64
prompts, 4 minibatches × 2 epochs, float32, random init), each piece of `ppo.ppo_iteration` is
compiled and timed on its own, on the rollout of one real iteration:
* `sample`: sampling.sample (KV cache); tokens/s = rows × generated tokens / seconds;
* `score`: scoring_step.score (two reward models, π0's log-probs, transform, aggregation, KL);
* `update`: what ppo_iteration does after scoring (the old log-prob / GAE pass and
  hp.epochs × hp.num_minibatches updates), called as the learner calls it.
For each: XLA's FLOP count (cost_analysis; the update's from one minibatch step × steps plus the
advantages pass, since XLA counts a loop body once), seconds per call (median of repeats),
achieved FLOP/s, and the top ops by time from a jax.profiler trace (benchmarks/hlo_profile.py).
The update's FLOP/s is set against an in-process jitted jnp.dot at the update's own largest matmul
shape (minibatch rows × sequence length, emb × mlp).
"""
from __future__ import annotations

import argparse
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common, hlo_profile
from benchmarks.ppo_iteration import load_objective, make_setup
from lsc_align.align import ppo, ppo_step, scoring_step
from lsc_align.models import sampling

SHAPES = {
    'small': dict(layers=2, d=128, vocab=512, prompt=16, response=24),
    'large': dict(layers=4, d=256, vocab=2048, prompt=32, response=48),
}


def shape_bindings(shape: dict[str, int], dtype: str = 'float32') -> list[str]:
  """gin bindings of a shape for the policy and the reward models' encoder (as compare.py)."""
  out = []
  for cfg in ('PolicyConfig', 'T5EncoderConfig'):
    out += [f'{cfg}.vocab_size={shape["vocab"]}', f'{cfg}.emb_dim={shape["d"]}',
            f'{cfg}.num_heads=4', f'{cfg}.head_dim={shape["d"] // 4}',
            f'{cfg}.mlp_dim={4 * shape["d"]}', f'{cfg}.num_layers={shape["layers"]}']
  return out + [f'PolicyConfig.value_hidden_dim={shape["d"]}', 'PolicyConfig.max_len=128',
                f"PolicyConfig.dtype='{dtype}'"]


def dot_peak(m: int, k: int, n: int, repeats: int) -> float:
  """Best FLOP/s of a jitted float32 [m, k] @ [k, n] in this process."""
  a = jax.random.normal(jax.random.key(0), (m, k), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (k, n), jnp.float32)
  compiled, _ = common.compile_timed(jax.jit(jnp.dot), a, b)
  times = common.time_repeats(lambda: compiled(a, b), warmup=3, repeats=repeats,
                              calls_per_repeat=10)
  return 2.0 * m * k * n / min(times)


def profile_piece(name: str, call: Callable[[], Any], parts: list[tuple[Callable[[], Any], Any]],
                  flops: float | None, repeats: int,
                  prepare: Callable[[], Any] | None = None) -> dict[str, Any]:
  """Times `call` (after `prepare`, untimed, if given); profiles each (fn, compiled programs) of
  `parts` op by op, each in its own trace (op names repeat across programs)."""
  times = []
  for _ in range(repeats + 1):
    if prepare:
      prepare()
    times += common.time_repeats(call, warmup=0, repeats=1)
  seconds = common.summarize(times[1:])  # the first call warms caches and allocators
  ops, category, top = 0.0, {}, []
  for fn, programs in parts:
    index = hlo_profile.HloIndex(c.as_text() for c in programs)
    if prepare:
      prepare()
    times_op = hlo_profile.op_times(fn, index, calls=1)
    ops += sum(times_op.values())
    for k, v in hlo_profile.by_category(times_op, index).items():
      category[k] = category.get(k, 0.0) + v
    top += hlo_profile.top_ops(times_op, index)
  for op in top:
    op['share_of_op_time'] = op['seconds'] / ops
  median = seconds['median']
  return {'piece': name, 'seconds': seconds, 'flops': flops,
          'gflops_per_s': flops / median / 1e9 if flops else None,
          'op_thread_seconds': ops,
          'by_category': dict(sorted(category.items(), key=lambda kv: -kv[1])),
          'top_ops': sorted(top, key=lambda op: -op['seconds'])[:12]}


def profile_shape(label: str, shape: dict[str, int], repeats: int, dtype: str,
                  seed: int) -> dict[str, Any]:
  rm_config, policy_config = common.model_configs('models/t5_world.gin',
                                                  'models/policy_world.gin',
                                                  shape_bindings(shape, dtype))
  objective = load_objective('objectives/combined_lsc_sum.gin')
  setup, state = make_setup(rm_config, policy_config, objective, batch_size=64,
                            prompt_length=shape['prompt'], response_length=shape['response'],
                            epochs=2, num_minibatches=4, seed=seed)
  hp, config = setup.hp, policy_config
  state, _ = ppo.ppo_iteration(setup, state, setup.batch(1))  # compiles everything once
  batch = {k: jnp.asarray(v) for k, v in setup.batch(2).items()}
  params = state.policy.params
  key = jax.random.key(seed + 3)
  out: dict[str, Any] = {'label': label, 'shape': shape, 'dtype': dtype,
                         'policy_params': common.count_params(params),
                         'reward_model_params_each': common.count_params(setup.reward_params[0])}

  sample_kw = dict(max_response_length=hp.max_response_length, temperature=hp.temperature)
  sample_c = sampling.sample.lower(params, config, batch['prompt_ids'], key, **sample_kw).compile()
  sample = sample_c(params, batch['prompt_ids'], key, temperature=hp.temperature)
  generated = float(jnp.sum(sample.response_mask))
  call = lambda: sample_c(params, batch['prompt_ids'], key, temperature=hp.temperature)
  piece = profile_piece('sample', call, [(call, [sample_c])], None, repeats)
  piece['generated_tokens'] = generated
  piece['tokens_per_s'] = generated / piece['seconds']['median']
  out['sample'] = piece

  score_args = (setup.reward_params, setup.ref_policy_params, setup.gaussian_params,
                batch['prompt_ids'], sample.response_ids, sample.logprobs, batch['table_refs'],
                jnp.float32(setup.kl_coef))
  score_c = scoring_step.score.lower(setup.scorer, *score_args).compile()
  call = lambda: score_c(*score_args)
  out['score'] = profile_piece('score', call, [(call, [score_c])], common.compiled_flops(score_c),
                               repeats)
  scores = score_c(*score_args)

  adv_args = (params, batch['prompt_ids'], sample.response_ids, scores.token_rewards)
  adv_c = ppo_step.advantages_step.lower(config, hp, *adv_args).compile()
  rollout = adv_c(*adv_args)
  mb = 64 // hp.num_minibatches
  minibatch = jax.tree.map(lambda x: x[:mb], rollout)
  step_c = ppo_step.update_step.lower(state.policy, config, hp, minibatch).compile()
  steps = hp.epochs * hp.num_minibatches
  flops = (common.compiled_flops(step_c) or 0.0) * steps + (common.compiled_flops(adv_c) or 0.0)
  programs = [step_c] + [f.lower(state.policy, config, hp, rollout, key).compile()
                         for f in _fused_update_programs()]
  holder = {}

  def prepare():  # a fresh copy of the train state: the update donates it
    holder['train'] = jax.block_until_ready(jax.tree.map(jnp.copy, state.policy))

  def updates(r=rollout):
    train, stats = ppo.minibatch_updates(holder.pop('train'), config, hp, r, key)
    return train.params, stats

  def update():  # as ppo_iteration runs it
    return updates(ppo_step.advantages_step(config, hp, *adv_args))
  piece = profile_piece('update', update, [(lambda: adv_c(*adv_args), [adv_c]),
                                           (updates, programs)], flops, repeats, prepare)
  rows = mb * (shape['prompt'] + shape['response'])
  peak = dot_peak(rows, shape['d'], 4 * shape['d'], repeats=max(repeats, 5))
  piece['dot_peak'] = {'shape': [rows, shape['d'], 4 * shape['d']], 'flops_per_s': peak}
  piece['share_of_dot_peak'] = piece['gflops_per_s'] * 1e9 / peak
  out['update'] = piece
  out['iteration_s_sum_of_medians'] = sum(out[p]['seconds']['median']
                                          for p in ('sample', 'score', 'update'))
  return out


def _fused_update_programs() -> list[Any]:
  """The one-program update, where this version of ppo_step has one (for op names)."""
  fused = getattr(ppo_step, 'update_epochs', None)
  return [] if fused is None else [fused]


def print_summary(result: dict[str, Any]) -> None:
  print(f"== {result['label']} ({result['dtype']}): policy {result['policy_params']:,} params",
        flush=True)
  for p in ('sample', 'score', 'update'):
    piece = result[p]
    extra = (f", {piece['tokens_per_s']:,.0f} tokens/s" if 'tokens_per_s' in piece else '')
    if piece.get('gflops_per_s'):
      extra += f", {piece['gflops_per_s']:.1f} GFLOP/s"
    if 'share_of_dot_peak' in piece:
      extra += (f" = {100 * piece['share_of_dot_peak']:.0f}% of dot peak "
                f"{piece['dot_peak']['flops_per_s'] / 1e9:.1f}")
    print(f"{p}: {1e3 * piece['seconds']['median']:.1f} ms{extra}; op thread-time "
          f"{1e3 * piece['op_thread_seconds']:.1f} ms: " + ', '.join(
              f'{k} {1e3 * v:.1f}' for k, v in piece['by_category'].items()))
    for op in piece['top_ops'][:10]:
      print(f"   {1e3 * op['seconds']:7.2f} ms {100 * op['share_of_op_time']:5.1f}%  {op['what']}")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--shapes', nargs='+', default=list(SHAPES), choices=list(SHAPES))
  parser.add_argument('--dtype', default='float32', help="PolicyConfig.dtype ('bfloat16')")
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--label', default='profile')
  args = parser.parse_args()
  machine = common.machine_info()
  share = common.CpuShare()
  results = {}
  for name in args.shapes:
    results[name] = profile_shape(name, SHAPES[name], args.repeats, args.dtype, args.seed)
    print_summary(results[name])
  common.emit({'benchmark': 'profile_ppo', 'label': args.label, 'machine': machine,
               'results': results, 'cpu_share': share.report()})


if __name__ == '__main__':
  main()
