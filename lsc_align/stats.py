"""Small statistics shared across layers (trainers, the world's diagnostics, evaluation)."""
from __future__ import annotations

import math

Z_95 = 1.959963984540054  # Φ⁻¹(0.975)


def wilson_interval(successes: float, n: int, z: float = Z_95) -> tuple[float, float]:
  """Wilson score interval of a binomial proportion (95% by default); NaNs when n = 0."""
  if n <= 0:
    return (math.nan, math.nan)
  p = successes / n
  denominator = 1.0 + z * z / n
  center = (p + z * z / (2 * n)) / denominator
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
  return (max(0.0, center - half), min(1.0, center + half))
