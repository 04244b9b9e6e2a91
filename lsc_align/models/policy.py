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
from lsc_align.models.decoder_layers import ACTIVATIONS, DecoderBlock, LayerCache, config_norm
from lsc_align.models.decoder_layers import kernel_init


Params = Any  # a flax parameter pytree (the 'params' collection, unboxed)
KVCache = tuple[LayerCache, ...]  # one entry per layer


LAYER_TYPES = ('full_attention', 'sliding_attention')
ROPE_SCALINGS = ('none', 'linear', 'llama3')


@gin.configurable
@dataclasses.dataclass(frozen=True)
class PolicyConfig:
  """Sizes and architecture of the policy LM. Frozen (hashable): a static argument of jax.jit.

  dtype is the compute dtype of matmul inputs and activations ('float32', or 'bfloat16' for mixed
  precision: float32 master weights cast per use). Parameters, RMSNorm statistics, rotary angles,
  attention softmaxes, logits (bfloat16 inputs, float32 accumulation) and values stay float32.

  The fields after rope_max_wavelength describe pretrained decoder families (Llama, Qwen,
  Gemma); their defaults give the world policy's architecture and parameter tree. Tuple fields
  accept lists (a config read back from JSON).
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
  # Key/value heads (grouped-query attention when fewer than num_heads); None = num_heads.
  num_kv_heads: int | None = None
  qkv_bias: bool = False  # biases on the query, key and value projections (Qwen2)
  out_bias: bool = False  # a bias on the attention output projection
  qk_norm: bool = False  # RMSNorm of each query and key head before rotary (Qwen3, Gemma 3)
  norm_epsilon: float = 1e-6
  norm_scale_plus_one: bool = False  # RMSNorm multiplies by (1 + scale) (Gemma)
  post_norms: bool = False  # RMSNorm of attention and MLP outputs too (Gemma 2 / 3 sandwich)
  mlp_activation: str = 'silu'  # gate activation: 'silu' or 'gelu_tanh'
  scale_embeddings: bool = False  # token embeddings times sqrt(emb_dim) (Gemma)
  tie_embeddings: bool = False  # logits from the token embedding (no logits_dense)
  attn_logit_softcap: float | None = None  # scores -> cap * tanh(scores / cap)
  final_logit_softcap: float | None = None  # logits -> cap * tanh(logits / cap)
  # Scores scaled by query_pre_attn_scalar ** -0.5 instead of head_dim ** -0.5 (Gemma).
  query_pre_attn_scalar: float | None = None
  sliding_window: int | None = None  # tokens a sliding layer sees, its own included
  # Per layer 'full_attention' or 'sliding_attention'; None = every layer full.
  layer_types: tuple[str, ...] | None = None
  # Rotary base of the sliding layers (Gemma 3 local layers); None = rope_max_wavelength.
  local_rope_max_wavelength: float | None = None
  # Rotary scaling of the full layers: 'none', 'linear' (frequencies / factor) or 'llama3'.
  rope_scaling: str = 'none'
  rope_scaling_factor: float = 1.0
  rope_low_freq_factor: float = 1.0  # llama3 only
  rope_high_freq_factor: float = 4.0  # llama3 only
  rope_original_max_len: int = 8192  # llama3 only: the pretraining context

  def __post_init__(self):
    if isinstance(self.layer_types, list):
      object.__setattr__(self, 'layer_types', tuple(self.layer_types))
    for name in ('vocab_size', 'emb_dim', 'num_heads', 'head_dim', 'mlp_dim', 'num_layers',
                 'max_len', 'value_hidden_dim', 'rope_original_max_len'):
      _check_positive_int(name, getattr(self, name))
    for name in ('num_kv_heads', 'sliding_window'):
      if getattr(self, name) is not None:
        _check_positive_int(name, getattr(self, name))
    if self.head_dim % 2:
      raise ValueError(f'PolicyConfig.head_dim must be even for rotary positions, '
                       f'got {self.head_dim}')
    try:
      jnp.dtype(self.dtype)
    except TypeError as e:
      raise ValueError(f'PolicyConfig.dtype {self.dtype!r} is not a dtype') from e
    for name in ('detach_value_head', 'qkv_bias', 'out_bias', 'qk_norm', 'norm_scale_plus_one',
                 'post_norms', 'scale_embeddings', 'tie_embeddings'):
      if not isinstance(getattr(self, name), bool):
        raise ValueError(f'PolicyConfig.{name} must be a bool, got {getattr(self, name)!r}')
    for name in ('rope_max_wavelength', 'norm_epsilon', 'rope_scaling_factor',
                 'rope_low_freq_factor', 'rope_high_freq_factor'):
      _check_positive_number(name, getattr(self, name))
    for name in ('attn_logit_softcap', 'final_logit_softcap', 'query_pre_attn_scalar',
                 'local_rope_max_wavelength'):
      if getattr(self, name) is not None:
        _check_positive_number(name, getattr(self, name))
    if self.num_heads % self.kv_heads:
      raise ValueError(f'PolicyConfig.num_kv_heads {self.kv_heads} must divide num_heads '
                       f'{self.num_heads}')
    if self.mlp_activation not in ACTIVATIONS:
      raise ValueError(f'PolicyConfig.mlp_activation {self.mlp_activation!r} is not one of '
                       f'{ACTIVATIONS}')
    if self.rope_scaling not in ROPE_SCALINGS:
      raise ValueError(f'PolicyConfig.rope_scaling {self.rope_scaling!r} is not one of '
                       f'{ROPE_SCALINGS}')
    if self.rope_scaling == 'llama3' and self.rope_high_freq_factor <= self.rope_low_freq_factor:
      raise ValueError(f'PolicyConfig.rope_high_freq_factor {self.rope_high_freq_factor} must '
                       f'exceed rope_low_freq_factor {self.rope_low_freq_factor}')
    if self.layer_types is not None:
      if (not isinstance(self.layer_types, tuple) or len(self.layer_types) != self.num_layers
          or any(t not in LAYER_TYPES for t in self.layer_types)):
        raise ValueError(f'PolicyConfig.layer_types must be {self.num_layers} entries of '
                         f'{LAYER_TYPES}, got {self.layer_types!r}')
      if 'sliding_attention' in self.layer_types and self.sliding_window is None:
        raise ValueError('PolicyConfig.sliding_window is needed by the sliding_attention layers')

  @property
  def kv_heads(self) -> int:
    """Key/value heads: num_kv_heads, or num_heads when it is None."""
    return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

  @property
  def attention_scale(self) -> float:
    """The factor of query·key scores."""
    if self.query_pre_attn_scalar is not None:
      return float(self.query_pre_attn_scalar) ** -0.5
    return 1.0 / float(self.head_dim) ** 0.5

  def layer_window(self, layer_index: int) -> int | None:
    """The sliding window of layer `layer_index`, None for full causal attention."""
    if self.layer_types is None or self.layer_types[layer_index] == 'full_attention':
      return None
    return self.sliding_window


def _check_positive_int(name: str, value: Any) -> None:
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    raise ValueError(f'PolicyConfig.{name} must be a positive int, got {value!r}')


def _check_positive_number(name: str, value: Any) -> None:
  if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
    raise ValueError(f'PolicyConfig.{name} must be a positive number, got {value!r}')


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
  With `hidden_only` it returns the final normed hidden states [B, T, D] (float32) alone, and
  neither the output projection nor the value head is used (a reward model's backbone).
  """
  config: PolicyConfig

  @nn.compact
  def __call__(self, tokens_BxT: jax.Array, positions_BxT: jax.Array,
               kv_cache: KVCache | None = None, cache_length: int | None = None,
               output_positions_BxK: jax.Array | None = None,
               cache_slot: jax.Array | None = None, slot_positions_BxS: jax.Array | None = None,
               hidden_only: bool = False) -> Any:
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    embedder = nn.Embed(cfg.vocab_size, cfg.emb_dim, dtype=dtype, name='token_embedder',
                        embedding_init=nn.with_logical_partitioning(
                            nn.initializers.normal(stddev=1.0), ('vocab', 'embed')))
    x_BxTxD = nn.with_logical_constraint(embedder(tokens_BxT), ('batch', 'length', 'embed'))
    if cfg.scale_embeddings:
      x_BxTxD = x_BxTxD * jnp.asarray(cfg.emb_dim ** 0.5, dtype)
    new_layer_caches = []
    for i in range(cfg.num_layers):
      x_BxTxD, layer_cache = DecoderBlock(cfg, i, name=f'layers_{i}')(
          x_BxTxD, positions_BxT, None if kv_cache is None else kv_cache[i], cache_length,
          cache_slot, slot_positions_BxS)
      new_layer_caches.append(layer_cache)
    if output_positions_BxK is not None:
      x_BxTxD = gather_positions(x_BxTxD, output_positions_BxK)
    batch, length = x_BxTxD.shape[:2]
    h_NxD = config_norm(cfg, 'decoder_norm')(x_BxTxD.reshape(batch * length, -1))
    if hidden_only:
      return h_NxD.reshape(batch, length, -1).astype(jnp.float32)
    # float32 accumulation: log-probs and their ratios need more than bfloat16's 8 bits.
    if cfg.tie_embeddings:
      logits_NxV = jax.lax.dot_general(
          h_NxD.astype(dtype), embedder.embedding.astype(dtype), (((1,), (1,)), ((), ())),
          preferred_element_type=jnp.float32)
    else:
      logits_NxV = nn.DenseGeneral(cfg.vocab_size, use_bias=False, dtype=dtype,
                                   kernel_init=kernel_init('embed', 'vocab'),
                                   dot_general=functools.partial(
                                       jax.lax.dot_general, preferred_element_type=jnp.float32),
                                   name='logits_dense')(h_NxD).astype(jnp.float32)
    if cfg.final_logit_softcap is not None:
      logits_NxV = jnp.tanh(logits_NxV / cfg.final_logit_softcap) * cfg.final_logit_softcap
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


