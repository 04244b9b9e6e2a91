"""The policy's transformer layers: RMSNorm, rotary positions, 2-D matmuls, causal self-attention
with an explicit KV cache, the gated SiLU MLP and the pre-norm decoder block.

Each layer takes the policy's `PolicyConfig` (lsc_align.models.policy) as `config`; parameter
names are those of the policy's tree (the layers are named where `PolicyLM` builds them). The KV
cache layout and the slot conventions are described in policy.py.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

LayerCache = tuple[jax.Array, jax.Array]  # (keys, values), each [B, heads, S, head_dim]


def kernel_init(*logical_axes: str | None) -> nn.initializers.Initializer:
  """fan_in-scaled truncated normal for 2-D kernels, annotated with logical axis names."""
  return nn.with_logical_partitioning(
      nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal'), logical_axes)


def apply_rotary(x_BxTxHxD: jax.Array, positions_BxT: jax.Array,
                 max_wavelength: float) -> jax.Array:
  """Rotary position embedding (Su et al. 2021): rotates feature pairs by position angles."""
  half = x_BxTxHxD.shape[-1] // 2
  inv_freq = max_wavelength ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles_BxTx1xK = (positions_BxT.astype(jnp.float32)[:, :, None, None] * inv_freq)
  sin, cos = jnp.sin(angles_BxTx1xK), jnp.cos(angles_BxTx1xK)
  x1, x2 = jnp.split(x_BxTxHxD.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x_BxTxHxD.dtype)


class RMSNorm(nn.Module):
  """Root-mean-square layer norm with a learned scale (no bias, no mean subtraction)."""
  dtype: Any = jnp.float32
  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param('scale', nn.with_logical_partitioning(nn.initializers.ones, ('norm',)),
                       (x.shape[-1],), jnp.float32)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
    return (normed * scale).astype(self.dtype)


def matmul_2d(x: jax.Array, kernel: jax.Array, num_contracting: int, dtype: Any,
              preferred_element_type: Any = None) -> jax.Array:
  """x[*lead, *in] @ kernel[*in, *out] as one 2-D matmul [prod lead, prod in] @ [prod in, prod out].

  XLA:CPU then folds the transposes of the backward pass's weight-gradient dots into the dot
  instead of materialising transposed (and recomputed) activations.
  """
  lead, inner = x.shape[:x.ndim - num_contracting], x.shape[x.ndim - num_contracting:]
  out = kernel.shape[num_contracting:]
  flat_x = x.astype(dtype).reshape(-1, int(np.prod(inner)))
  flat_kernel = kernel.astype(dtype).reshape(flat_x.shape[1], -1)
  y = jnp.dot(flat_x, flat_kernel, preferred_element_type=preferred_element_type)
  return y.reshape(lead + out)


class MultiAxisDense(nn.Module):
  """x[..., *in] @ kernel[*in, *features] without bias, for kernels with several axes per side.

  Not nn.DenseGeneral: it initialises a flattened 2-D kernel, to which a logical sharding
  constraint for the 3-D kernel cannot be applied under a mesh.
  """
  features: tuple[int, ...]
  num_contracting: int
  logical_axes: tuple[str | None, ...]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n_in = self.num_contracting
    init = nn.with_logical_partitioning(
        nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal',
                                         in_axis=tuple(range(n_in)),
                                         out_axis=tuple(range(n_in, n_in + len(self.features)))),
        self.logical_axes)
    kernel = self.param('kernel', init, x.shape[x.ndim - n_in:] + tuple(self.features),
                        jnp.float32)
    return matmul_2d(x, kernel, n_in, self.dtype)


# Position of a slot that holds nothing: beyond any query's position, so never visible.
EMPTY_SLOT = 2 ** 30


class CausalSelfAttention(nn.Module):
  """Multi-head causal self-attention with rotary positions and an optional explicit KV cache."""
  config: Any  # policy.PolicyConfig

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array, positions_BxT: jax.Array,
               layer_cache: LayerCache | None, cache_length: int | None,
               cache_slot: jax.Array | None = None, slot_positions_BxS: jax.Array | None = None,
               ) -> tuple[jax.Array, LayerCache | None]:
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    project = functools.partial(MultiAxisDense, (cfg.num_heads, cfg.head_dim), 1,
                                ('embed', 'heads', 'kv'), dtype)
    qkv_axes = ('batch', 'length', 'heads', 'kv')
    query = apply_rotary(project(name='query')(x_BxTxD), positions_BxT, cfg.rope_max_wavelength)
    key = apply_rotary(project(name='key')(x_BxTxD), positions_BxT, cfg.rope_max_wavelength)
    value = project(name='value')(x_BxTxD)
    query, key, value = (nn.with_logical_constraint(a, qkv_axes) for a in (query, key, value))
    scale = 1.0 / float(cfg.head_dim) ** 0.5

    if layer_cache is None:  # whole sequences: keys are this call's tokens
      visible_BxTxS = positions_BxT[:, None, :] <= positions_BxT[:, :, None]
      mixed_BxTxHxD = jax.nn.dot_product_attention(query, key, value, mask=visible_BxTxS[:, None],
                                                   scale=scale, implementation='xla')
      new_cache = None
      if cache_length is not None:  # prefill: slots 0..T-1 hold the tokens at positions 0..T-1
        pad = ((0, 0), (0, 0), (0, cache_length - key.shape[1]), (0, 0))
        new_cache = tuple(jnp.pad(jnp.swapaxes(a, 1, 2), pad) for a in (key, value))
    else:  # decode: one token per row
      if x_BxTxD.shape[1] != 1:
        raise ValueError(f'decode takes one token per row, got {x_BxTxD.shape[1]}')
      cache_keys, cache_values = layer_cache
      key_Bx1xHxD = jnp.swapaxes(key, 1, 2).astype(cache_keys.dtype)  # [B, heads, 1, head_dim]
      value_Bx1xHxD = jnp.swapaxes(value, 1, 2).astype(cache_values.dtype)
      slots_S = jnp.arange(cache_keys.shape[2])
      if cache_slot is None:  # row b's token goes to the slot of its position
        write_Bx1xSx1 = (slots_S[None, :] == positions_BxT)[:, None, :, None]  # [B,1]->[B,S]
        keys = jnp.where(write_Bx1xSx1, key_Bx1xHxD, cache_keys)
        values = jnp.where(write_Bx1xSx1, value_Bx1xHxD, cache_values)
        slot_positions_BxS = jnp.broadcast_to(slots_S, (keys.shape[0], slots_S.shape[0]))
      else:  # every row's token goes to one slot: an in-place update inside a loop
        start = (0, 0, cache_slot, 0)
        keys = jax.lax.dynamic_update_slice(cache_keys, key_Bx1xHxD, start)
        values = jax.lax.dynamic_update_slice(cache_values, value_Bx1xHxD, start)
      cache_axes = ('batch', 'heads', 'length', 'kv')
      keys, values = (nn.with_logical_constraint(a, cache_axes) for a in (keys, values))
      new_cache = (keys, values)
      visible_Bx1xS = slot_positions_BxS[:, None, :] <= positions_BxT[:, :, None]
      scores_BxHx1xS = jnp.einsum('bhtd,bhsd->bhts', jnp.swapaxes(query, 1, 2), keys,
                                  preferred_element_type=jnp.float32) * scale
      scores_BxHx1xS = jnp.where(visible_Bx1xS[:, None], scores_BxHx1xS,
                                 jnp.finfo(jnp.float32).min)
      probs_BxHx1xS = jax.nn.softmax(scores_BxHx1xS, axis=-1).astype(values.dtype)
      mixed_BxTxHxD = jnp.einsum('bhts,bhsd->bthd', probs_BxHx1xS, values)
    mixed_BxTxHxD = nn.with_logical_constraint(mixed_BxTxHxD, qkv_axes)
    out = MultiAxisDense((cfg.emb_dim,), 2, ('heads', 'kv', 'embed'), dtype,
                         name='out')(mixed_BxTxHxD)
    return out, new_cache


class GatedMlp(nn.Module):
  """SwiGLU feed-forward: wo(silu(wi_0 x) * wi_1 x)."""
  config: Any  # policy.PolicyConfig

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    dense = functools.partial(nn.DenseGeneral, features=cfg.mlp_dim, use_bias=False, dtype=dtype,
                              kernel_init=kernel_init('embed', 'mlp'))
    # Rows flattened to [B·T, D]: 2-D matmuls (see matmul_2d).
    x_NxD = x_BxTxD.reshape(-1, x_BxTxD.shape[-1])
    hidden_NxF = nn.silu(dense(name='wi_0')(x_NxD)) * dense(name='wi_1')(x_NxD)
    hidden_NxF = nn.with_logical_constraint(hidden_NxF, ('batch', 'mlp'))
    out_NxD = nn.DenseGeneral(features=cfg.emb_dim, use_bias=False, dtype=dtype,
                              kernel_init=kernel_init('mlp', 'embed'), name='wo')(hidden_NxF)
    return out_NxD.reshape(x_BxTxD.shape)


class DecoderBlock(nn.Module):
  """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""
  config: Any  # policy.PolicyConfig

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array, positions_BxT: jax.Array,
               layer_cache: LayerCache | None, cache_length: int | None,
               cache_slot: jax.Array | None = None, slot_positions_BxS: jax.Array | None = None,
               ) -> tuple[jax.Array, LayerCache | None]:
    dtype = jnp.dtype(self.config.dtype)
    attended, new_cache = CausalSelfAttention(self.config, name='attention')(
        RMSNorm(dtype, name='pre_attention_norm')(x_BxTxD), positions_BxT, layer_cache,
        cache_length, cache_slot, slot_positions_BxS)
    x_BxTxD = x_BxTxD + attended
    normed_BxTxD = RMSNorm(dtype, name='pre_mlp_norm')(x_BxTxD)
    x_BxTxD = x_BxTxD + GatedMlp(self.config, name='mlp')(normed_BxTxD)
    return nn.with_logical_constraint(x_BxTxD, ('batch', 'length', 'embed')), new_cache
