"""The closed-form optimum of the KL-regularised objective, estimated from π0 samples.

π*(y|x) ∝ π0(y|x) exp(u(x, y)/γ) (paper §2). With N samples y_j ~ π0(·|x), self-normalised
importance weights w_j = softmax_j(u_j / γ) give, per prompt,
  E_π*[f]        ≈ Σ_j w_j f(y_j)                       (any judge score f),
  KL(π* ‖ π0)    ≈ Σ_j w_j log(N w_j)  = E_w[u/γ] − log mean_j exp(u_j/γ),
  objective J*   = E_π*[u] − γ KL = γ log mean_j exp(u_j/γ)   (the soft value).
No optimiser is involved, so PPO's reached objective can be measured against J* at the same γ.
The estimates are biased low in KL when N is small relative to exp(KL); report N beside them.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike


def optimal_weights(utilities: ArrayLike, kl_coef: float) -> jax.Array:
  """w [P, N] = softmax(u/γ) over samples; the optimal policy restricted to the samples."""
  if not kl_coef > 0:
    raise ValueError(f'kl_coef (γ) must be > 0, got {kl_coef}')
  u = jnp.asarray(utilities, jnp.float32)
  if u.ndim != 2 or u.shape[1] == 0:
    raise ValueError(f'utilities must be [num_prompts, num_samples], got shape {u.shape}')
  return jax.nn.softmax(u / kl_coef, axis=-1)


def optimum_kl(utilities: ArrayLike, kl_coef: float) -> jax.Array:
  """Per-prompt KL(π* ‖ π0) ≈ Σ_j w_j log(N w_j) ∈ [0, log N]."""
  u = jnp.asarray(utilities, jnp.float32) / kl_coef
  w = optimal_weights(utilities, kl_coef)
  log_mean_exp = jax.nn.logsumexp(u, axis=-1) - jnp.log(u.shape[-1])
  return jnp.sum(w * u, axis=-1) - log_mean_exp


def optimum_objective(utilities: ArrayLike, kl_coef: float) -> jax.Array:
  """Per-prompt J* = E_π*[u] − γ KL(π* ‖ π0) = γ log mean_j exp(u_j/γ)."""
  u = jnp.asarray(utilities, jnp.float32)
  optimal_weights(u, kl_coef)  # validates
  return kl_coef * (jax.nn.logsumexp(u / kl_coef, axis=-1) - jnp.log(u.shape[-1]))


def optimum_expectation(utilities: ArrayLike, kl_coef: float, scores: ArrayLike) -> jax.Array:
  """Per-prompt E_π*[score] for scores [P, N] or [P, N, K] (e.g. judge helpful, harmless)."""
  w = optimal_weights(utilities, kl_coef)
  scores = jnp.asarray(scores, jnp.float32)
  if scores.shape[:2] != w.shape:
    raise ValueError(f'scores shape {scores.shape} does not start with utilities shape {w.shape}')
  w = w.reshape(w.shape + (1,) * (scores.ndim - 2))
  return jnp.sum(w * scores, axis=1)


def objective_fraction(reached: float, optimum: float, baseline: float) -> float:
  """(J_ppo − J_π0) / (J* − J_π0): the share of the attainable gain over π0 that PPO reached.

  J_π0 = E_π0[u] (KL 0) is the baseline; raw objectives are not scale-free, so the gain, not
  the objective itself, is compared.
  """
  gain = optimum - baseline
  if not np.isfinite(gain) or gain <= 0:
    raise ValueError(f'optimum {optimum} does not exceed the π0 baseline {baseline}')
  return float((reached - baseline) / gain)
