"""How far to trust the pooled estimate of the optimum J* (align/optimum.py), and the share of it.

J*_N = γ log mean_j exp(u_j/γ) over N π0 samples is biased low (Jensen) and its KL is capped at
log N, so at small γ it degrades towards best-of-N. Three checks, per prompt where it matters:

* effective sample size of the tilted weights, ESS = 1 / Σ_j w_j² (N when γ → ∞, 1 at best-of-1);
* J*_N against J*_{N/2} (the mean over the pool's two halves): if halving the pool moves J* by
  more than 1% of the gain J* − J_π0, the pool is too small for this γ;
* KL* ≤ log N − 2: only then is a comparison at the optimum's KL not pinned by the pool's size.

The share (J − J_π0)/(J* − J_π0) of a policy gets a bootstrap interval over prompts (prompts
resampled together for J, J* and J_π0).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from jax.typing import ArrayLike

from lsc_align.align import optimum


def effective_sample_size(utilities: ArrayLike, kl_coef: float) -> np.ndarray:
  """Per-prompt ESS = 1 / Σ_j w_j² of the weights softmax(u/γ): [P], in [1, N]."""
  w = np.asarray(optimum.optimal_weights(utilities, kl_coef), np.float64)
  return 1.0 / np.sum(w ** 2, axis=1)


def pool_checks(utilities: ArrayLike, kl_coef: float) -> dict[str, Any]:
  """The three checks of the module docstring for one utility table [P, N] and γ."""
  u = np.asarray(utilities, np.float64)
  n = u.shape[1]
  if n < 2:
    raise ValueError(f'need at least 2 samples per prompt, got {n}')
  j_full = np.asarray(optimum.optimum_objective(u, kl_coef), np.float64)
  half = n // 2
  j_half = 0.5 * (np.asarray(optimum.optimum_objective(u[:, :half], kl_coef), np.float64)
                  + np.asarray(optimum.optimum_objective(u[:, half:2 * half], kl_coef),
                               np.float64))
  gain = float(j_full.mean() - u.mean())
  kl = float(np.mean(optimum.optimum_kl(u, kl_coef)))
  ess = effective_sample_size(u, kl_coef)
  half_gap = float(j_full.mean() - j_half.mean())
  return {
      'pool_size': n, 'gamma': float(kl_coef), 'optimum_objective': float(j_full.mean()),
      'optimum_objective_half_pool': float(j_half.mean()), 'gain': gain,
      'half_pool_gap_of_gain': half_gap / gain if gain > 0 else None,
      'optimum_kl': kl, 'kl_cap': float(np.log(n)),
      'ess_median': float(np.median(ess)), 'ess_min': float(ess.min()),
      'ess_mean_fraction': float(ess.mean() / n),
      'trusted': bool(gain > 0 and abs(half_gap) <= 0.01 * gain and kl <= np.log(n) - 2.0),
  }


def share_interval(reached: ArrayLike, optimum_per_prompt: ArrayLike, baseline: ArrayLike,
                   num_resamples: int = 2000, level: float = 0.95,
                   seed: int = 0) -> dict[str, float]:
  """Share (mean J − mean J_π0)/(mean J* − mean J_π0) and its bootstrap interval over prompts.

  Args:
    reached: per-prompt J of the policy [P] (u − γ KL averaged over its samples).
    optimum_per_prompt: per-prompt J* [P].
    baseline: per-prompt J_π0 = E_π0[u] [P].
  """
  reached, best, base = (np.asarray(a, np.float64) for a in (reached, optimum_per_prompt,
                                                              baseline))
  if not reached.shape == best.shape == base.shape or reached.ndim != 1:
    raise ValueError(f'per-prompt arrays of one shape [P], got {reached.shape}, {best.shape}, '
                     f'{base.shape}')

  def share(idx: np.ndarray) -> float:
    return float((reached[idx].mean() - base[idx].mean()) / (best[idx].mean() - base[idx].mean()))

  p = reached.shape[0]
  rng = np.random.default_rng(seed)
  draws = np.array([share(rng.integers(0, p, p)) for _ in range(num_resamples)])
  alpha = (1.0 - level) / 2
  return {'share': share(np.arange(p)), 'share_low': float(np.quantile(draws, alpha)),
          'share_high': float(np.quantile(draws, 1 - alpha))}
