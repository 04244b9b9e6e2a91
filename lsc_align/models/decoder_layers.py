"""The policy's transformer layers: RMSNorm, rotary positions, 2-D matmuls, causal self-attention
with an explicit KV cache, the gated MLP and the pre-norm decoder block.

What varies between decoder families (grouped-query attention, biases, q/k norms, (1 + w) norm
scales, sandwich norms, GELU, soft-capping, sliding windows, rope bases and scaling) is read from
the config; its defaults are the world policy's architecture.

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


def rotary_inverse_frequencies(head_dim: int, max_wavelength: float, scaling: str = 'none',
                               factor: float = 1.0, low_freq_factor: float = 1.0,
                               high_freq_factor: float = 4.0,
                               original_max_len: int = 8192) -> jax.Array:
  """Angles per position of the head_dim / 2 feature pairs, float32 [head_dim / 2].

  scaling 'linear' divides every frequency by `factor` (positions interpolated); 'llama3'
  divides the low frequencies (wavelength above original_max_len / low_freq_factor) by `factor`,
  keeps the high ones (wavelength below original_max_len / high_freq_factor) and interpolates
  smoothly in between (Llama 3.1's long-context recipe).
  """
  half = head_dim // 2
  inv_freq = max_wavelength ** (-jnp.arange(half, dtype=jnp.float32) / half)
  if scaling == 'linear':
    inv_freq = inv_freq / factor
  elif scaling == 'llama3':
    wavelength = 2 * np.pi / inv_freq
    low_freq_wavelength = original_max_len / low_freq_factor
    high_freq_wavelength = original_max_len / high_freq_factor
    scaled = jnp.where(wavelength > low_freq_wavelength, inv_freq / factor, inv_freq)
    smooth = (original_max_len / wavelength - low_freq_factor) / (high_freq_factor
                                                                 - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelength >= high_freq_wavelength) & (wavelength <= low_freq_wavelength)
    inv_freq = jnp.where(medium, smoothed, scaled)
  elif scaling != 'none':
    raise ValueError(f'rotary scaling {scaling!r} is not one of none, linear, llama3')
  return inv_freq


def apply_rotary(x_BxTxHxD: jax.Array, positions_BxT: jax.Array,
                 inv_freq_K: jax.Array | float) -> jax.Array:
  """Rotary position embedding (Su et al. 2021): rotates feature pairs by position angles.

  The pairs are (x[k], x[k + D/2]) (split halves, the layout of Hugging Face's rotate_half).
  `inv_freq_K` is rotary_inverse_frequencies' output, or a max wavelength (unscaled).
  """
  if not isinstance(inv_freq_K, jax.Array):
    inv_freq_K = rotary_inverse_frequencies(x_BxTxHxD.shape[-1], inv_freq_K)
  angles_BxTx1xK = (positions_BxT.astype(jnp.float32)[:, :, None, None] * inv_freq_K)
  sin, cos = jnp.sin(angles_BxTx1xK), jnp.cos(angles_BxTx1xK)
  x1, x2 = jnp.split(x_BxTxHxD.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x_BxTxHxD.dtype)


class RMSNorm(nn.Module):
  """Root-mean-square layer norm with a learned scale (no bias, no mean subtraction).

  scale_plus_one multiplies by (1 + scale), scale starting at 0 (Gemma's parametrisation).
  """
  dtype: Any = jnp.float32
  epsilon: float = 1e-6
  scale_plus_one: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    init = nn.initializers.zeros if self.scale_plus_one else nn.initializers.ones
    scale = self.param('scale', nn.with_logical_partitioning(init, ('norm',)),
                       (x.shape[-1],), jnp.float32)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
    if self.scale_plus_one:
      scale = 1.0 + scale.astype(jnp.float32)
    return (normed * scale).astype(self.dtype)


def config_norm(config: Any, name: str) -> RMSNorm:
  """An RMSNorm with the config's epsilon and scaling, in its compute dtype."""
  return RMSNorm(jnp.dtype(config.dtype), config.norm_epsilon, config.norm_scale_plus_one,
                 name=name)


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
  use_bias: bool = False

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
    y = matmul_2d(x, kernel, n_in, self.dtype)
    if self.use_bias:
      bias = self.param('bias', nn.with_logical_partitioning(
          nn.initializers.zeros, self.logical_axes[n_in:]), tuple(self.features), jnp.float32)
      y = y + bias.astype(self.dtype)
    return y


# Position of a slot that holds nothing: beyond any query's position, so never visible.
EMPTY_SLOT = 2 ** 30


def layer_inverse_frequencies(config: Any, layer_index: int) -> jax.Array:
  """The rotary frequencies of one layer: a sliding-window layer uses the local base (unscaled)
  when the config has one, every other layer the global base with the config's scaling."""
  if (config.layer_window(layer_index) is not None
      and config.local_rope_max_wavelength is not None):
    return rotary_inverse_frequencies(config.head_dim, config.local_rope_max_wavelength)
  return rotary_inverse_frequencies(
      config.head_dim, config.rope_max_wavelength, config.rope_scaling, config.rope_scaling_factor,
      config.rope_low_freq_factor, config.rope_high_freq_factor, config.rope_original_max_len)


def attend(query_BxTxHxD: jax.Array, keys_BxKxSxD: jax.Array, values_BxKxSxD: jax.Array,
           visible_BxTxS: jax.Array, scale: float, softcap: float | None) -> jax.Array:
  """softmax(q·k · scale, capped, over visible slots) · v for H query heads on K <= H kv heads.

  Query head h reads kv head h // (H / K) (grouped-query attention); the G = H / K query heads of
  a group are stacked as extra query rows, so one [G·T, S] score matrix per kv head.
  Returns [B, T, H, D].
  """
  batch, length, heads, head_dim = query_BxTxHxD.shape
  kv_heads = keys_BxKxSxD.shape[1]
  group = heads // kv_heads
  query_BxKxGTxD = query_BxTxHxD.reshape(batch, length, kv_heads, group, head_dim).transpose(
      0, 2, 3, 1, 4).reshape(batch, kv_heads, group * length, head_dim)
  scores_BxKxGTxS = jnp.einsum('bhtd,bhsd->bhts', query_BxKxGTxD, keys_BxKxSxD,
                               preferred_element_type=jnp.float32) * scale
  if softcap is not None:
    scores_BxKxGTxS = jnp.tanh(scores_BxKxGTxS / softcap) * softcap
  visible_Bx1xGTxS = jnp.broadcast_to(
      visible_BxTxS[:, None, None], (batch, 1, group) + visible_BxTxS.shape[1:]).reshape(
          batch, 1, group * length, -1)
  scores_BxKxGTxS = jnp.where(visible_Bx1xGTxS, scores_BxKxGTxS, jnp.finfo(jnp.float32).min)
  probs_BxKxGTxS = jax.nn.softmax(scores_BxKxGTxS, axis=-1).astype(values_BxKxSxD.dtype)
  mixed_BxKxGTxD = jnp.einsum('bhts,bhsd->bhtd', probs_BxKxGTxS, values_BxKxSxD)
  return mixed_BxKxGTxD.reshape(batch, kv_heads, group, length, head_dim).transpose(
      0, 3, 1, 2, 4).reshape(batch, length, heads, head_dim)


def visible_slots(slot_positions_BxS: jax.Array, positions_BxT: jax.Array,
                  window: int | None) -> jax.Array:
  """[B, T, S]: slot s is visible from query t if its position is at most t's (causal) and,
  with a sliding window, fewer than `window` positions back (the query's own included)."""
  visible_BxTxS = slot_positions_BxS[:, None, :] <= positions_BxT[:, :, None]
  if window is not None:
    visible_BxTxS &= slot_positions_BxS[:, None, :] > positions_BxT[:, :, None] - window
  return visible_BxTxS


class CausalSelfAttention(nn.Module):
  """Causal self-attention with rotary positions and an optional explicit KV cache.

  Grouped-query (num_kv_heads kv heads; the cache holds those only), optional q/k/v and output
  biases, RMSNorm of each query and key head before the rotation, soft-capped scores and a
  sliding window, as the config and `layer_index` (its layer type) say.
  """
  config: Any  # policy.PolicyConfig
  layer_index: int = 0

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array, positions_BxT: jax.Array,
               layer_cache: LayerCache | None, cache_length: int | None,
               cache_slot: jax.Array | None = None, slot_positions_BxS: jax.Array | None = None,
               ) -> tuple[jax.Array, LayerCache | None]:
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    project = functools.partial(MultiAxisDense, num_contracting=1,
                                logical_axes=('embed', 'heads', 'kv'), dtype=dtype,
                                use_bias=cfg.qkv_bias)
    qkv_axes = ('batch', 'length', 'heads', 'kv')
    query = project((cfg.num_heads, cfg.head_dim), name='query')(x_BxTxD)
    key = project((cfg.kv_heads, cfg.head_dim), name='key')(x_BxTxD)
    value = project((cfg.kv_heads, cfg.head_dim), name='value')(x_BxTxD)
    if cfg.qk_norm:
      query = config_norm(cfg, 'query_norm')(query)
      key = config_norm(cfg, 'key_norm')(key)
    inv_freq = layer_inverse_frequencies(cfg, self.layer_index)
    query = apply_rotary(query, positions_BxT, inv_freq)
    key = apply_rotary(key, positions_BxT, inv_freq)
    query, key, value = (nn.with_logical_constraint(a, qkv_axes) for a in (query, key, value))
    scale = cfg.attention_scale
    window = cfg.layer_window(self.layer_index)

    if layer_cache is None:  # whole sequences: keys are this call's tokens
      visible_BxTxS = visible_slots(positions_BxT, positions_BxT, window)
      if cfg.attn_logit_softcap is None:
        mixed_BxTxHxD = jax.nn.dot_product_attention(
            query, key, value, mask=visible_BxTxS[:, None], scale=scale, implementation='xla')
      else:
        mixed_BxTxHxD = attend(query, jnp.swapaxes(key, 1, 2), jnp.swapaxes(value, 1, 2),
                               visible_BxTxS, scale, cfg.attn_logit_softcap)
      new_cache = None
      if cache_length is not None:  # prefill: slots 0..T-1 hold the tokens at positions 0..T-1
        pad = ((0, 0), (0, 0), (0, cache_length - key.shape[1]), (0, 0))
        new_cache = tuple(jnp.pad(jnp.swapaxes(a, 1, 2), pad) for a in (key, value))
    else:  # decode: one token per row
      if x_BxTxD.shape[1] != 1:
        raise ValueError(f'decode takes one token per row, got {x_BxTxD.shape[1]}')
      cache_keys, cache_values = layer_cache
      key_Bx1xHxD = jnp.swapaxes(key, 1, 2).astype(cache_keys.dtype)  # [B, kv heads, 1, head_dim]
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
      mixed_BxTxHxD = attend(query, keys, values,
                             visible_slots(slot_positions_BxS, positions_BxT, window), scale,
                             cfg.attn_logit_softcap)
    mixed_BxTxHxD = nn.with_logical_constraint(mixed_BxTxHxD, qkv_axes)
    out = MultiAxisDense((cfg.emb_dim,), 2, ('heads', 'kv', 'embed'), dtype, cfg.out_bias,
                         name='out')(mixed_BxTxHxD)
    return out, new_cache


_ACTIVATIONS = {'silu': nn.silu, 'gelu_tanh': functools.partial(nn.gelu, approximate=True)}
ACTIVATIONS = tuple(_ACTIVATIONS)


class GatedMlp(nn.Module):
  """Gated feed-forward: wo(act(wi_0 x) * wi_1 x), act = SiLU (SwiGLU) or tanh-GELU (GeGLU)."""
  config: Any  # policy.PolicyConfig

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    dense = functools.partial(nn.DenseGeneral, features=cfg.mlp_dim, use_bias=False, dtype=dtype,
                              kernel_init=kernel_init('embed', 'mlp'))
    activation = _ACTIVATIONS[cfg.mlp_activation]
    # Rows flattened to [B·T, D]: 2-D matmuls (see matmul_2d).
    x_NxD = x_BxTxD.reshape(-1, x_BxTxD.shape[-1])
    hidden_NxF = activation(dense(name='wi_0')(x_NxD)) * dense(name='wi_1')(x_NxD)
    hidden_NxF = nn.with_logical_constraint(hidden_NxF, ('batch', 'mlp'))
    out_NxD = nn.DenseGeneral(features=cfg.emb_dim, use_bias=False, dtype=dtype,
                              kernel_init=kernel_init('mlp', 'embed'), name='wo')(hidden_NxF)
    return out_NxD.reshape(x_BxTxD.shape)


class DecoderBlock(nn.Module):
  """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x)).

  With config.post_norms the attention and MLP outputs are normed too before their residual
  additions (Gemma 2 / 3's sandwich: x + norm(attn(norm(x))), x + norm(mlp(norm(x)))).
  """
  config: Any  # policy.PolicyConfig
  layer_index: int = 0

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array, positions_BxT: jax.Array,
               layer_cache: LayerCache | None, cache_length: int | None,
               cache_slot: jax.Array | None = None, slot_positions_BxS: jax.Array | None = None,
               ) -> tuple[jax.Array, LayerCache | None]:
    cfg = self.config
    attended, new_cache = CausalSelfAttention(cfg, self.layer_index, name='attention')(
        config_norm(cfg, 'pre_attention_norm')(x_BxTxD), positions_BxT, layer_cache,
        cache_length, cache_slot, slot_positions_BxS)
    if cfg.post_norms:
      attended = config_norm(cfg, 'post_attention_norm')(attended)
    x_BxTxD = x_BxTxD + attended
    mlp_out = GatedMlp(cfg, name='mlp')(config_norm(cfg, 'pre_mlp_norm')(x_BxTxD))
    if cfg.post_norms:
      mlp_out = config_norm(cfg, 'post_mlp_norm')(mlp_out)
    x_BxTxD = x_BxTxD + mlp_out
    return nn.with_logical_constraint(x_BxTxD, ('batch', 'length', 'embed')), new_cache
