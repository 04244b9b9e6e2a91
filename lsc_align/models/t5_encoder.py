"""T5 v1.1 encoder in flax.linen, with T5X's parameter names, shapes and math.

Parameter tree (identical to a T5X checkpoint's `optimizer/target`, encoder half):

    token_embedder/embedding                          [vocab, emb]
    encoder/relpos_bias/rel_embedding                 [heads, buckets]   shared by all layers
    encoder/layers_N/pre_attention_layer_norm/scale   [emb]
    encoder/layers_N/attention/{query,key,value}/kernel  [emb, heads * head_dim]
    encoder/layers_N/attention/out/kernel             [heads * head_dim, emb]
    encoder/layers_N/pre_mlp_layer_norm/scale         [emb]
    encoder/layers_N/mlp/{wi_0,wi_1}/kernel           [emb, mlp]   (wi if one activation)
    encoder/layers_N/mlp/wo/kernel                    [mlp, emb]
    encoder/encoder_norm/scale                        [emb]

T5 v1.1 specifics kept exactly: RMS layer norm (no mean, no bias, eps 1e-6), pre-norm residual
blocks, no biases anywhere, gated-GELU MLP (tanh-approximate GELU, as flax's `nn.gelu`),
bidirectional bucketed relative position bias, and no 1/sqrt(head_dim) in the attention logits
(T5 folds it into the query initialiser). Parameters are float32; `dtype` sets activations.
"""
from __future__ import annotations

import dataclasses
import functools
import operator
from typing import Any, Callable

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

Array = jax.Array
_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    'linear': lambda x: x, 'gelu': nn.gelu, 'relu': nn.relu, 'silu': nn.silu}
_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
MASKED_LOGIT = -1e10  # T5X's mask bias; finite, so a row of padding never becomes NaN.


@gin.configurable
@dataclasses.dataclass(frozen=True)
class T5EncoderConfig:
  """Sizes and numerics of a T5 v1.1 encoder (defaults: T5 v1.1 small)."""
  vocab_size: int = 32128
  emb_dim: int = 512
  num_heads: int = 6
  head_dim: int = 64
  mlp_dim: int = 1024
  num_layers: int = 8
  mlp_activations: tuple[str, ...] = ('gelu', 'linear')
  dropout_rate: float = 0.0
  relpos_num_buckets: int = 32
  relpos_max_distance: int = 128
  dtype: str = 'float32'  # activations; params are always float32
  float32_attention_logits: bool = True
  layer_norm_epsilon: float = 1e-6

  def __post_init__(self):
    for name in ('vocab_size', 'emb_dim', 'num_heads', 'head_dim', 'mlp_dim', 'num_layers',
                 'relpos_num_buckets', 'relpos_max_distance'):
      if int(getattr(self, name)) <= 0:
        raise ValueError(f'T5EncoderConfig.{name} must be positive, got {getattr(self, name)}')
    object.__setattr__(self, 'mlp_activations', tuple(self.mlp_activations))
    unknown = [a for a in self.mlp_activations if a not in _ACTIVATIONS]
    if unknown or not self.mlp_activations:
      raise ValueError(f'T5EncoderConfig.mlp_activations {self.mlp_activations}: '
                       f'each must be one of {sorted(_ACTIVATIONS)}')
    if self.dtype not in _DTYPES:
      raise ValueError(f'T5EncoderConfig.dtype {self.dtype!r} must be one of {sorted(_DTYPES)}')
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f'T5EncoderConfig.dropout_rate {self.dropout_rate} not in [0, 1)')

  @property
  def activation_dtype(self) -> Any:
    return _DTYPES[self.dtype]


def relative_position_bucket(relative_position: np.ndarray, bidirectional: bool = True,
                             num_buckets: int = 32, max_distance: int = 128) -> np.ndarray:
  """T5's bucket of each relative position (memory minus query position), as int32.

  Half the buckets (per direction when bidirectional) hold exact offsets 0..max_exact-1, the
  rest log-spaced offsets up to max_distance; everything farther shares the last bucket.
  Computed in numpy: lengths are static, so the buckets are compile-time constants.
  """
  n = -np.asarray(relative_position, dtype=np.int32)
  bucket = np.zeros_like(n)
  if bidirectional:
    num_buckets //= 2
    bucket += (n < 0).astype(np.int32) * num_buckets
    n = np.abs(n)
  else:
    n = np.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  # Same float32 arithmetic as T5X, so boundary offsets land in the same bucket.
  log_ratio = (np.log(n.astype(np.float32) / max_exact + np.finfo(np.float32).eps)
               / np.log(max_distance / max_exact))
  val_if_large = max_exact + (log_ratio * (num_buckets - max_exact)).astype(np.int32)
  val_if_large = np.minimum(val_if_large, num_buckets - 1)
  return (bucket + np.where(is_small, n, val_if_large)).astype(np.int32)


