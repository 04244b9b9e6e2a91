"""PPO's math as pure functions: per-token rewards, GAE, whitening, the clipped losses.

Conventions: sequences are the response tokens only, shape [B, L], with `mask` 1 on real tokens
(up to and including EOS) and 0 on padding. The KL coefficient of the alignment objective is γ
(`kl_coef`, paper §2: max E[u] − γ KL); the discount of GAE is `discount` (1.0 for RLHF).
"""
from __future__ import annotations


import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


def kl_coef_from_alpha(alpha: float) -> float:
  """γ from the paper's α = γ / (1 + γ), i.e. γ = α / (1 − α); α must be in (0, 1)."""
  if not 0.0 < alpha < 1.0:
    raise ValueError(f'alpha must be in (0, 1), got {alpha}')
  return alpha / (1.0 - alpha)


def alpha_from_kl_coef(kl_coef: float) -> float:
  return kl_coef / (1.0 + kl_coef)


def last_token_index(mask: ArrayLike) -> jax.Array:
  """Index of the last real token per row (0 for an all-padding row)."""
  mask = jnp.asarray(mask)
  positions = jnp.arange(mask.shape[-1])
  return jnp.max(jnp.where(mask > 0, positions, 0), axis=-1)


def token_rewards(utility: ArrayLike, logprobs: ArrayLike, ref_logprobs: ArrayLike,
                  mask: ArrayLike, kl_coef: float | jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-token rewards: −γ (log π − log π0) on every token, plus u(x, y) at the last token.

  Returns:
    (rewards [B, L], per-token KL estimate [B, L]); both zero on padding. Summed over tokens
    the rewards are u − γ · log(π(y|x)/π0(y|x)), a single-sample estimate of the objective.
  """
  mask = jnp.asarray(mask, jnp.float32)
  kl = (jnp.asarray(logprobs) - jnp.asarray(ref_logprobs)) * mask
  last = jax.nn.one_hot(last_token_index(mask), mask.shape[-1], dtype=jnp.float32) * mask
  rewards = -kl_coef * kl + last * jnp.asarray(utility, jnp.float32)[:, None]
  return rewards, kl


def gae_advantages(rewards: ArrayLike, values: ArrayLike, mask: ArrayLike, discount: float,
                   gae_lambda: float) -> tuple[jax.Array, jax.Array]:
  """Generalised advantage estimation over response tokens.

  δ_t = r_t + discount · V_{t+1} · m_{t+1} − V_t;  A_t = δ_t + discount · λ · m_{t+1} · A_{t+1}.
  The value after the last real token is 0 (the episode ends at EOS or the length limit).

  Returns:
    (advantages [B, L], returns = advantages + values [B, L]), zero on padding.
  """
  rewards = jnp.asarray(rewards, jnp.float32)
  values = jnp.asarray(values, jnp.float32)
  mask = jnp.asarray(mask, jnp.float32)
  next_mask = jnp.concatenate([mask[:, 1:], jnp.zeros_like(mask[:, :1])], axis=1)
  next_values = jnp.concatenate([values[:, 1:], jnp.zeros_like(values[:, :1])], axis=1)
  deltas = (rewards + discount * next_values * next_mask - values) * mask

  def step(carry, xs):
    delta, nmask = xs
    adv = delta + discount * gae_lambda * nmask * carry
    return adv, adv

  _, adv_rev = jax.lax.scan(step, jnp.zeros(rewards.shape[0]),
                            (deltas.T[::-1], next_mask.T[::-1]))
  advantages = adv_rev[::-1].T * mask
  return advantages, (advantages + values) * mask


def masked_mean(x: ArrayLike, mask: ArrayLike) -> jax.Array:
  mask = jnp.asarray(mask, jnp.float32)
  return jnp.sum(jnp.asarray(x) * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def whiten(x: ArrayLike, mask: ArrayLike, shift_mean: bool = True) -> jax.Array:
  """(x − mean) / std over the real tokens of the batch; padding stays 0."""
  x = jnp.asarray(x, jnp.float32)
  mean = masked_mean(x, mask)
  var = masked_mean((x - mean) ** 2, mask)
  out = (x - mean) * jax.lax.rsqrt(var + 1e-8)
  if not shift_mean:
    out = out + mean
  return out * jnp.asarray(mask, jnp.float32)


def policy_loss(logprobs: ArrayLike, old_logprobs: ArrayLike, advantages: ArrayLike,
                mask: ArrayLike, clip_ratio: float) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Clipped surrogate −E[min(ρ A, clip(ρ, 1 ± ε) A)] with ρ = π/π_old per token."""
  log_ratio = jnp.asarray(logprobs) - jnp.asarray(old_logprobs)
  ratio = jnp.exp(log_ratio)
  advantages = jnp.asarray(advantages)
  unclipped = -advantages * ratio
  clipped = -advantages * jnp.clip(ratio, 1.0 - clip_ratio, 1.0 + clip_ratio)
  loss = masked_mean(jnp.maximum(unclipped, clipped), mask)
  stats = {
      'clip_fraction': masked_mean((clipped > unclipped).astype(jnp.float32), mask),
      # k3 estimator of KL(π_old ‖ π): E[(ρ − 1) − log ρ] ≥ 0, low variance.
      'approx_kl': masked_mean(ratio - 1.0 - log_ratio, mask),
  }
  return loss, stats


def value_loss(values: ArrayLike, old_values: ArrayLike, returns: ArrayLike, mask: ArrayLike,
               value_clip: float | None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Clipped value loss ½ E[max((V − R)², (clip(V, V_old ± c) − R)²)]; c = None: ½ E[(V − R)²]."""
  values = jnp.asarray(values)
  old_values = jnp.asarray(old_values)
  returns = jnp.asarray(returns)
  if value_clip is None:
    return 0.5 * masked_mean((values - returns) ** 2, mask), {
        'value_clip_fraction': jnp.zeros((), jnp.float32)}
  clipped_values = old_values + jnp.clip(values - old_values, -value_clip, value_clip)
  losses = jnp.maximum((values - returns) ** 2, (clipped_values - returns) ** 2)
  loss = 0.5 * masked_mean(losses, mask)
  stats = {'value_clip_fraction': masked_mean(
      ((clipped_values - returns) ** 2 > (values - returns) ** 2).astype(jnp.float32), mask)}
  return loss, stats
