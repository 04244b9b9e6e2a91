"""Tests for lsc_align.rewards.reference and kl."""
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from lsc_align.rewards import kl, reference


@pytest.mark.parametrize('q', [0.05, 0.5, 0.75, 0.85, 0.95])
def test_empirical_quantile_matches_numpy(q):
  samples = np.random.default_rng(0).normal(size=(9, 17)).astype(np.float32)
  got = jax.jit(reference.empirical_quantile, static_argnums=1)(samples, q)
  np.testing.assert_allclose(np.asarray(got), np.quantile(samples, q, axis=-1), rtol=1e-5,
                             atol=1e-6)


def test_empirical_quantile_other_axis_and_single_sample():
  samples = np.random.default_rng(1).normal(size=(5, 3)).astype(np.float32)
  np.testing.assert_allclose(reference.empirical_quantile(samples, 0.3, axis=0),
                             np.quantile(samples, 0.3, axis=0), rtol=1e-5)
  np.testing.assert_allclose(reference.empirical_quantile(samples[:, :1], 0.9), samples[:, 0])


@pytest.mark.parametrize('q', [0.0, 1.0, -0.1, 1.5, float('nan'), None])
def test_quantile_outside_unit_interval_is_an_error(q):
  with pytest.raises(ValueError, match='quantile'):
    reference.empirical_quantile(np.zeros((2, 4)), q)
  with pytest.raises(ValueError, match='quantile'):
    reference.gaussian_reference(np.zeros(2), np.ones(2), q)


def test_empty_samples_and_mismatched_shapes_are_errors():
  with pytest.raises(ValueError, match='no samples'):
    reference.empirical_quantile(np.zeros((3, 0)), 0.5)
  with pytest.raises(ValueError, match='scalar'):
    reference.empirical_quantile(np.float32(1.0), 0.5)
  with pytest.raises(ValueError, match=r'mean shape \(3,\) != std shape \(2,\)'):
    reference.gaussian_reference(np.zeros(3), np.ones(2), 0.5)
  with pytest.raises(ValueError, match='at least 2 samples'):
    reference.sample_statistics(np.zeros((3, 1)))


def test_gaussian_reference():
  mean = np.array([1.0, -2.0, 3.0], np.float32)
  std = np.array([0.5, 2.0, 1.0], np.float32)
  np.testing.assert_allclose(reference.gaussian_reference(mean, std, 0.5), mean, atol=1e-6)
  np.testing.assert_allclose(reference.gaussian_reference(mean, std, 0.85),
                             mean + scipy.stats.norm.ppf(0.85) * std, rtol=1e-5)
  assert reference.gaussian_quantile_offset(0.85) == pytest.approx(1.036, abs=1e-3)
  assert reference.gaussian_quantile_offset(0.758) == pytest.approx(0.70, abs=1e-2)


def test_gaussian_reference_approximates_empirical_quantile_for_gaussian_samples():
  rng = np.random.default_rng(3)
  mu, sigma = rng.normal(size=(20, 1)), rng.uniform(0.5, 2, size=(20, 1))
  samples = (mu + sigma * rng.normal(size=(20, 4000))).astype(np.float32)
  mean, std = reference.sample_statistics(samples)
  np.testing.assert_allclose(reference.gaussian_reference(mean, std, 0.85),
                             reference.empirical_quantile(samples, 0.85), atol=0.1)


def test_canned_reference_is_mean_score_over_responses():
  prompts = jnp.arange(4.0)
  responses = [1.0, 2.0, 6.0]
  ref = reference.canned_reference(lambda x, y: x * 10 + y, prompts, responses)
  np.testing.assert_allclose(ref, prompts * 10 + 3.0)
  with pytest.raises(ValueError, match='no canned responses'):
    reference.canned_reference(lambda x, y: x, prompts, [])
  with pytest.raises(ValueError, match='one reward per prompt'):
    reference.canned_reference(lambda x, y: jnp.zeros((4, 2)), prompts, ['a'])


def test_constant_reference():
  np.testing.assert_array_equal(reference.constant_reference((2, 3), 1.5), np.full((2, 3), 1.5))
  with pytest.raises(ValueError, match='finite'):
    reference.constant_reference((2,), float('inf'))


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(m=st.integers(1, 40), q=st.floats(0.001, 0.999), seed=st.integers(0, 2**16))
def test_property_quantile_within_sample_range(m, q, seed):
  s = np.random.default_rng(seed).normal(0, 1e3, size=(3, m)).astype(np.float32)
  got = np.asarray(reference.empirical_quantile(s, q))
  assert np.all(got >= s.min(-1) - 1e-2) and np.all(got <= s.max(-1) + 1e-2)


def test_best_of_k_kl():
  np.testing.assert_allclose(kl.best_of_k_kl([1, 2, 191]),
                             [0.0, np.log(2) - 0.5, np.log(191) - 190 / 191])
  with pytest.raises(ValueError, match='integers >= 1'):
    kl.best_of_k_kl(0)
  with pytest.raises(ValueError, match='integers >= 1'):
    kl.best_of_k_kl(2.5)


def test_best_of_k_kl_matches_monte_carlo():
  # KL of the max-of-k law (density k F^{k-1} f) from the base law, by sampling.
  k, rng = 8, np.random.default_rng(4)
  u = rng.uniform(size=(200_000, k)).max(axis=1)  # F(y) of the selected sample
  assert np.mean(np.log(k) + (k - 1) * np.log(u)) == pytest.approx(kl.best_of_k_kl(k), abs=0.01)


# ------------------------------------------------------------- calibration


def _gaussian_pool(n=300, m=64, seed=0):
  rng = np.random.default_rng(seed)
  mean, std = rng.normal(size=n), np.exp(0.3 * rng.normal(size=n))
  return mean, std, mean[:, None] + std[:, None] * rng.normal(size=(n, m))


def test_calibration_of_the_true_moments_is_near_ideal():
  mean, std, samples = _gaussian_pool()
  result = reference.calibration(mean, std, samples)
  assert [row['q'] for row in result['quantiles']] == [0.5, 0.75, 0.85, 0.95]
  for row in result['quantiles']:
    assert abs(row['coverage'] - row['q']) < 3 * row['coverage_se'] + 0.005
    # The true quantile is off the empirical one only by the latter's sampling error.
    assert row['quantile_error_rmse'] < 1.5 * row['empirical_quantile_se']


def test_calibration_sees_a_shifted_predictor():
  mean, std, samples = _gaussian_pool()
  result = reference.calibration(mean + 0.5 * std, std, samples)
  median = result['quantiles'][0]
  assert median['coverage'] == pytest.approx(0.69, abs=0.03)  # Φ(0.5)
  assert median['quantile_error_mean'] == pytest.approx(0.5 * std.mean(), abs=0.05)
  assert median['quantile_error_mae_in_std'] == pytest.approx(0.5, abs=0.06)


def test_moments_must_be_finite_with_a_positive_std():
  with pytest.raises(ValueError, match='prompt 1 .* std > 0'):
    reference.check_moments([0.0, 1.0], [1.0, 0.0], 'x')
  with pytest.raises(ValueError, match='prompt 0'):
    reference.check_moments([np.nan], [1.0], 'x')
  with pytest.raises(ValueError, match='quantile'):
    reference.calibration([0.0], [1.0], [[0.0, 1.0]], [1.0])