class Dense(nn.Module):
  """Linear map on the last axis without bias; kernel [in, features] in float32."""
  features: int
  kernel_axes: tuple[str, str]
  kernel_init: Callable[..., Array] = nn.initializers.variance_scaling(
      1.0, 'fan_in', 'truncated_normal')
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param('kernel', nn.with_logical_partitioning(self.kernel_init, self.kernel_axes),
                        (x.shape[-1], self.features), jnp.float32)
    return jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))


class LayerNorm(nn.Module):
  """T5 layer norm: x / rms(x) * scale, computed in float32; no mean, no bias."""
  epsilon: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = x.astype(jnp.float32)
    y = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.epsilon)
    scale = self.param('scale', nn.with_logical_partitioning(nn.initializers.ones, ('norm',)),
                       (x.shape[-1],), jnp.float32)
    return y.astype(self.dtype) * scale.astype(self.dtype)


class Embed(nn.Module):
  """Token embedding table [vocab, emb], initialised N(0, 1) as in T5X.

  An id outside [0, vocab) gives NaN (jnp.take's 'fill' mode), so a vocabulary mismatch
  shows up as NaN rewards instead of silently reading a clamped row.
  """
  num_embeddings: int
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens: Array) -> Array:
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ValueError(f'token ids must be integers, got {tokens.dtype}')
    embedding = self.param(
        'embedding', nn.with_logical_partitioning(nn.initializers.normal(1.0), ('vocab', 'embed')),
        (self.num_embeddings, self.features), jnp.float32)
    x = jnp.take(embedding.astype(self.dtype), tokens, axis=0)
    return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))


class RelativePositionBias(nn.Module):
  """Per-head attention bias from bucketed relative positions: [1, heads, q_len, k_len]."""
  num_heads: int
  num_buckets: int = 32
  max_distance: int = 128
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, q_len: int, k_len: int, bidirectional: bool = True) -> Array:
    relative = np.arange(k_len)[None, :] - np.arange(q_len)[:, None]
    buckets = relative_position_bucket(relative, bidirectional, self.num_buckets,
                                       self.max_distance)
    table = self.param(
        'rel_embedding',
        nn.with_logical_partitioning(nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform'),
                                     ('heads', 'relpos_buckets')),
        (self.num_heads, self.num_buckets), jnp.float32)
    return jnp.take(table.astype(self.dtype), jnp.asarray(buckets), axis=1)[None]


class SelfAttention(nn.Module):
  """Multi-head self-attention with T5's unscaled logits and a combined additive bias."""
  config: T5EncoderConfig

  @nn.compact
  def __call__(self, x: Array, bias_BxHxQxK: Array, deterministic: bool) -> Array:
    cfg = self.config
    dtype = cfg.activation_dtype
    batch, length, _ = x.shape
    joined = cfg.num_heads * cfg.head_dim
    kernel_init = nn.initializers.variance_scaling(1.0, 'fan_in', 'normal')
    # T5 does not divide the logits by sqrt(head_dim); it scales the query init instead.
    query_init = lambda *a: kernel_init(*a) / np.sqrt(cfg.head_dim).astype(np.float32)
    project = functools.partial(Dense, joined, ('embed', 'heads'), dtype=dtype)

    def heads(y: Array) -> Array:
      y = y.reshape(batch, length, cfg.num_heads, cfg.head_dim)
      return nn.with_logical_constraint(y, ('batch', 'length', 'heads', 'kv'))

    q = heads(project(kernel_init=query_init, name='query')(x))
    k = heads(project(kernel_init=kernel_init, name='key')(x))
    v = heads(project(kernel_init=kernel_init, name='value')(x))
    if cfg.float32_attention_logits:
      q, k = q.astype(jnp.float32), k.astype(jnp.float32)
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) + bias_BxHxQxK.astype(q.dtype)
    weights = jax.nn.softmax(logits).astype(dtype)
    if not deterministic and cfg.dropout_rate > 0.0:
      # As T5X: one dropout mask per key, shared over query positions.
      weights = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(weights, deterministic=False)
    y = jnp.einsum('bhqk,bkhd->bqhd', weights, v).reshape(batch, length, joined)
    out = Dense(cfg.emb_dim, ('heads', 'embed'), kernel_init=kernel_init, dtype=dtype,
                name='out')(y)
    return nn.with_logical_constraint(out, ('batch', 'length', 'embed'))


