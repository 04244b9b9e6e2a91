"""KL divergences with closed forms."""
from __future__ import annotations

import numpy as np
from jax.typing import ArrayLike


def best_of_k_kl(k: ArrayLike) -> np.ndarray:
  """KL(π_bok ‖ π0) = log k − (k − 1)/k for best-of-k with continuous, untied utilities.

  (Beirami et al. 2024 show this is an upper bound in general; it is the value the paper
  plots best-of-k against.) Accepts an int or an array of ints ≥ 1.
  """
  k_arr = np.asarray(k)
  if k_arr.size == 0:
    raise ValueError('best_of_k_kl: no k given')
  if not np.all(np.isfinite(k_arr)) or np.any(k_arr < 1) or np.any(k_arr != np.round(k_arr)):
    raise ValueError(f'best_of_k_kl: k must be integers >= 1, got {k!r}')
  k_arr = k_arr.astype(np.float64)
  return np.log(k_arr) - (k_arr - 1.0) / k_arr
