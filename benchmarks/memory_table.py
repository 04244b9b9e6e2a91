"""Bytes per device of a PPO run's stored state, for pretrained policies on TPU slices.

    python -m benchmarks.memory_table [--markdown]

For Qwen2.5-0.5B, Llama-3.2-1B, Gemma-2-2B and Llama-3.1-8B (their public config.json values,
below) the PolicyConfig is hf_families.policy_config's, the shapes policy.abstract_params',
and each array's per-device shard the NamedSharding that partitioning.logical_shardings gives
it on a ('data', 'model') mesh of (1, n) or (n, 1) devices (a dimension the axis does not divide
is replicated, as the rules do). Counted per device:
* policy: π's parameters without the value head, float32 (the PPO state's master weights);
* value head: its MLP, float32;
* π0: the frozen reference, float32 as ppo.init_state holds it, and bfloat16 as a cast copy;
* Adam: the PPO optimizer's state (ppo_step.make_optimizer: Adam's two moments, per parameter,
  value head included), in the shardings XLA gives tx.init's outputs from the placed params;
* gradients: one float32 copy of π's parameters, alive during each update;
* reward models: two T5-base encoder reward models (configs/models/t5_base.gin), float32.
Activations (KV cache, logits, the update's saved activations) are left out: they scale with
batch × length and are set by the run's batch. "fits" compares the sum with the chip's HBM.

Meshes are built over fake CPU devices (8 of them), so the shardings are the code's own.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from typing import Any

if 'jax' not in sys.modules:  # the meshes below need 8 devices; fake CPU ones will do
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                             + ' --xla_force_host_platform_device_count=8')
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
from flax import linen as nn

from benchmarks import common
from lsc_align import partitioning
from lsc_align.align import ppo_step
from lsc_align.models import hf_families, policy, reward_model

GIB = 2 ** 30
# Public config.json values (the keys hf_families reads).
MODELS: dict[str, dict[str, Any]] = {
    'Qwen2.5-0.5B': dict(
        model_type='qwen2', hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
        max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
        tie_word_embeddings=True, hidden_act='silu', use_sliding_window=False),
    'Llama-3.2-1B': dict(
        model_type='llama', hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
        max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500_000.0,
        rope_scaling={'rope_type': 'llama3', 'factor': 32.0, 'low_freq_factor': 1.0,
                      'high_freq_factor': 4.0, 'original_max_position_embeddings': 8192},
        tie_word_embeddings=True, hidden_act='silu'),
    'Gemma-2-2B': dict(
        model_type='gemma2', hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
        num_attention_heads=8, num_key_value_heads=4, head_dim=256, vocab_size=256000,
        max_position_embeddings=8192, rms_norm_eps=1e-6, rope_theta=10_000.0,
        query_pre_attn_scalar=256, sliding_window=4096, final_logit_softcapping=30.0,
        attn_logit_softcapping=50.0, hidden_activation='gelu_pytorch_tanh',
        tie_word_embeddings=True),
    'Llama-3.1-8B': dict(
        model_type='llama', hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
        max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500_000.0,
        rope_scaling={'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0,
                      'high_freq_factor': 4.0, 'original_max_position_embeddings': 8192},
        tie_word_embeddings=False, hidden_act='silu'),
}
# (chips, HBM bytes per chip)
SLICES = {'v4-8': (4, 32 * GIB), 'v5e-8': (8, 16 * GIB), 'v5p-8': (4, 95 * GIB)}


def per_device_bytes(abstract: Any, shardings: Any, dtype: Any = None) -> int:
  """Bytes of the largest device's shards of an abstract tree (leaves cast to `dtype` if set)."""
  total = 0
  for leaf, sharding in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)):
    itemsize = jnp.dtype(dtype or leaf.dtype).itemsize
    total += math.prod(sharding.shard_shape(leaf.shape)) * itemsize
  return total


def _dict_keys(path: tuple[Any, ...]) -> tuple[str, ...]:
  return tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))


def _with_param_shardings(opt_state: Any, param_shardings: Any) -> tuple[list[Any], list[Any]]:
  """(leaves, shardings) of an optimizer state whose moments are sharded like their params.

  ppo.init_state runs the optimizer's init eagerly on the placed params, and jnp.zeros_like
  keeps each param's sharding (check_moment_shardings runs it); counters are replicated.
  """
  by_path = {_dict_keys(p): s for p, s in
             jax.tree_util.tree_flatten_with_path(param_shardings)[0]}
  replicated = jax.sharding.NamedSharding(jax.tree.leaves(param_shardings)[0].mesh,
                                         jax.sharding.PartitionSpec())
  leaves, shardings = [], []
  for path, leaf in jax.tree_util.tree_flatten_with_path(opt_state)[0]:
    keys = _dict_keys(path)
    match = next((by_path[keys[i:]] for i in range(len(keys)) if keys[i:] in by_path), None)
    leaves.append(leaf)
    shardings.append(replicated if match is None or leaf.ndim == 0 else match)
  return leaves, shardings


