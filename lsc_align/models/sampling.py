"""Autoregressive sampling from the policy inside jit, and log-probs of given responses.

Prompts of different lengths. Prompts are right-padded [B, Lp]. Each row is processed at its own
positions: the whole padded batch is prefilled at once (causal, so a row's real tokens never see
its padding), then row b's response token t is drawn from the logits at position len_b - 1 + t
and fed back at position len_b + t. Its keys and values go to the KV-cache slot Lp + t, the same
slot for every row (one in-place update per step); each row's attention sees its prompt's real
slots and the response slots written so far (policy.decode_step's slot positions). With rotary
positions, row b's computation is that of sampling its prompt alone; no shifting to the left.
Every prompt needs at least one token, and no pad inside.

Randomness. Row b draws its token t with `fold_in(row_key_b, t)`, row keys being
`split(rng, B)` (or B keys passed in). Samples are then deterministic given the key, identical
with and without the KV cache, and a row's sample depends only on its prompt and its row key.

The sampling distribution is softmax(logits / temperature) over all tokens except pad (pad is
never emitted as a response token, so pad marks the end of a response without ambiguity). PPO
needs log-probs under the distribution the tokens were drawn from: the importance ratio
π_θ/π_old and the KL penalty against π0 must both be computed on the same temperature-scaled
distribution, so `sample` returns log-probs at the sampling temperature and `response_logprobs`
takes the same `temperature`. Temperature 0 is greedy decoding; its log-probs are at temperature 1.
Temperature is traced, not static: changing it does not recompile.

Sharding: call under partitioning.activate(mesh) with params and prompts placed on the mesh; the
layers' logical constraints then shard activations and the KV cache (batch over 'data').

EOS: the EOS token itself is part of the response (mask 1); after it every token is pad (0) with
mask 0, log-prob 0 and value 0.

Pad and EOS ids are arguments (defaults: the project's PAD_ID 0 and EOS_ID 1), for checkpoints
whose token 0 is a real token. pad_id = -1 means "no pad": nothing is masked, prompts are
unpadded (every row full length) and -1 fills the responses after EOS; eos_id = -1 never stops.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from lsc_align.models import policy
from lsc_align.models.policy import EOS_ID, PAD_ID, Params, PolicyConfig

# Finite, so 0 * (masked log-prob) stays 0 in the entropy.
_MASKED_LOGIT = -1e9


class SampleOutput(NamedTuple):
  """Sampled responses, aligned at the response start (column 0 = first response token)."""
  response_ids: jax.Array  # [B, Lr] int32, pad after EOS
  logprobs: jax.Array  # [B, Lr] float32, log π(y_t | x, y_<t) at the sampling temperature
  response_mask: jax.Array  # [B, Lr] int32, 1 up to and including EOS
  values: jax.Array  # [B, Lr] float32, V(x, y_<t) from the value head


class ResponseScores(NamedTuple):
  """Per-token scores of given responses under a policy (zero where response_mask is 0)."""
  logprobs: jax.Array  # [B, Lr] float32
  values: jax.Array  # [B, Lr] float32
  entropy: jax.Array  # [B, Lr] float32, entropy of the next-token distribution
  response_mask: jax.Array  # [B, Lr] int32


def sampling_logits(logits_xV: jax.Array, temperature: float | jax.Array,
                    pad_id: int = PAD_ID) -> jax.Array:
  """Logits of the sampling distribution: pad excluded, divided by temperature (if > 0)."""
  scale = jnp.where(temperature > 0, temperature, 1.0).astype(jnp.float32)
  scaled_xV = logits_xV.astype(jnp.float32) / scale
  return scaled_xV if pad_id < 0 else scaled_xV.at[..., pad_id].set(_MASKED_LOGIT)


def response_mask(response_ids_BxLr: jax.Array, pad_id: int = PAD_ID) -> jax.Array:
  """1 on response tokens (EOS included), 0 on the padding after them."""
  return (response_ids_BxLr != pad_id).astype(jnp.int32)


def _row_keys(rng: jax.Array, batch_size: int) -> jax.Array:
  """One key per row: `rng` itself if it is already a batch of B keys, else split(rng, B)."""
  key_rank = 0 if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else 1
  if rng.ndim == key_rank + 1:
    if rng.shape[0] != batch_size:
      raise ValueError(f'{rng.shape[0]} row keys for a batch of {batch_size} prompts')
    return rng
  return jax.random.split(rng, batch_size)


def _draw_tokens(row_keys: jax.Array, step: jax.Array, logits_BxV: jax.Array,
                 temperature: float | jax.Array, pad_id: int) -> tuple[jax.Array, jax.Array]:
  """Tokens [B] drawn from the sampling distribution, and their log-probs under it."""
  scaled_BxV = sampling_logits(logits_BxV, temperature, pad_id)
  step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(row_keys, step)
  drawn_B = jax.vmap(jax.random.categorical)(step_keys, scaled_BxV)
  # Temperature is traced (one program for every temperature), so greedy is a select.
  tokens_B = jnp.where(temperature > 0, drawn_B, jnp.argmax(scaled_BxV, axis=-1))
  logprobs_B = jnp.take_along_axis(jax.nn.log_softmax(scaled_BxV), tokens_B[:, None], axis=1)[:, 0]
  return tokens_B.astype(jnp.int32), logprobs_B


class _Emitted(NamedTuple):
  """Loop state shared by both samplers: what has been written so far."""
  done_B: jax.Array
  response_ids: jax.Array
  logprobs: jax.Array
  response_mask: jax.Array
  values: jax.Array


def _empty(batch: int, response_len: int) -> _Emitted:
  zeros_f, zeros_i = jnp.zeros((batch, response_len), jnp.float32), jnp.zeros(
      (batch, response_len), jnp.int32)
  return _Emitted(jnp.zeros((batch,), bool), zeros_i, zeros_f, zeros_i, zeros_f)


def _emit(emitted: _Emitted, row_keys: jax.Array, step: jax.Array, logits_BxV: jax.Array,
          values_B: jax.Array, temperature: float | jax.Array,
          eos_id: int, pad_id: int) -> tuple[_Emitted, jax.Array]:
  """Draws token `step` of every row; finished rows get pad, mask 0, log-prob 0, value 0.

  Returns the new state and the tokens to feed back (a finished row's are never seen again).
  """
  tokens_B, logprobs_B = _draw_tokens(row_keys, step, logits_BxV, temperature, pad_id)
  alive_B = ~emitted.done_B
  tokens_B = jnp.where(alive_B, tokens_B, pad_id)
  put = lambda buffer, column: buffer.at[:, step].set(column.astype(buffer.dtype))
  emitted = _Emitted(
      done_B=emitted.done_B | (tokens_B == eos_id),
      response_ids=put(emitted.response_ids, tokens_B),
      logprobs=put(emitted.logprobs, jnp.where(alive_B, logprobs_B, 0.0)),
      response_mask=put(emitted.response_mask, alive_B),
      values=put(emitted.values, jnp.where(alive_B, values_B, 0.0)))
  return emitted, jnp.maximum(tokens_B, 0) if pad_id < 0 else tokens_B


def _output(emitted: _Emitted) -> SampleOutput:
  return SampleOutput(emitted.response_ids, emitted.logprobs, emitted.response_mask,
                      emitted.values)


def _check_shapes(config: PolicyConfig, prompt_ids_BxLp: jax.Array,
                  max_response_length: int) -> None:
  if prompt_ids_BxLp.ndim != 2:
    raise ValueError(f'prompt_ids must be [batch, length], got shape {prompt_ids_BxLp.shape}')
  total = prompt_ids_BxLp.shape[1] + max_response_length
  if max_response_length < 1 or total > config.max_len:
    raise ValueError(f'prompt length {prompt_ids_BxLp.shape[1]} + max_response_length '
                     f'{max_response_length} must be in [1, PolicyConfig.max_len = '
                     f'{config.max_len}] (max_response_length >= 1)')


@functools.partial(jax.jit, static_argnames=('config', 'max_response_length', 'eos_id', 'pad_id'))
def sample(params: Params, config: PolicyConfig, prompt_ids: jax.Array, rng: jax.Array, *,
           max_response_length: int, temperature: float | jax.Array = 1.0,
           eos_id: int = EOS_ID, pad_id: int = PAD_ID) -> SampleOutput:
  """Samples responses [B, Lr] to right-padded prompts [B, Lp] with a KV cache.

  Prefills the prompts once, then decodes one token per step in a `lax.while_loop` that stops
  when every row has emitted EOS or Lr tokens. `rng` is one key or B row keys (module docstring).
  """
  _check_shapes(config, prompt_ids, max_response_length)
  batch, prompt_len = prompt_ids.shape
  row_keys = _row_keys(rng, batch)
  lengths_B = policy.prompt_lengths(prompt_ids, pad_id)
  last_B = jnp.maximum(lengths_B - 1, 0)
  logits_BxLxV, values_BxL, cache = policy.prefill(params, config, prompt_ids,
                                                   prompt_len + max_response_length)
  first_logits_BxV = policy.gather_positions(logits_BxLxV, last_B[:, None])[:, 0]
  first_values_B = policy.gather_positions(values_BxL, last_B[:, None])[:, 0]
  # Slot s < Lp holds prompt position s (or nothing past the prompt); slot Lp + t holds response
  # token t at position len_b + t, visible once written (from step t on).
  slots_S = jnp.arange(prompt_len + max_response_length)
  slot_positions_BxS = jnp.where(
      slots_S[None, :] < prompt_len,
      jnp.where(slots_S[None, :] < lengths_B[:, None], slots_S[None, :], policy.EMPTY_SLOT),
      lengths_B[:, None] + slots_S[None, :] - prompt_len)

  def keep_going(carry):
    step, emitted, *_ = carry
    return (step < max_response_length) & ~jnp.all(emitted.done_B)

  def decode(carry):
    step, emitted, cache, logits_BxV, values_B = carry
    emitted, tokens_B = _emit(emitted, row_keys, step, logits_BxV, values_B, temperature, eos_id,
                              pad_id)
    # Feeds token `step` at its row's position len_b + step; the last call's output is unused.
    logits_BxV, values_B, cache = policy.decode_step(params, config, tokens_B, lengths_B + step,
                                                     cache, prompt_len + step, slot_positions_BxS)
    return step + 1, emitted, cache, logits_BxV, values_B

  carry = (jnp.int32(0), _empty(batch, max_response_length), cache, first_logits_BxV,
           first_values_B)
  _, emitted, *_ = jax.lax.while_loop(keep_going, decode, carry)
  return _output(emitted)


@functools.partial(jax.jit, static_argnames=('config', 'max_response_length', 'eos_id', 'pad_id'))
def sample_without_cache(params: Params, config: PolicyConfig, prompt_ids: jax.Array,
                         rng: jax.Array, *, max_response_length: int,
                         temperature: float | jax.Array = 1.0,
                         eos_id: int = EOS_ID, pad_id: int = PAD_ID) -> SampleOutput:
  """`sample` recomputing the full forward pass at every step: O(Lr (Lp + Lr)^2), no cache.

  Same tokens as `sample` for the same key; a test oracle and a benchmark baseline.
  """
  _check_shapes(config, prompt_ids, max_response_length)
  batch = prompt_ids.shape[0]
  row_keys = _row_keys(rng, batch)

  def decode(step, emitted):
    tokens_BxL, prediction_positions_BxLr = policy.pack_prompt_response(
        prompt_ids, emitted.response_ids, pad_id)
    logits_BxLxV, values_BxL = policy.forward(params, config, tokens_BxL)
    position_Bx1 = jax.lax.dynamic_slice_in_dim(prediction_positions_BxLr, step, 1, axis=1)
    logits_BxV = policy.gather_positions(logits_BxLxV, position_Bx1)[:, 0]
    values_B = policy.gather_positions(values_BxL, position_Bx1)[:, 0]
    emitted, _ = _emit(emitted, row_keys, step, logits_BxV, values_B, temperature, eos_id,
                       pad_id)
    return emitted

  emitted = jax.lax.fori_loop(0, max_response_length, decode, _empty(batch, max_response_length))
  return _output(emitted)


def token_logprobs(logits_xV: jax.Array, tokens_x: jax.Array, temperature: float | jax.Array,
                   entropy_gradient: bool = True,
                   pad_id: int = PAD_ID) -> tuple[jax.Array, jax.Array]:
  """(log-prob of each token, entropy) under the sampling distribution of `logits_xV`.

  From the log-normaliser: log p(y) = z_y − logsumexp(z) and H = logsumexp(z) − Σ p z, with no
  [..., V] log-softmax array; the token's logit is picked by a one-hot product (its gradient is
  elementwise, where a gather's is a scatter). entropy_gradient=False: H is a statistic only.
  """
  scaled_xV = sampling_logits(logits_xV, temperature, pad_id)
  log_normalizer_x = jax.nn.logsumexp(scaled_xV, axis=-1)
  one_hot_xV = jax.nn.one_hot(tokens_x, scaled_xV.shape[-1], dtype=scaled_xV.dtype)
  logprobs_x = jnp.sum(one_hot_xV * scaled_xV, axis=-1) - log_normalizer_x
  if not entropy_gradient:
    scaled_xV, log_normalizer_x = jax.lax.stop_gradient((scaled_xV, log_normalizer_x))
  probs_xV = jnp.exp(scaled_xV - log_normalizer_x[..., None])
  entropy_x = log_normalizer_x - jnp.sum(probs_xV * scaled_xV, axis=-1)
  return logprobs_x, entropy_x


def response_logprobs(params: Params, config: PolicyConfig, prompt_ids: jax.Array,
                      response_ids: jax.Array, temperature: float | jax.Array = 1.0,
                      entropy_gradient: bool = True, pad_id: int = PAD_ID) -> ResponseScores:
  """Per-token log-probs, values and entropies of given responses, in one forward pass.

  Works for any policy with this config (π being trained, π0, the SFT model): for PPO the
  per-token KL penalty is logprobs_π − logprobs_π0, the ratio exp(logprobs_θ − logprobs_old).
  Use the sampling temperature (module docstring). Responses are [B, Lr], aligned at the
  response start, pad after EOS, no pad inside. Logits are computed at the response's
  prediction positions only. entropy_gradient=False stops the entropy's gradient (when it is
  only reported). Traceable; jit it with `config` static.
  """
  tokens_BxL, prediction_positions_BxLr = policy.pack_prompt_response(prompt_ids, response_ids,
                                                                      pad_id)
  logits_BxLrxV, values_BxLr = policy.forward_at(params, config, tokens_BxL,
                                                 prediction_positions_BxLr)
  logprobs_BxLr, entropy_BxLr = token_logprobs(logits_BxLrxV, response_ids, temperature,
                                               entropy_gradient, pad_id)
  mask_BxLr = response_mask(response_ids, pad_id)
  keep = mask_BxLr.astype(bool)
  return ResponseScores(logprobs=jnp.where(keep, logprobs_BxLr, 0.0),
                        values=jnp.where(keep, values_BxLr, 0.0),
                        entropy=jnp.where(keep, entropy_BxLr, 0.0),
                        response_mask=mask_BxLr)
