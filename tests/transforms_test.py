"""Tests for lsc_align.rewards.transforms and aggregate: the paper's identities and stability."""
import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsc_align.rewards import aggregate, example, make_objective, transforms

LSC_PAIR = make_objective('and', ['helpful', 'harmless'], 'lsc',
                          {'helpful': ('quantile', 0.5), 'harmless': ('quantile', 0.5)})


def _np_log_sigmoid(z):
  z = np.asarray(z, np.float64)
  return -np.logaddexp(0.0, -z)


def test_worked_example_diminishing_returns():
  ex = example.worked_examples()
  assert ex['diminishing_returns_raw_tilt'] == pytest.approx(999 / 99, rel=1e-4)  # 10.09
  assert ex['diminishing_returns_raw_tilt'] == pytest.approx(10.09, abs=1e-2)
  assert ex['diminishing_returns_lsc_tilt'] == pytest.approx(0.999 / 0.99, rel=1e-5)  # 1.009
  assert ex['diminishing_returns_lsc_tilt'] == pytest.approx(1.009, abs=1e-3)


def test_worked_example_and_aggregation():
  ex = example.worked_examples()
  assert ex['and_aggregation_raw_sum_tilt'] == pytest.approx(1.0, abs=1e-3)
  assert ex['and_aggregation_lsc_sum_tilt'] == pytest.approx(0.81 / (0.45 * 0.99), abs=1e-3)
  assert ex['and_aggregation_lsc_sum_tilt'] == pytest.approx(1.82, abs=1e-2)


@pytest.mark.parametrize('kind', list(transforms.Transform))
def test_transforms_match_numpy(kind):
  rng = np.random.default_rng(0)
  r = rng.normal(0, 5, size=(7, 3)).astype(np.float32)
  ref = rng.normal(0, 5, size=(7, 3)).astype(np.float32)
  expected = {
      'raw': r,
      'centered': r - ref,
      'log_sigmoid': _np_log_sigmoid(r - ref),
      'lsc': _np_log_sigmoid(r - ref),
      'pointwise': _np_log_sigmoid(r),
  }[kind.value]
  got = jax.jit(transforms.apply, static_argnums=0)(kind, r, ref)
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-6)


def test_unknown_transform_names_choices():
  with pytest.raises(ValueError, match="unknown reward transform 'lcs'.*lsc"):
    transforms.apply('lcs', 1.0, 0.0)


def test_lsc_is_shift_invariant_and_log_sigmoid_of_raw_is_not():
  rng = np.random.default_rng(1)
  r = rng.normal(size=(64,)).astype(np.float32)
  ref = rng.normal(size=(64,)).astype(np.float32)
  c = rng.normal(0, 3, size=(64,)).astype(np.float32)  # per-prompt BT offset C(x)
  np.testing.assert_allclose(transforms.lsc(r + c, ref + c), transforms.lsc(r, ref), atol=2e-6)
  shifted = transforms.pointwise(r + c)
  assert np.max(np.abs(np.asarray(shifted - transforms.pointwise(r)))) > 0.1


def test_lsc_bounds_and_monotonicity():
  r = jnp.linspace(-30, 30, 601)
  u = transforms.lsc(r, 0.0)
  assert np.all(np.asarray(u) <= 0.0)
  assert np.all(np.diff(np.asarray(u)) >= 0.0)  # increasing in r
  assert np.all(np.diff(np.asarray(transforms.lsc(0.0, r))) <= 0.0)  # decreasing in r_ref
  # Strictly increasing where float32 can resolve it, and saturating above the reference.
  assert float(u[310] - u[300]) > 0.0
  assert float(u[-1]) > -1e-12 and float(u[0]) == pytest.approx(-30.0, abs=1e-6)