def check_moment_shardings() -> None:
  """ppo.init_state on a small sharded policy: its Adam moments' shardings are the ones counted.

  Raises:
    AssertionError: the real optimizer state is sharded otherwise.
  """
  from lsc_align.align import ppo  # pylint: disable=g-import-not-at-top
  config = policy.PolicyConfig(vocab_size=64, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=64,
                               num_kv_heads=2)
  mesh = partitioning.create_mesh((1, 4), devices=jax.devices()[:4])
  boxed = policy.abstract_params(config)
  shardings = partitioning.logical_shardings(boxed, mesh)
  params = jax.jit(lambda k: policy.init_params(config, k), out_shardings=shardings)(
      jax.random.key(0))
  opt_state = ppo.init_state(params, ppo_step.PPOHyperparams(), 0).policy.opt_state
  leaves, counted = _with_param_shardings(opt_state, shardings)
  for leaf, sharding in zip(leaves, counted):
    if leaf.sharding.shard_shape(leaf.shape) != sharding.shard_shape(leaf.shape):
      raise AssertionError(f'an Adam moment of shape {leaf.shape} is sharded as '
                           f'{leaf.sharding.spec}, counted as {sharding.spec}')


def _split_value_head(tree: Any) -> tuple[Any, Any]:
  return ({k: v for k, v in tree.items() if k != 'value_head'}, tree['value_head'])


def policy_rows(config: policy.PolicyConfig, mesh: jax.sharding.Mesh) -> dict[str, int]:
  """Per-device bytes of π (value head apart), π0 (float32 and bfloat16), Adam and gradients."""
  boxed = policy.abstract_params(config)
  shardings = partitioning.logical_shardings(boxed, mesh)
  params = nn.unbox(boxed)
  lm, head = _split_value_head(params)
  lm_sh, head_sh = _split_value_head(shardings)
  opt_state = jax.eval_shape(ppo_step.make_optimizer(ppo_step.PPOHyperparams(), params).init,
                             params)
  return {'policy': per_device_bytes(lm, lm_sh), 'value_head': per_device_bytes(head, head_sh),
          'pi0_f32': per_device_bytes(lm, lm_sh),
          'pi0_bf16': per_device_bytes(lm, lm_sh, jnp.bfloat16),
          'adam': per_device_bytes(*_with_param_shardings(opt_state, shardings)),
          'gradients': per_device_bytes(params, shardings),
          'lm_params': sum(math.prod(x.shape) for x in jax.tree.leaves(lm))}


def reward_model_bytes(config: reward_model.RewardModelConfig, mesh: jax.sharding.Mesh) -> int:
  """Per-device bytes of one reward model's parameters."""
  boxed = jax.eval_shape(reward_model.RewardModel(config).init, jax.random.key(0),
                         jnp.ones((1, 8), jnp.int32))['params']
  return per_device_bytes(nn.unbox(boxed), partitioning.logical_shardings(boxed, mesh))


def table() -> list[dict[str, Any]]:
  """One row per (model, slice, mesh shape)."""
  rm_config, _ = common.model_configs('models/t5_base.gin', None)
  rows = []
  for name, hf in MODELS.items():
    config = hf_families.policy_config(hf, where=name)
    for slice_name, (chips, hbm) in SLICES.items():
      for shape in ((1, chips), (chips, 1)):
        mesh = partitioning.create_mesh(shape, devices=jax.devices()[:chips])
        row = {'model': name, 'slice': slice_name, 'mesh': shape, 'hbm': hbm,
               **policy_rows(config, mesh), 'reward_models': 2 * reward_model_bytes(rm_config,
                                                                                   mesh)}
        stored = row['policy'] + row['value_head'] + row['adam'] + row['reward_models']
        row['total_f32_pi0'] = stored + row['pi0_f32'] + row['gradients']
        row['total_bf16_pi0'] = stored + row['pi0_bf16'] + row['gradients']
        rows.append(row)
  return rows


def markdown(rows: list[dict[str, Any]]) -> str:
  """The table in GiB per device."""
  g = lambda b: f'{b / GIB:.2f}'
  lines = ['| model (LM params) | slice (HBM/chip) | mesh (data, model) | policy | value head | '
           'π0 f32 / bf16 | Adam (2 moments) | gradients | 2 × T5-base RM | total, π0 f32 | '
           'total, π0 bf16 | fits (π0 f32 / bf16) |',
           '|' + '---|' * 12]
  for r in rows:
    fits = '/'.join('yes' if r[k] <= r['hbm'] else 'no'
                    for k in ('total_f32_pi0', 'total_bf16_pi0'))
    lines.append(
        f'| {r["model"]} ({r["lm_params"] / 1e9:.2f}B) | {r["slice"]} ({r["hbm"] // GIB} GiB) | '
        f'{r["mesh"]} | {g(r["policy"])} | {g(r["value_head"])} | '
        f'{g(r["pi0_f32"])} / {g(r["pi0_bf16"])} | {g(r["adam"])} | {g(r["gradients"])} | '
        f'{g(r["reward_models"])} | {g(r["total_f32_pi0"])} | {g(r["total_bf16_pi0"])} | '
        f'{fits} |')
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--markdown', action='store_true', help='a table in GiB, not JSON')
  args = parser.parse_args()
  logging.getLogger(partitioning.__name__).setLevel(logging.ERROR)  # replicated-axis notes
  if len(jax.devices()) < 8:
    raise SystemExit(f'memory_table needs 8 devices, found {len(jax.devices())}: run it in a '
                     f'fresh process (it sets XLA_FLAGS itself)')
  check_moment_shardings()
  rows = table()
  if args.markdown:
    print(markdown(rows))
  else:
    common.emit({'benchmark': 'memory_table', 'rows': rows})


if __name__ == '__main__':
  main()