def hidden_states(params: Params, config: PolicyConfig, tokens_BxL: jax.Array) -> jax.Array:
  """`forward`'s final normed hidden states [B, L, D], float32, causal (no logits, no values).

  `params` needs neither logits_dense nor value_head. Right padding changes no earlier position.
  """
  _check_length(config, tokens_BxL.shape[1], 'sequence')
  positions_BxL = jnp.broadcast_to(jnp.arange(tokens_BxL.shape[1]), tokens_BxL.shape)
  return PolicyLM(config).apply({'params': params}, tokens_BxL, positions_BxL, hidden_only=True)


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


def prompt_lengths(prompt_ids_BxLp: jax.Array, pad_id: int = PAD_ID) -> jax.Array:
  """Tokens per right-padded prompt (no pad inside a prompt; every prompt needs >= 1 token)."""
  return jnp.sum(prompt_ids_BxLp != pad_id, axis=1).astype(jnp.int32)


def pack_prompt_response(prompt_ids_BxLp: jax.Array, response_ids_BxLr: jax.Array,
                         pad_id: int = PAD_ID) -> tuple[jax.Array, jax.Array]:
  """Per row, the response right after the prompt's last real token, padded on the right.

  Returns (tokens [B, Lp + Lr], prediction positions [B, Lr]): logits at prediction position t of
  a row predict its response token t (position prompt_length - 1 + t), and values there are V(s_t).
  """
  batch, prompt_len = prompt_ids_BxLp.shape
  response_len = response_ids_BxLr.shape[1]
  lengths_Bx1 = prompt_lengths(prompt_ids_BxLp, pad_id)[:, None]
  columns_L = jnp.arange(prompt_len + response_len)
  from_prompt = jnp.take_along_axis(
      prompt_ids_BxLp, jnp.broadcast_to(jnp.minimum(columns_L, prompt_len - 1),
                                        (batch, columns_L.shape[0])), axis=1)
  response_index_BxL = columns_L[None, :] - lengths_Bx1
  from_response = jnp.take_along_axis(
      response_ids_BxLr, jnp.clip(response_index_BxL, 0, response_len - 1), axis=1)
  tokens_BxL = jnp.where(columns_L[None, :] < lengths_Bx1, from_prompt,
                         jnp.where(response_index_BxL < response_len, from_response,
                                   max(pad_id, 0)))
  prediction_positions_BxLr = jnp.maximum(lengths_Bx1 - 1, 0) + jnp.arange(response_len)[None]
  return tokens_BxL.astype(jnp.int32), prediction_positions_BxLr


def gather_positions(x_BxL_: jax.Array, positions_BxK: jax.Array) -> jax.Array:
  """x[b, positions[b, k], ...] for each row b: [B, L, ...] -> [B, K, ...]."""
  index = positions_BxK.reshape(positions_BxK.shape + (1,) * (x_BxL_.ndim - 2))
  return jnp.take_along_axis(x_BxL_, index, axis=1)
