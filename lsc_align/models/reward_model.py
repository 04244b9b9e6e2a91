"""Reward models on a T5 encoder: a scalar r(x, y) and the Gaussian reference r_mean(x), r_std(x).

The input is one encoder sequence, prompt x followed by response y (`pack_encoder_input`).
Parameter trees are flat: `token_embedder/`, `encoder/` (T5X names, see t5_encoder) beside the
heads, so T5X encoder weights drop in and go back out unchanged (t5x_checkpoint).

Pooling. `'mean'` (default) averages the final encodings over all non-pad tokens; `'last'` takes
the encoding at the last non-pad token (the response's end). The encoder is bidirectional, so
every position already sees the whole of x ++ y; what pooling changes is noise, not reach. The
mean uses every position (lower-variance features, the choice that worked best for T5 sentence
encoders) and does not depend on an end-of-sequence token surviving truncation, whereas 'last'
is the decoder-style choice and is kept for comparison.

Losses are pure functions of rewards (no model inside), all returning one value per example:
  bradley_terry_loss    -log σ(r(x, y+) − r(x, y−))              (BT likelihood, docs/DESIGN.md §1)
  soft_bradley_terry_loss  the same against a target probability p(y+ > y−)
  pointwise_logistic_loss  binary cross-entropy with r as the logit (u = log σ(r))
  gaussian_regression_loss  squared error of r_mean and of r_std against per-prompt sample
                            mean / std of π0's rewards (r_ref = r_mean + s·r_std)
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from lsc_align.models import t5_encoder

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
POOLINGS = ('mean', 'last')


@gin.configurable
@dataclasses.dataclass(frozen=True)
class RewardModelConfig:
  """A T5 encoder plus a pooled linear head."""
  encoder: t5_encoder.T5EncoderConfig = t5_encoder.T5EncoderConfig()
  pooling: str = 'mean'
  head_bias: bool = True  # BT is blind to it; the pointwise loss and r_mean need it
  min_std: float = 1e-3   # floor under softplus for r_std(x), so 1/std stays bounded

  def __post_init__(self):
    if self.pooling not in POOLINGS:
      raise ValueError(f'RewardModelConfig.pooling {self.pooling!r} must be one of {POOLINGS}')
    if self.min_std < 0:
      raise ValueError(f'RewardModelConfig.min_std must be >= 0, got {self.min_std}')


def pack_encoder_input(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
                         max_length: int,
                         max_response_length: int | None = None) -> dict[str, np.ndarray]:
  """Packs x ++ y per example into one right-padded int32 row of `max_length`.

  Budget: the response keeps its first `max(max_response_length, max_length - len(x))` tokens
  (default `max_response_length` = max_length // 2), so a short prompt leaves room to the
  response and a long prompt cannot crowd it out; the prompt fills the rest, keeping its END
  (the latest dialogue turn, the one the response answers).

  Returns:
    {'tokens': [B, max_length], 'response_mask': [B, max_length] (1 on response tokens)}.

  Raises:
    ValueError: lengths differ, max_length < 1, or an id is <= 0 (0 is padding).
  """
  if len(prompts) != len(responses):
    raise ValueError(f'{len(prompts)} prompts but {len(responses)} responses')
  if max_length < 1:
    raise ValueError(f'max_length must be >= 1, got {max_length}')
  cap = max_length // 2 if max_response_length is None else int(max_response_length)
  tokens = np.zeros((len(prompts), max_length), np.int32)
  response_mask = np.zeros((len(prompts), max_length), np.int32)
  for i, (prompt, response) in enumerate(zip(prompts, responses)):
    prompt, response = np.asarray(prompt, np.int64), np.asarray(response, np.int64)
    if (prompt <= 0).any() or (response <= 0).any():
      raise ValueError(f'example {i}: token ids must be > 0 (0 is padding)')
    n_response = min(len(response), max(cap, max_length - len(prompt)), max_length)
    n_prompt = min(len(prompt), max_length - n_response)
    row = np.concatenate([prompt[len(prompt) - n_prompt:], response[:n_response]])
    tokens[i, :len(row)] = row
    response_mask[i, n_prompt:len(row)] = 1
  return {'tokens': tokens, 'response_mask': response_mask}


def pool(encoded_BxLxE: Array, tokens_BxL: Array, pooling: str) -> Array:
  """Pools encodings over non-pad positions ('mean') or at the last non-pad one ('last')."""
  real = (tokens_BxL > 0)
  if pooling == 'mean':
    weights = real.astype(jnp.float32)
    total = jnp.einsum('bl,ble->be', weights, encoded_BxLxE.astype(jnp.float32))
    return total / jnp.maximum(weights.sum(axis=1, keepdims=True), 1.0)  # all-pad row -> 0
  if pooling == 'last':
    positions = jnp.arange(tokens_BxL.shape[1])
    last = jnp.max(jnp.where(real, positions, 0), axis=1)
    return jnp.take_along_axis(encoded_BxLxE, last[:, None, None], axis=1)[:, 0].astype(
        jnp.float32)
  raise ValueError(f'pooling {pooling!r} must be one of {POOLINGS}')


class ScalarHead(nn.Module):
  """Linear map from the pooled encoding to one float32 scalar per example."""
  use_bias: bool = True

  @nn.compact
  def __call__(self, pooled_BxE: Array) -> Array:
    kernel = self.param('kernel', nn.with_logical_partitioning(
        nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal'), ('embed', None)),
                        (pooled_BxE.shape[-1], 1), jnp.float32)
    out = jnp.dot(pooled_BxE.astype(jnp.float32), kernel)[:, 0]
    if self.use_bias:
      out = out + self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros, (None,)),
                             (1,), jnp.float32)[0]
    return out


class RewardModel(nn.Module):
  """r(x, y): packed tokens [B, L] -> rewards [B] (float32).

  `model.init(rng, tokens)`; `model.apply(variables, tokens, deterministic=False,
  rngs={'dropout': key})` when training with dropout.
  """
  config: RewardModelConfig

  def setup(self):
    enc = self.config.encoder
    self.token_embedder = t5_encoder.Embed(enc.vocab_size, enc.emb_dim, enc.activation_dtype)
    self.encoder = t5_encoder.Encoder(enc, shared_embedding=self.token_embedder)
    self.reward_head = ScalarHead(self.config.head_bias)

  def __call__(self, tokens_BxL: Array, *, deterministic: bool = True) -> Array:
    encoded = self.encoder(tokens_BxL, deterministic)
    return self.reward_head(pool(encoded, tokens_BxL, self.config.pooling))


class GaussianReferenceModel(nn.Module):
  """(r_mean(x), r_std(x)) from prompt-only tokens [B, L]; std = softplus(.) + min_std > 0.

  The reference reward is r_ref(x) = r_mean(x) + s·r_std(x), s = Φ⁻¹(q) (docs/DESIGN.md §1).
  """
  config: RewardModelConfig

  def setup(self):
    if not self.config.min_std > 0:  # the floor is what keeps r_std(x) > 0 for any input
      raise ValueError(f'GaussianReferenceModel needs RewardModelConfig.min_std > 0 (r_std(x) = '
                       f'softplus(.) + min_std must stay positive), got {self.config.min_std}')
    enc = self.config.encoder
    self.token_embedder = t5_encoder.Embed(enc.vocab_size, enc.emb_dim, enc.activation_dtype)
    self.encoder = t5_encoder.Encoder(enc, shared_embedding=self.token_embedder)
    self.mean_head = ScalarHead(True)
    self.std_head = ScalarHead(True)

  def __call__(self, tokens_BxL: Array, *,
               deterministic: bool = True) -> tuple[Array, Array]:
    pooled = pool(self.encoder(tokens_BxL, deterministic), tokens_BxL, self.config.pooling)
    return self.mean_head(pooled), jax.nn.softplus(self.std_head(pooled)) + self.config.min_std


def pair_rewards(model: RewardModel, variables: Any, chosen_BxL: Array, rejected_BxL: Array, *,
                 deterministic: bool = True,
                 rngs: dict[str, Array] | None = None) -> tuple[Array, Array]:
  """(r(x, y+), r(x, y−)) from one forward pass over the stacked [2B, L] batch."""
  if chosen_BxL.shape != rejected_BxL.shape:
    raise ValueError(f'chosen {chosen_BxL.shape} and rejected {rejected_BxL.shape} differ')
  rewards = model.apply(variables, jnp.concatenate([chosen_BxL, rejected_BxL], axis=0),
                        deterministic=deterministic, rngs=rngs)
  chosen, rejected = jnp.split(rewards, 2)
  return chosen, rejected


def bradley_terry_loss(chosen_rewards: ArrayLike, rejected_rewards: ArrayLike) -> Array:
  """Negative BT log-likelihood per pair, −log σ(r+ − r−); finite for any finite margin.

  Example: bradley_terry_loss(1.0, 0.0) = log(1 + e^−1) ≈ 0.3133.
  """
  margin = jnp.asarray(chosen_rewards, jnp.float32) - jnp.asarray(rejected_rewards, jnp.float32)
  return -jax.nn.log_sigmoid(margin)


def soft_bradley_terry_loss(chosen_rewards: ArrayLike, rejected_rewards: ArrayLike,
                            p_chosen: ArrayLike) -> Array:
  """BT cross-entropy against a target probability p that y+ beats y−, per pair.

  −[p log σ(m) + (1 − p) log σ(−m)], m = r+ − r−. With p = 1 it is `bradley_terry_loss`; with the
  labelling model's own p (known on the embedded world) it removes the label-sampling noise.
  """
  margin = jnp.asarray(chosen_rewards, jnp.float32) - jnp.asarray(rejected_rewards, jnp.float32)
  p = jnp.asarray(p_chosen, jnp.float32)
  return -(p * jax.nn.log_sigmoid(margin) + (1.0 - p) * jax.nn.log_sigmoid(-margin))


def pairwise_accuracy(chosen_rewards: ArrayLike, rejected_rewards: ArrayLike) -> Array:
  """Fraction of pairs ranked correctly (r+ > r−); a tie counts one half."""
  margin = jnp.asarray(chosen_rewards, jnp.float32) - jnp.asarray(rejected_rewards, jnp.float32)
  return jnp.mean(jnp.where(margin > 0, 1.0, jnp.where(margin == 0, 0.5, 0.0)))


def pointwise_logistic_loss(logits: ArrayLike, labels: ArrayLike) -> Array:
  """Binary cross-entropy per example with r as the logit: −[y log σ(r) + (1−y) log σ(−r)].

  Labels may be soft (in [0, 1]). Matches the pointwise utility u = log σ(r).
  """
  logits = jnp.asarray(logits, jnp.float32)
  labels = jnp.asarray(labels, jnp.float32)
  return -(labels * jax.nn.log_sigmoid(logits) + (1.0 - labels) * jax.nn.log_sigmoid(-logits))


def gaussian_regression_loss(mean_pred: ArrayLike, std_pred: ArrayLike, mean_target: ArrayLike,
                             std_target: ArrayLike) -> Array:
  """(r_mean − m)² + (r_std − s)² per prompt, m/s = sample mean/std of π0's rewards for x.

  Squared error, not Gaussian likelihood: each regressor then estimates its own statistic
  (the minimiser is the conditional mean of m and of s). Under a Gaussian NLL the predicted
  std also absorbs the mean's prediction error, inflating r_std and moving the quantile
  reference r_mean + s·r_std (`gaussian_moment_nll` is kept for comparison).
  """
  mean_err = jnp.asarray(mean_pred, jnp.float32) - jnp.asarray(mean_target, jnp.float32)
  std_err = jnp.asarray(std_pred, jnp.float32) - jnp.asarray(std_target, jnp.float32)
  return jnp.square(mean_err) + jnp.square(std_err)


def gaussian_moment_nll(mean_pred: ArrayLike, std_pred: ArrayLike, mean_target: ArrayLike,
                        std_target: ArrayLike) -> Array:
  """Average Gaussian NLL of the samples given only their mean m and (biased) std s.

  (1/n) Σ_i −log N(r_i; μ, σ) = log σ + ((m − μ)² + s²) / (2σ²) + log √(2π).
  """
  mu = jnp.asarray(mean_pred, jnp.float32)
  sigma = jnp.asarray(std_pred, jnp.float32)
  m = jnp.asarray(mean_target, jnp.float32)
  s = jnp.asarray(std_target, jnp.float32)
  return (jnp.log(sigma) + (jnp.square(m - mu) + jnp.square(s)) / (2.0 * jnp.square(sigma))
          + 0.5 * jnp.log(2.0 * jnp.pi))
