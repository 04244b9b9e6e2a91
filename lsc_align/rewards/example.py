"""`lsc-align example`: the paper's two worked examples, computed with the reward library.

1. Diminishing returns. Against a reference response, y0 wins with p = 0.99 and y1 with
   p = 0.999. A BT reward puts r(y) − r_ref = logit p, so the raw utility's optimal policy tilts
   y1 over y0 by exp(logit .999 − logit .99) ≈ 10.09×; the LSC utility by .999/.99 ≈ 1.009×.
2. AND aggregation. y1 beats references A and B each with p = 0.9; y0 beats A with 0.45 and B
   with 0.99. The raw sum is indifferent (ratio 1); the sum of LSC rewards prefers y1 by
   (.9 · .9)/(.45 · .99) ≈ 1.82×, because y0 is bad on one property.
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from lsc_align.rewards import aggregate, make_objective


def _logit(p: float) -> float:
  return float(np.log(p) - np.log1p(-p))


def worked_examples() -> dict[str, float]:
  """Policy tilt ratios π*(y1)/π*(y0) at γ = 1 for the paper's two examples."""
  single_raw = make_objective('raw', ['helpful'], 'raw')
  single_lsc = make_objective('lsc', ['helpful'], 'lsc', {'helpful': ('quantile', 0.5)})

  def tilt(objective, p1: tuple[float, ...], p0: tuple[float, ...]) -> float:
    r1 = np.array([[_logit(p) for p in p1]], np.float32)
    r0 = np.array([[_logit(p) for p in p0]], np.float32)
    refs = np.zeros_like(r1)
    u1 = aggregate.utility(r1, refs, objective)
    u0 = aggregate.utility(r0, refs, objective)
    return float(np.exp(u1 - u0)[0])

  pair_raw = make_objective('raw_sum', ['helpful', 'harmless'], 'raw',
                            weights={'helpful': 1.0, 'harmless': 1.0})
  pair_lsc = make_objective('lsc_sum', ['helpful', 'harmless'], 'lsc',
                            {'helpful': ('quantile', 0.5), 'harmless': ('quantile', 0.5)})
  return {
      'diminishing_returns_raw_tilt': tilt(single_raw, (0.999,), (0.99,)),
      'diminishing_returns_lsc_tilt': tilt(single_lsc, (0.999,), (0.99,)),
      'and_aggregation_raw_sum_tilt': tilt(pair_raw, (0.9, 0.9), (0.45, 0.99)),
      'and_aggregation_lsc_sum_tilt': tilt(pair_lsc, (0.9, 0.9), (0.45, 0.99)),
  }


def main(args: argparse.Namespace | None = None) -> int:
  del args
  print(__doc__.strip())
  print(json.dumps(worked_examples(), indent=2))
  return 0
