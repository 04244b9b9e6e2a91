"""Tests for the closed-form optimum and best-of-k selection."""
import numpy as np
import pytest

from lsc_align.rewards import transforms
from lsc_align.align import best_of_k, optimum


def test_optimum_kl_and_objective_match_definitions():
  rng = np.random.default_rng(0)
  u = rng.normal(size=(5, 64)).astype(np.float32)
  gamma = 0.3
  w = np.exp(u / gamma) / np.exp(u / gamma).sum(1, keepdims=True)
  kl = np.sum(w * np.log(64 * w), axis=1)
  np.testing.assert_allclose(optimum.optimum_kl(u, gamma), kl, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(optimum.optimum_objective(u, gamma),
                             np.sum(w * u, 1) - gamma * kl, rtol=1e-4, atol=1e-5)
  assert np.all(np.asarray(optimum.optimum_kl(u, gamma)) <= np.log(64) + 1e-5)


def test_optimum_beats_best_of_k_and_pi0_at_same_gamma():
  # J* maximises E_q[u] − γ KL(q‖uniform) over distributions q on the samples.
  rng = np.random.default_rng(1)
  u = rng.normal(size=(3, 32))
  gamma = 0.5
  j_star = np.asarray(optimum.optimum_objective(u, gamma))
  assert np.all(j_star >= u.mean(1) - 1e-6)           # q = π0: KL 0
  q = np.zeros_like(u)
  q[np.arange(3), u.argmax(1)] = 1.0                  # q = argmax: KL log N
  assert np.all(j_star >= u.max(1) - gamma * np.log(32) - 1e-6)


def test_centering_only_gives_exactly_the_raw_tilted_policy():
  rng = np.random.default_rng(2)
  r = rng.normal(0, 2, size=(4, 50)).astype(np.float32)
  r_ref = rng.normal(0, 5, size=(4, 1)).astype(np.float32)
  w_raw = optimum.optimal_weights(transforms.raw(r), 0.7)
  w_centered = optimum.optimal_weights(transforms.centered(r, r_ref), 0.7)
  np.testing.assert_allclose(w_centered, w_raw, rtol=1e-5, atol=1e-7)


def test_lsc_optimum_unchanged_by_per_prompt_shift_but_log_sigmoid_is_not():
  rng = np.random.default_rng(3)
  r = rng.normal(0, 2, size=(4, 50)).astype(np.float32)
  r_ref = rng.normal(0, 1, size=(4, 1)).astype(np.float32)
  c = rng.normal(0, 4, size=(4, 1)).astype(np.float32)
  w = optimum.optimal_weights(transforms.lsc(r, r_ref), 0.2)
  w_shift = optimum.optimal_weights(transforms.lsc(r + c, r_ref + c), 0.2)
  np.testing.assert_allclose(w_shift, w, rtol=1e-4, atol=1e-6)
  w_ls = optimum.optimal_weights(transforms.pointwise(r), 0.2)
  w_ls_shift = optimum.optimal_weights(transforms.pointwise(r + c), 0.2)
  assert np.max(np.abs(np.asarray(w_ls_shift - w_ls))) > 1e-2


def test_optimum_expectation_and_limits():
  u = np.array([[0.0, 1.0, 2.0]])
  scores = np.array([[[1.0, 0.0], [2.0, 0.0], [3.0, 1.0]]])
  np.testing.assert_allclose(optimum.optimum_expectation(u, 1e4, scores), [[2.0, 1 / 3]],
                             rtol=1e-3)
  np.testing.assert_allclose(optimum.optimum_expectation(u, 1e-3, scores), [[3.0, 1.0]])
  assert float(optimum.optimum_kl(u, 1e4)[0]) == pytest.approx(0.0, abs=1e-4)
  with pytest.raises(ValueError, match='γ'):
    optimum.optimal_weights(u, 0.0)


def test_objective_fraction():
  assert optimum.objective_fraction(0.9, 1.0, 0.0) == pytest.approx(0.9)
  with pytest.raises(ValueError, match='does not exceed'):
    optimum.objective_fraction(0.9, 0.0, 0.0)


def test_best_of_k_selection_reuses_one_pool():
  u = np.array([[0.1, 0.5, 0.3, 0.9], [2.0, 1.0, 3.0, 0.0]])
  sweep = best_of_k.best_of_k_sweep(u, [1, 2, 3, 4], scores=u[..., None])
  assert [list(r['selected']) for r in sweep] == [[0, 0], [1, 0], [1, 2], [3, 2]]
  assert sweep[0]['kl'] == 0.0 and sweep[3]['kl'] == pytest.approx(np.log(4) - 0.75)
  np.testing.assert_array_equal(best_of_k.pool_utilities_max(u)[:, 2],
                                [r['scores'][:, 0] for r in sweep][2])
  with pytest.raises(ValueError, match='k = 5'):
    best_of_k.select_best_of_k(u, 5)
  with pytest.raises(ValueError, match='NaN utility for prompt 1, sample 0'):
    best_of_k.select_best_of_k(np.array([[0.0, 1.0], [np.nan, 0.0]]), 2)
