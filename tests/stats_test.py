"""lsc_align.stats against values computed by hand."""
import math

import pytest

from lsc_align import stats


def test_wilson_interval_known_values():
  # p = 1/2, n = 10, z = 1.96: centre 0.5, half-width z·sqrt(1/40 + z²/400) / (1 + z²/10).
  z = stats.Z_95
  half = z * math.sqrt(0.25 / 10 + z * z / 400) / (1 + z * z / 10)
  assert stats.wilson_interval(5, 10) == pytest.approx((0.5 - half, 0.5 + half))
  low, high = stats.wilson_interval(0, 20)
  assert low == 0.0 and 0.0 < high < 0.2  # never below 0, unlike the Wald interval
  assert all(math.isnan(x) for x in stats.wilson_interval(0, 0))
