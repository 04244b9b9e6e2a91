"""Reward-model (BT) and SFT training throughput: steps/s, tokens/s, achieved FLOP/s and MFU.

    python -m benchmarks.train_throughput                          # world-sized models
    python -m benchmarks.train_throughput --gin_param 'T5EncoderConfig.emb_dim = 256' ...

The train steps are the trainers' own (reward_model_trainer.make_train_step, sft_trainer.
make_train_step), jitted as train_reward_model / train_sft jit them (state built by
trainer_utils.init_sharded_state on a 1-device ('data', 'model') mesh, state donated). The batch
is random token ids of the trainers' default shapes, placed once: data loading is not timed.

FLOPs per step come from XLA's cost analysis of the compiled step (forward, backward and the
AdamW update) when the backend reports it; 6·params·tokens is printed beside it for comparison
and used only as a fallback (`flops_source` says which). MFU = achieved FLOP/s (median step time)
/ the float32 matmul peak measured in this same process (common.matmul_peak, best repeat,
measured before, between and after the training benchmarks; the highest is used, and
`mfu_vs_lowest_peak` shows the figure against the lowest, since the machine's load varies).

    # A bigger model (world vocabulary, policy_small-like widths), smaller batches:
    python -m benchmarks.train_throughput --label world_x4 --rm_batch_size 8 --sft_batch_size 8 \
      --repeats 5 --steps_per_repeat 2 --warmup 1 \
      --gin_param 'T5EncoderConfig.emb_dim = 256' --gin_param 'T5EncoderConfig.head_dim = 64' \
      --gin_param 'T5EncoderConfig.mlp_dim = 1024' --gin_param 'T5EncoderConfig.num_layers = 4' \
      --gin_param 'PolicyConfig.emb_dim = 256' --gin_param 'PolicyConfig.head_dim = 64' \
      --gin_param 'PolicyConfig.mlp_dim = 1024' --gin_param 'PolicyConfig.num_layers = 4' \
      --gin_param 'PolicyConfig.value_hidden_dim = 256'
"""
from __future__ import annotations

import argparse
from typing import Any

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from lsc_align import partitioning
from lsc_align.models import policy, reward_model
from lsc_align.train import reward_model_trainer, sft_trainer, trainer_utils


def _throughput(step: Any, state: Any, batch: dict[str, jax.Array], *, tokens: int,
                nonpad_tokens: int, num_params: int, warmup: int, repeats: int,
                steps_per_repeat: int) -> dict[str, Any]:
  """Compiles `step` (jitted, state donated), then times repeats of `steps_per_repeat` steps."""
  compiled, compile_s = common.compile_timed(step, state, batch)
  holder = {'state': state}

  def one_step():
    holder['state'], metrics = compiled(holder['state'], batch)
    return metrics

  times = common.time_repeats(one_step, warmup=warmup, repeats=repeats,
                              calls_per_repeat=steps_per_repeat)
  seconds = common.summarize(times)
  xla_flops = common.compiled_flops(compiled)
  estimate = 6.0 * num_params * tokens
  flops = xla_flops if xla_flops is not None else estimate
  return {
      'num_params': num_params, 'tokens_per_step': tokens, 'nonpad_tokens_per_step': nonpad_tokens,
      'compile_s': compile_s, 'step_seconds': seconds,
      'steps_per_s': 1.0 / seconds['median'],
      'steps_per_s_range': [1.0 / seconds['max'], 1.0 / seconds['min']],
      'tokens_per_s': tokens / seconds['median'],
      'nonpad_tokens_per_s': nonpad_tokens / seconds['median'],
      'flops_per_step_xla': xla_flops, 'flops_per_step_6nt': estimate,
      'flops_source': 'xla_cost_analysis' if xla_flops is not None else '6*params*tokens',
      'achieved_flops_per_s': flops / seconds['median'],
      'achieved_flops_per_s_range': [flops / seconds['max'], flops / seconds['min']],
  }


def reward_model_benchmark(config: reward_model.RewardModelConfig, *, batch_size: int,
                           max_length: int, seed: int, **timing: Any) -> dict[str, Any]:
  """One BT update on `batch_size` pairs of packed length `max_length` (2·B·L tokens)."""
  mesh = partitioning.create_mesh((1, 1), devices=jax.devices()[:1])
  net = reward_model.RewardModel(config)
  tx, lr = trainer_utils.make_optimizer(1e-3, warmup_steps=100, total_steps=1000)
  dummy = jnp.ones((1, max_length), jnp.int32)
  boxed = jax.eval_shape(net.init, jax.random.key(0), dummy)['params']
  rng = np.random.default_rng(seed)
  vocab = config.encoder.vocab_size
  # Rows filled to between half and all of max_length, as packed x ++ y rows are.
  host = {side: common.random_prompts(rng, batch_size, max_length, vocab)
          for side in ('chosen', 'rejected')}
  with partitioning.activate(mesh):
    state, shardings = trainer_utils.init_sharded_state(
        lambda key: nn.unbox(net.init(key, dummy)['params']), boxed, tx, seed, mesh)
    batch = partitioning.shard_batch(host, mesh)
    step = jax.jit(reward_model_trainer.make_train_step(net, lr),
                   in_shardings=(shardings, partitioning.batch_sharding(mesh)),
                   out_shardings=(shardings, partitioning.replicated(mesh)), donate_argnums=(0,))
    result = _throughput(step, state, batch, tokens=2 * batch_size * max_length,
                         nonpad_tokens=int(sum((v > 0).sum() for v in host.values())),
                         num_params=trainer_utils.count_params(state.params), **timing)
  return {'config': {'model': config, 'batch_size_pairs': batch_size, 'max_length': max_length},
          **result}


