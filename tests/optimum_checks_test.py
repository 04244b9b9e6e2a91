"""Checks of the pooled optimum: ESS, half-pool gap, KL cap, and the share's interval."""
import numpy as np
import pytest

from lsc_align.align import optimum_checks


def test_ess_limits():
  u = np.array([[0.0, 1.0, 2.0, 3.0]])
  assert optimum_checks.effective_sample_size(u, 1e6)[0] == pytest.approx(4.0, rel=1e-4)
  assert optimum_checks.effective_sample_size(u, 1e-3)[0] == pytest.approx(1.0, rel=1e-4)
  # by hand at γ = 1: w ∝ e^0..e^3
  w = np.exp(u[0]) / np.exp(u[0]).sum()
  assert optimum_checks.effective_sample_size(u, 1.0)[0] == pytest.approx(1 / np.sum(w ** 2),
                                                                           rel=1e-5)


def test_pool_checks_trust_a_large_pool_at_large_gamma_only():
  rng = np.random.default_rng(0)
  u = rng.normal(size=(64, 512))
  big = optimum_checks.pool_checks(u, 2.0)   # KL* small, J*_N ≈ J*_{N/2}
  assert big['trusted'] and abs(big['half_pool_gap_of_gain']) < 0.01
  small = optimum_checks.pool_checks(u, 0.05)  # near best-of-N: KL* near log N, halves differ
  assert not small['trusted']
  assert small['half_pool_gap_of_gain'] > 0.01  # J* is biased low: a smaller pool gives less
  assert small['optimum_kl'] > small['kl_cap'] - 2.0


def test_share_interval_by_hand_and_covers():
  reached = np.array([1.0, 2.0, 3.0])
  best = np.array([2.0, 3.0, 4.0])
  base = np.zeros(3)
  out = optimum_checks.share_interval(reached, best, base, num_resamples=500)
  assert out['share'] == pytest.approx(6 / 9)
  assert out['share_low'] <= out['share'] <= out['share_high']
  with pytest.raises(ValueError, match='shape'):
    optimum_checks.share_interval(reached, best[:2], base)
