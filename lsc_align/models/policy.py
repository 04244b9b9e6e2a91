"""Decoder-only transformer policy π(y|x) with a value head V(s_t), for SFT and PPO.

Architecture: token embedding, `num_layers` pre-RMSNorm blocks (causal multi-head self-attention,
gated SiLU MLP), a final RMSNorm, an untied output projection to the vocabulary and a small MLP
value head on the final hidden state (one scalar per position).

Positions are rotary (RoPE). Attention then depends only on position differences and there is no
learned position table, so a row's positions can start anywhere: the sampler writes each row's
response right after that row's own prompt (per-row positions), with no shifting of the batch and
no holes in the KV cache (see sampling.py). `max_len` only bounds the sequences we accept.

The layers are in decoder_layers.py. Three entry points share one parameter tree:
* `forward`: whole sequences, causal; returns logits [B, L, V] and values [B, L];
* `prefill`: `forward` that also returns a KV cache of a given length holding the prompt;
* `decode_step`: one token per row at per-row positions, reading and updating the cache.
`forward_at` is `forward` with logits and values only at given positions per row (what log-probs
of responses need: no [B, L, V] logits for the prompt).

The KV cache is an explicit pytree (a tuple over layers of (keys, values), each
[B, heads, S, head_dim]: heads before slots, so the decode step's attention contracts without
transposing the cache) so it can sit in a `lax.while_loop` / `lax.scan` carry. By default cache
slot s holds the token at absolute position s of its row, written per row; a query at position p
sees slots 0..p only, so slots beyond p may hold anything (e.g. the prompt's right padding) until
they are overwritten. A decode step may instead write every row at one common slot (`cache_slot`,
an in-place dynamic_update_slice) and give the position each slot holds (`slot_positions`): the
sampler writes response token t of every row at slot Lp + t.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from lsc_align.conventions import EOS_ID, PAD_ID  # pylint: disable=unused-import (policy.EOS_ID)
from lsc_align.models.decoder_layers import EMPTY_SLOT  # pylint: disable=unused-import
from lsc_align.models.decoder_layers import DecoderBlock, LayerCache, RMSNorm, kernel_init


Params = Any  # a flax parameter pytree (the 'params' collection, unboxed)
KVCache = tuple[LayerCache, ...]  # one entry per layer


@gin.configurable
@dataclasses.dataclass(frozen=True)
class PolicyConfig:
  """Sizes of the policy LM. Frozen (hashable) so it can be a static argument of jax.jit.

  dtype is the compute dtype of matmul inputs and activations ('float32', or 'bfloat16' for mixed
  precision: float32 master weights cast per use). Parameters, RMSNorm statistics, rotary angles,
  attention softmaxes, logits (bfloat16 inputs, float32 accumulation) and values stay float32.
  """
  vocab_size: int = 512
  emb_dim: int = 64
  num_heads: int = 4
  head_dim: int = 16
  mlp_dim: int = 256
  num_layers: int = 2
  max_len: int = 256
  dtype: str = 'float32'
  value_hidden_dim: int = 64
  # True keeps value-loss gradients out of the shared trunk (value head trained alone).
  detach_value_head: bool = False
  rope_max_wavelength: float = 10_000.0

  def __post_init__(self):
    for name in ('vocab_size', 'emb_dim', 'num_heads', 'head_dim', 'mlp_dim', 'num_layers',
                 'max_len', 'value_hidden_dim'):
      value = getattr(self, name)
      if not isinstance(value, int) or value <= 0:
        raise ValueError(f'PolicyConfig.{name} must be a positive int, got {value!r}')
    if self.head_dim % 2:
      raise ValueError(f'PolicyConfig.head_dim must be even for rotary positions, '
                       f'got {self.head_dim}')
    try:
      jnp.dtype(self.dtype)
    except TypeError as e:
      raise ValueError(f'PolicyConfig.dtype {self.dtype!r} is not a dtype') from e


class ValueHead(nn.Module):
  """V(s_t): a one-hidden-layer MLP from the final hidden state to a scalar per position."""
  config: PolicyConfig

  @nn.compact
  def __call__(self, h_BxTxD: jax.Array) -> jax.Array:
    hidden = nn.silu(nn.DenseGeneral(self.config.value_hidden_dim, dtype=jnp.float32,
                                     kernel_init=kernel_init('embed', 'mlp'),
                                     bias_init=nn.with_logical_partitioning(
                                         nn.initializers.zeros, ('mlp',)),
                                     name='hidden')(h_BxTxD.astype(jnp.float32)))
    value = nn.DenseGeneral(1, dtype=jnp.float32, kernel_init=kernel_init('mlp', None),
                            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)),
                            name='out')(hidden)
    return value[..., 0]


class PolicyLM(nn.Module):
  """The policy LM; returns (logits [B,T,V] f32, values [B,T] f32, new KV cache or None).

  With `output_positions` [B, K], logits and values are computed at those positions only
  ([B, K, V] and [B, K]): the output projection, the largest matmul, skips the other positions.
  """
  config: PolicyConfig

  @nn.compact
  def __call__(self, tokens_BxT: jax.Array, positions_BxT: jax.Array,
               kv_cache: KVCache | None = None, cache_length: int | None = None,
               output_positions_BxK: jax.Array | None = None,
               cache_slot: jax.Array | None = None, slot_positions_BxS: jax.Array | None = None,
               ) -> tuple[jax.Array, jax.Array, KVCache | None]:
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    embedder = nn.Embed(cfg.vocab_size, cfg.emb_dim, dtype=dtype, name='token_embedder',
                        embedding_init=nn.with_logical_partitioning(
                            nn.initializers.normal(stddev=1.0), ('vocab', 'embed')))
    x_BxTxD = nn.with_logical_constraint(embedder(tokens_BxT), ('batch', 'length', 'embed'))
    new_layer_caches = []
    for i in range(cfg.num_layers):
      x_BxTxD, layer_cache = DecoderBlock(cfg, name=f'layers_{i}')(
          x_BxTxD, positions_BxT, None if kv_cache is None else kv_cache[i], cache_length,
          cache_slot, slot_positions_BxS)
      new_layer_caches.append(layer_cache)
    if output_positions_BxK is not None:
      x_BxTxD = gather_positions(x_BxTxD, output_positions_BxK)
    batch, length = x_BxTxD.shape[:2]
    h_NxD = RMSNorm(dtype, name='decoder_norm')(x_BxTxD.reshape(batch * length, -1))
    # float32 accumulation: log-probs and their ratios need more than bfloat16's 8 bits.
    logits_NxV = nn.DenseGeneral(cfg.vocab_size, use_bias=False, dtype=dtype,
                                 kernel_init=kernel_init('embed', 'vocab'),
                                 dot_general=functools.partial(
                                     jax.lax.dot_general, preferred_element_type=jnp.float32),
                                 name='logits_dense')(h_NxD).astype(jnp.float32)
    logits_BxTxV = nn.with_logical_constraint(logits_NxV.reshape(batch, length, -1),
                                              ('batch', 'length', 'vocab'))
    value_input = jax.lax.stop_gradient(h_NxD) if cfg.detach_value_head else h_NxD
    values_BxT = ValueHead(cfg, name='value_head')(value_input).reshape(batch, length)
    new_cache = None if new_layer_caches[0] is None else tuple(new_layer_caches)
    return logits_BxTxV, values_BxT, new_cache


def _check_length(config: PolicyConfig, length: int, what: str) -> None:
  if length > config.max_len:
    raise ValueError(f'{what} length {length} exceeds PolicyConfig.max_len = {config.max_len}')


def _boxed_variables(config: PolicyConfig, rng: jax.Array) -> Any:
  tokens = jnp.zeros((1, 1), jnp.int32)
  return PolicyLM(config).init(rng, tokens, jnp.zeros_like(tokens))


def init_params(config: PolicyConfig, rng: jax.Array) -> Params:
  """Fresh parameters (the unboxed 'params' collection). Jit it with out_shardings to shard."""
  return nn.meta.unbox(_boxed_variables(config, rng))['params']


def abstract_params(config: PolicyConfig) -> Any:
  """Shapes of the parameters, boxed with their logical axis names (nn.LogicallyPartitioned).

  Feed to partitioning.logical_shardings for the NamedShardings of params (and, through
  jax.eval_shape(optimizer.init, ...), of the optimizer state).
  """
  return jax.eval_shape(functools.partial(_boxed_variables, config), jax.random.key(0))['params']


def param_logical_specs(config: PolicyConfig) -> Any:
  """PartitionSpecs of logical axis names, one per parameter (same tree as init_params)."""
  return nn.get_partition_spec(abstract_params(config))


def param_labels(params: Params) -> Any:
  """'value_head' for the value head's parameters, 'policy' for the rest (optax.multi_transform)."""
  return {name: jax.tree.map(lambda _, n=name: 'value_head' if n == 'value_head' else 'policy',
                             subtree) for name, subtree in params.items()}