class MlpBlock(nn.Module):
  """Gated MLP: wo(prod_i act_i(wi_i x)); ('gelu', 'linear') is T5 v1.1's gated GELU."""
  config: T5EncoderConfig

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    cfg = self.config
    dtype = cfg.activation_dtype
    acts = cfg.mlp_activations
    branches = []
    for i, act in enumerate(acts):
      name = 'wi' if len(acts) == 1 else f'wi_{i}'
      branches.append(_ACTIVATIONS[act](Dense(cfg.mlp_dim, ('embed', 'mlp'), dtype=dtype,
                                              name=name)(x)))
    h = functools.reduce(operator.mul, branches)
    h = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(h, deterministic=deterministic)
    h = nn.with_logical_constraint(h, ('batch', 'length', 'mlp'))
    return Dense(cfg.emb_dim, ('mlp', 'embed'), dtype=dtype, name='wo')(h)


class EncoderLayer(nn.Module):
  """Pre-norm residual block: x + attn(norm(x)), then + mlp(norm(.))."""
  config: T5EncoderConfig

  @nn.compact
  def __call__(self, x: Array, bias_BxHxQxK: Array, deterministic: bool) -> Array:
    cfg = self.config
    dtype = cfg.activation_dtype
    dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
    h = LayerNorm(cfg.layer_norm_epsilon, dtype, name='pre_attention_layer_norm')(x)
    h = SelfAttention(cfg, name='attention')(h, bias_BxHxQxK, deterministic)
    x = x + dropout(h, deterministic=deterministic)
    h = LayerNorm(cfg.layer_norm_epsilon, dtype, name='pre_mlp_layer_norm')(x)
    h = MlpBlock(cfg, name='mlp')(h, deterministic)
    x = x + dropout(h, deterministic=deterministic)
    return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))


def padding_attention_bias(tokens_BxL: Array) -> Array:
  """[B, 1, L, L] additive bias: 0 where query and key are both real tokens, else -1e10."""
  real = tokens_BxL > 0
  both = real[:, None, :, None] & real[:, None, None, :]
  return jnp.where(both, 0.0, MASKED_LOGIT).astype(jnp.float32)


class Encoder(nn.Module):
  """The `encoder/` subtree: relative position bias, layers_0..N-1, encoder_norm."""
  config: T5EncoderConfig
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, tokens_BxL: Array, deterministic: bool = True) -> Array:
    cfg = self.config
    dtype = cfg.activation_dtype
    if tokens_BxL.ndim != 2:
      raise ValueError(f'encoder tokens must be [batch, length], got shape {tokens_BxL.shape}')
    length = tokens_BxL.shape[1]
    position_bias = RelativePositionBias(cfg.num_heads, cfg.relpos_num_buckets,
                                         cfg.relpos_max_distance, dtype,
                                         name='relpos_bias')(length, length, True)
    bias = padding_attention_bias(tokens_BxL) + position_bias.astype(jnp.float32)
    x = self.shared_embedding(tokens_BxL.astype(jnp.int32))
    dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
    x = dropout(x, deterministic=deterministic).astype(dtype)
    for i in range(cfg.num_layers):
      x = EncoderLayer(cfg, name=f'layers_{i}')(x, bias, deterministic)
    x = LayerNorm(cfg.layer_norm_epsilon, dtype, name='encoder_norm')(x)
    return dropout(x, deterministic=deterministic)


class T5Encoder(nn.Module):
  """Token ids [B, L] (0 = padding) -> encodings [B, L, emb].

  Padding positions attend to nothing real and are ignored by real positions; their outputs
  are finite but meaningless. Pass `rngs={'dropout': key}` when `deterministic=False`.
  """
  config: T5EncoderConfig

  def setup(self):
    cfg = self.config
    self.token_embedder = Embed(cfg.vocab_size, cfg.emb_dim, cfg.activation_dtype)
    self.encoder = Encoder(cfg, shared_embedding=self.token_embedder)

  def __call__(self, tokens_BxL: Array, *, deterministic: bool = True) -> Array:
    return self.encoder(tokens_BxL, deterministic)
