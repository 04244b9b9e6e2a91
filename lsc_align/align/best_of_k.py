"""Best-of-k selection from one pool of π0 samples, reused across k (paper §5).

For each prompt the first k samples of the pool are the k draws; the selected sample is the one
with the highest utility among them. Reusing one pool makes the curves over k comparable and
costs N = max(k) samples per prompt instead of Σ k.
"""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from lsc_align.rewards import kl as kl_lib


def select_best_of_k(utilities: ArrayLike, k: int) -> np.ndarray:
  """Index into the pool [P] of the highest-utility sample among the first k of each prompt."""
  u = np.asarray(utilities)
  if u.ndim != 2:
    raise ValueError(f'utilities must be [num_prompts, pool_size], got shape {u.shape}')
  if not 1 <= k <= u.shape[1]:
    raise ValueError(f'k = {k} must be in [1, pool size {u.shape[1]}]')
  if np.isnan(u[:, :k]).any():
    p, j = np.argwhere(np.isnan(u[:, :k]))[0]
    raise ValueError(f'NaN utility for prompt {p}, sample {j}')
  return np.argmax(u[:, :k], axis=1)


def best_of_k_sweep(utilities: ArrayLike, ks: Sequence[int],
                    scores: ArrayLike | None = None) -> list[dict[str, object]]:
  """For each k: selected indices, analytic KL log k − (k−1)/k, and mean scores of the picks.

  Args:
    utilities: [P, N] utility of each pooled π0 sample.
    ks: the k values (each ≤ N).
    scores: optional [P, N, S] judge scores to average over the selected samples.
  """
  out = []
  for k in ks:
    idx = select_best_of_k(utilities, int(k))
    row: dict[str, object] = {'k': int(k), 'kl': float(kl_lib.best_of_k_kl(int(k))),
                              'selected': idx}
    if scores is not None:
      s = np.asarray(scores)
      row['scores'] = s[np.arange(s.shape[0]), idx]
    out.append(row)
  return out


def pool_utilities_max(utilities: ArrayLike) -> jnp.ndarray:
  """Running max of utility over the pool, [P, N]: the utility of best-of-k for every k."""
  return jnp.asarray(np.maximum.accumulate(np.asarray(utilities), axis=1))