def forward(params: Params, config: PolicyConfig,
            tokens_BxL: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Causal forward pass over whole sequences: (logits [B, L, V], values [B, L]), both float32.

  logits[:, t] is the distribution of token t+1 given tokens 0..t; values[:, t] = V(tokens 0..t).
  """
  _check_length(config, tokens_BxL.shape[1], 'sequence')
  positions_BxL = jnp.broadcast_to(jnp.arange(tokens_BxL.shape[1]), tokens_BxL.shape)
  logits, values, _ = PolicyLM(config).apply({'params': params}, tokens_BxL, positions_BxL)
  return logits, values


def forward_at(params: Params, config: PolicyConfig, tokens_BxL: jax.Array,
               positions_BxK: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`forward`'s logits [B, K, V] and values [B, K] at positions [B, K] of each row only.

  Equal to gather_positions of `forward`'s outputs, without computing the others.
  """
  _check_length(config, tokens_BxL.shape[1], 'sequence')
  positions_BxL = jnp.broadcast_to(jnp.arange(tokens_BxL.shape[1]), tokens_BxL.shape)
  logits, values, _ = PolicyLM(config).apply({'params': params}, tokens_BxL, positions_BxL,
                                             output_positions_BxK=positions_BxK)
  return logits, values


def prefill(params: Params, config: PolicyConfig, tokens_BxL: jax.Array,
            cache_length: int) -> tuple[jax.Array, jax.Array, KVCache]:
  """`forward` that also returns a KV cache of `cache_length` slots, slots 0..L-1 filled."""
  _check_length(config, cache_length, 'cache')
  if cache_length < tokens_BxL.shape[1]:
    raise ValueError(f'cache_length {cache_length} < prompt length {tokens_BxL.shape[1]}')
  positions_BxL = jnp.broadcast_to(jnp.arange(tokens_BxL.shape[1]), tokens_BxL.shape)
  return PolicyLM(config).apply({'params': params}, tokens_BxL, positions_BxL,
                                cache_length=cache_length)


def decode_step(params: Params, config: PolicyConfig, tokens_B: jax.Array, positions_B: jax.Array,
                kv_cache: KVCache, cache_slot: jax.Array | None = None,
                slot_positions_BxS: jax.Array | None = None,
                ) -> tuple[jax.Array, jax.Array, KVCache]:
  """One token per row at its own position: (logits [B, V], values [B], updated cache).

  By default row b's token is written to cache slot positions_B[b]. With `cache_slot` (a scalar)
  every row's token is written to that slot instead, and `slot_positions_BxS` [B, S] gives the
  position each slot holds in each row (EMPTY_SLOT for none); a row sees the slots whose
  position is at most its own.
  """
  if (cache_slot is None) != (slot_positions_BxS is None):
    raise ValueError('give both cache_slot and slot_positions_BxS, or neither')
  logits, values, new_cache = PolicyLM(config).apply(
      {'params': params}, tokens_B[:, None], positions_B[:, None], kv_cache=kv_cache,
      cache_slot=cache_slot, slot_positions_BxS=slot_positions_BxS)
  return logits[:, 0], values[:, 0], new_cache


def prompt_lengths(prompt_ids_BxLp: jax.Array) -> jax.Array:
  """Tokens per right-padded prompt (no pad inside a prompt; every prompt needs >= 1 token)."""
  return jnp.sum(prompt_ids_BxLp != PAD_ID, axis=1).astype(jnp.int32)


def pack_prompt_response(prompt_ids_BxLp: jax.Array,
                         response_ids_BxLr: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per row, the response right after the prompt's last real token, padded on the right.

  Returns (tokens [B, Lp + Lr], prediction positions [B, Lr]): logits at prediction position t of
  a row predict its response token t (position prompt_length - 1 + t), and values there are V(s_t).
  """
  batch, prompt_len = prompt_ids_BxLp.shape
  response_len = response_ids_BxLr.shape[1]
  lengths_Bx1 = prompt_lengths(prompt_ids_BxLp)[:, None]
  columns_L = jnp.arange(prompt_len + response_len)
  from_prompt = jnp.take_along_axis(
      prompt_ids_BxLp, jnp.broadcast_to(jnp.minimum(columns_L, prompt_len - 1),
                                        (batch, columns_L.shape[0])), axis=1)
  response_index_BxL = columns_L[None, :] - lengths_Bx1
  from_response = jnp.take_along_axis(
      response_ids_BxLr, jnp.clip(response_index_BxL, 0, response_len - 1), axis=1)
  tokens_BxL = jnp.where(columns_L[None, :] < lengths_Bx1, from_prompt,
                         jnp.where(response_index_BxL < response_len, from_response, PAD_ID))
  prediction_positions_BxLr = jnp.maximum(lengths_Bx1 - 1, 0) + jnp.arange(response_len)[None]
  return tokens_BxL.astype(jnp.int32), prediction_positions_BxLr


def gather_positions(x_BxL_: jax.Array, positions_BxK: jax.Array) -> jax.Array:
  """x[b, positions[b, k], ...] for each row b: [B, L, ...] -> [B, K, ...]."""
  index = positions_BxK.reshape(positions_BxK.shape + (1,) * (x_BxL_.ndim - 2))
  return jnp.take_along_axis(x_BxL_, index, axis=1)