def sft_benchmark(config: policy.PolicyConfig, *, batch_size: int, prompt_length: int,
                  response_length: int, seed: int, **timing: Any) -> dict[str, Any]:
  """One SFT update on `batch_size` (prompt, response) rows: B·(Lp + Lr) tokens per step."""
  mesh = partitioning.create_mesh((1, 1), devices=jax.devices()[:1])
  tx, lr = trainer_utils.make_optimizer(1e-3, warmup_steps=100, total_steps=2000,
                                        schedule='cosine')
  rng = np.random.default_rng(seed)
  host = {'prompt_ids': common.random_prompts(rng, batch_size, prompt_length, config.vocab_size),
          'response_ids': common.random_prompts(rng, batch_size, response_length,
                                                config.vocab_size, min_length=1)}
  with partitioning.activate(mesh):
    state, shardings = trainer_utils.init_sharded_state(
        lambda key: policy.init_params(config, key), policy.abstract_params(config), tx, seed,
        mesh)
    batch = partitioning.shard_batch(host, mesh)
    step = jax.jit(sft_trainer.make_train_step(config, lr),
                   in_shardings=(shardings, partitioning.batch_sharding(mesh)),
                   out_shardings=(shardings, partitioning.replicated(mesh)), donate_argnums=(0,))
    result = _throughput(step, state, batch, tokens=batch_size * (prompt_length + response_length),
                         nonpad_tokens=int(sum((v > 0).sum() for v in host.values())),
                         num_params=trainer_utils.count_params(state.params), **timing)
  result['response_target_tokens_per_step'] = int((host['response_ids'] > 0).sum())
  return {'config': {'model': config, 'batch_size': batch_size, 'prompt_length': prompt_length,
                     'response_length': response_length}, **result}


def _with_mfu(result: dict[str, Any], peaks: list[float]) -> dict[str, Any]:
  """MFU against the highest peak measured; also against the lowest (the most contended)."""
  peak = max(peaks)
  low, high = result['achieved_flops_per_s_range']
  return {**result, 'mfu': result['achieved_flops_per_s'] / peak,
          'mfu_range': [low / peak, high / peak],
          'mfu_vs_lowest_peak': result['achieved_flops_per_s'] / min(peaks)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rm_gin', default='models/t5_world.gin')
  parser.add_argument('--policy_gin', default='models/policy_world.gin')
  parser.add_argument('--which', choices=('both', 'rm', 'sft'), default='both')
  parser.add_argument('--rm_batch_size', type=int, default=32, help='pairs per step')
  parser.add_argument('--rm_max_length', type=int, default=80)
  parser.add_argument('--sft_batch_size', type=int, default=32)
  parser.add_argument('--prompt_length', type=int, default=32)
  parser.add_argument('--response_length', type=int, default=48)
  parser.add_argument('--steps_per_repeat', type=int, default=5)
  parser.add_argument('--label', default='world', help='name of this size in the output')
  common.add_common_flags(parser, warmup=3, repeats=15)
  args = parser.parse_args()

  machine = common.machine_info()
  rm_config, policy_config = common.model_configs(args.rm_gin, args.policy_gin, args.gin_param)
  timing = {'warmup': args.warmup, 'repeats': args.repeats,
            'steps_per_repeat': args.steps_per_repeat, 'seed': args.seed}
  run_share = common.CpuShare()
  # Peak before, between and after the two benchmarks: the machine's load changes over a run.
  peaks = [common.matmul_peak()['peak_flops_per_s']]
  results: dict[str, dict[str, Any]] = {}
  if args.which in ('both', 'rm'):
    share = common.CpuShare()
    results['reward_model'] = reward_model_benchmark(
        rm_config, batch_size=args.rm_batch_size, max_length=args.rm_max_length, **timing)
    results['reward_model']['cpu_share'] = share.report()
    peaks.append(common.matmul_peak()['peak_flops_per_s'])
  if args.which in ('both', 'sft'):
    share = common.CpuShare()
    results['sft'] = sft_benchmark(
        policy_config, batch_size=args.sft_batch_size, prompt_length=args.prompt_length,
        response_length=args.response_length, **timing)
    results['sft']['cpu_share'] = share.report()
    peaks.append(common.matmul_peak()['peak_flops_per_s'])
  peak = max(peaks)
  common.emit({
      'benchmark': 'train_throughput', 'label': args.label, 'machine': machine,
      'config': {'rm_gin': args.rm_gin, 'policy_gin': args.policy_gin,
                 'gin_params': args.gin_param, **timing,
                 'timing_note': 'step_seconds per step; each repeat = steps_per_repeat steps '
                                'then block_until_ready; same batch every step'},
      'matmul_peak_flops_per_s': peak, 'matmul_peaks_measured': peaks,
      'mfu_note': 'mfu = achieved (median step) / max of matmul_peaks_measured; '
                  'mfu_vs_lowest_peak uses the min instead',
      **{name: _with_mfu(r, peaks) for name, r in results.items()},
      'cpu_share': run_share.report(),
  })


if __name__ == '__main__':
  main()