def test_and_sum_is_log_of_product_of_sigmoids():
  rng = np.random.default_rng(2)
  r = rng.normal(0, 3, size=(16, 2)).astype(np.float32)
  ref = rng.normal(0, 3, size=(16, 2)).astype(np.float32)
  u = aggregate.utility(r, ref, LSC_PAIR)
  sig = 1.0 / (1.0 + np.exp(-(r.astype(np.float64) - ref)))
  np.testing.assert_allclose(np.asarray(u), np.log(np.prod(sig, axis=-1)), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(aggregate.lsc_sum(r, ref)), np.asarray(u), rtol=1e-6)


def test_weighted_raw_sum_baseline():
  obj = make_objective('w', ['helpful', 'harmless'], 'raw', helpful_weight=0.3)
  r = np.array([[1.0, 2.0], [-4.0, 10.0]], np.float32)
  np.testing.assert_allclose(aggregate.utility(r, np.zeros_like(r), obj),
                             0.3 * r[:, 0] + 0.7 * r[:, 1], rtol=1e-6)


def test_utility_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match=r'2 properties.*shape \(4, 3\)'):
    aggregate.utility(np.zeros((4, 3)), np.zeros((4, 3)), LSC_PAIR)
  with pytest.raises(ValueError, match=r'references have shape \(4,\)'):
    aggregate.utility(np.zeros((4, 2)), np.zeros((4,)), LSC_PAIR)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('kind', list(transforms.Transform))
def test_extreme_values_are_finite_with_finite_gradients(kind, dtype):
  r = jnp.array([-1e6, -1e3, -88.0, -1.0, 0.0, 1.0, 88.0, 1e3, 1e6], dtype)
  ref = jnp.array([1e6, -1e6, 0.0, 5.0, 0.0, -5.0, 0.0, 1e6, -1e6], dtype)
  u = transforms.apply(kind, r, ref)
  grads = jax.vmap(jax.grad(lambda a, b: transforms.apply(kind, a, b), argnums=(0, 1)))(r, ref)
  assert u.dtype == dtype
  assert np.all(np.isfinite(np.asarray(u, np.float32)))
  for g in grads:
    assert np.all(np.isfinite(np.asarray(g, np.float32)))
  if kind in (transforms.Transform.LSC, transforms.Transform.LOG_SIGMOID):
    # Far below the reference the slope is 1; far above it is 0 (saturation).
    np.testing.assert_allclose(np.asarray(grads[0], np.float32)[0], 1.0)
    np.testing.assert_allclose(np.asarray(grads[0], np.float32)[-1], 0.0)


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(
    data=hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=5),
                    elements=st.floats(-1e6, 1e6, width=32)),
    shift=st.floats(-1e3, 1e3, width=32))
def test_property_lsc_sum_bounded_finite_and_shift_invariant(data, shift):
  pairs = np.stack([data, data[::-1] if data.ndim == 1 else -data], axis=-1)
  refs = np.flip(pairs, axis=-1).copy()
  u = np.asarray(aggregate.utility(pairs, refs, LSC_PAIR))
  assert u.shape == data.shape
  assert np.all(np.isfinite(u)) and np.all(u <= 0.0)
  expected = np.sum(_np_log_sigmoid(pairs.astype(np.float64) - refs), axis=-1)
  np.testing.assert_allclose(u, expected, rtol=1e-4, atol=1e-4 * (1 + np.abs(expected).max()))
  shifted = np.asarray(aggregate.utility(pairs + shift, refs + shift, LSC_PAIR))
  # float32 rounding of r + c is at most ulp(|r| + |c|); the transform has slope ≤ 1.
  tol = 4 * np.spacing(np.float32(np.abs(pairs).max() + abs(shift) + 1.0)) * 2
  np.testing.assert_allclose(shifted, u, atol=tol)


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(r=st.floats(-50, 50), ref=st.floats(-50, 50), dr=st.floats(0.01, 10))
def test_property_lsc_monotone(r, ref, dr):
  assert float(transforms.lsc(r + dr, ref)) >= float(transforms.lsc(r, ref))
  assert float(transforms.lsc(r, ref + dr)) <= float(transforms.lsc(r, ref))
