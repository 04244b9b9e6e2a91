"""Sampling throughput of the policy with the KV cache (sampling.sample) and without it
(sampling.sample_without_cache): same params, same prompts, same key, several response lengths.

    python -m benchmarks.sampling [--batch_size 32] [--response_lengths 32 64]

tokens/s = batch_size · response_length / seconds per call. EOS is set to an id outside the
vocabulary (it is never drawn), so both samplers generate exactly response_length tokens per
row and the two do the same amount of useful work; the cached sampler would otherwise stop early
once every row has ended. The first call per shape is the compile, timed apart.
"""
from __future__ import annotations

import argparse
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from lsc_align.models import policy, sampling


def bench_sampler(fn: Any, params: Any, config: policy.PolicyConfig, prompts: jax.Array,
                  key: jax.Array, response_length: int, *, warmup: int,
                  repeats: int) -> tuple[dict[str, Any], Any]:
  kwargs = {'max_response_length': response_length, 'eos_id': config.vocab_size}
  compiled, compile_s = common.compile_timed(fn, params, config, prompts, key, **kwargs)
  # The compiled executable takes only the traced arguments (statics are baked in).
  call = lambda: compiled(params, prompts, key)
  out = call()
  times = common.time_repeats(call, warmup=warmup, repeats=repeats)
  seconds = common.summarize(times)
  tokens = prompts.shape[0] * response_length
  return {'compile_s': compile_s, 'call_seconds': seconds, 'tokens_per_call': tokens,
          'tokens_per_s': tokens / seconds['median'],
          'tokens_per_s_range': [tokens / seconds['max'], tokens / seconds['min']]}, out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--policy_gin', default='models/policy_world.gin')
  parser.add_argument('--batch_size', type=int, default=32)
  parser.add_argument('--prompt_length', type=int, default=32,
                      help='padded prompt width; real lengths drawn in [L/2, L]')
  parser.add_argument('--response_lengths', type=int, nargs='+', default=[32, 64])
  parser.add_argument('--label', default='world')
  common.add_common_flags(parser, warmup=2, repeats=9)
  args = parser.parse_args()

  machine = common.machine_info()
  share = common.CpuShare()
  _, config = common.model_configs(None, args.policy_gin, args.gin_param)
  params = jax.jit(policy.init_params, static_argnums=0)(config, jax.random.key(args.seed))
  prompts = jnp.asarray(common.random_prompts(np.random.default_rng(args.seed), args.batch_size,
                                              args.prompt_length, config.vocab_size))
  key = jax.random.key(args.seed + 1)
  results = {}
  for length in args.response_lengths:
    cached, out_cached = bench_sampler(sampling.sample, params, config, prompts, key, length,
                                       warmup=args.warmup, repeats=args.repeats)
    uncached, out_uncached = bench_sampler(sampling.sample_without_cache, params, config,
                                           prompts, key, length, warmup=args.warmup,
                                           repeats=args.repeats)
    same = bool(np.array_equal(np.asarray(out_cached.response_ids),
                               np.asarray(out_uncached.response_ids)))
    results[str(length)] = {
        'kv_cache': cached, 'no_cache': uncached,
        'speedup_median': uncached['call_seconds']['median'] / cached['call_seconds']['median'],
        'same_tokens': same}
  common.emit({
      'benchmark': 'sampling', 'label': args.label, 'machine': machine,
      'config': {'policy_gin': args.policy_gin, 'gin_params': args.gin_param, 'model': config,
                 'num_params': common.count_params(params), 'batch_size': args.batch_size,
                 'prompt_length': args.prompt_length,
                 'prompt_real_lengths': np.asarray((prompts > 0).sum(1)).tolist(),
                 'response_lengths': args.response_lengths, 'temperature': 1.0,
                 'eos_id': config.vocab_size, 'warmup': args.warmup, 'repeats': args.repeats},
      'results': results, 'cpu_share': share.report()})


if __name__ == '__main__':
  main()
