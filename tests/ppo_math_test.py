"""Tests for lsc_align.align.ppo_math: GAE against a plain Python loop, the PPO losses."""
import jax
import numpy as np
import pytest

from lsc_align.align import ppo_math


def _gae_loop(rewards, values, mask, discount, lam):
  b, l = rewards.shape
  adv = np.zeros((b, l))
  for i in range(b):
    n = int(mask[i].sum())
    last = 0.0
    for t in reversed(range(n)):
      next_v = values[i, t + 1] if t + 1 < n else 0.0
      delta = rewards[i, t] + discount * next_v - values[i, t]
      last = delta + discount * lam * last
      adv[i, t] = last
  return adv


@pytest.mark.parametrize('discount,lam', [(1.0, 0.95), (0.9, 1.0), (0.99, 0.0)])
def test_gae_matches_python_loop(discount, lam):
  rng = np.random.default_rng(0)
  lengths = np.array([5, 1, 8, 3])
  mask = (np.arange(8)[None] < lengths[:, None]).astype(np.float32)
  rewards = rng.normal(size=(4, 8)).astype(np.float32) * mask
  values = rng.normal(size=(4, 8)).astype(np.float32)
  adv, ret = jax.jit(ppo_math.gae_advantages, static_argnums=(3, 4))(
      rewards, values, mask, discount, lam)
  expected = _gae_loop(rewards, values, mask, discount, lam)
  np.testing.assert_allclose(np.asarray(adv), expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(ret), (expected + values) * mask, rtol=1e-5, atol=1e-5)


def test_token_rewards_put_utility_on_last_token_and_kl_everywhere():
  mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0]], np.float32)
  logp = np.array([[-1.0, -2.0, -0.5, -9.0], [-0.1, -9.0, -9.0, -9.0]], np.float32)
  logp0 = np.array([[-1.5, -1.0, -0.5, -1.0], [-0.3, -1.0, -1.0, -1.0]], np.float32)
  rewards, kl = ppo_math.token_rewards(np.array([2.0, -3.0]), logp, logp0, mask, kl_coef=0.5)
  np.testing.assert_allclose(kl, [[0.5, -1.0, 0.0, 0.0], [0.2, 0, 0, 0]], atol=1e-6)
  np.testing.assert_allclose(rewards, [[-0.25, 0.5, 2.0, 0.0], [-0.1 - 3.0, 0, 0, 0]], atol=1e-6)
  # Summed: u − γ log(π/π0).
  np.testing.assert_allclose(rewards.sum(1), [2.0 - 0.5 * -0.5, -3.0 - 0.5 * 0.2], atol=1e-6)


def test_whiten_uses_only_real_tokens():
  x = np.array([[1.0, 2.0, 3.0, 100.0]], np.float32)
  mask = np.array([[1, 1, 1, 0]], np.float32)
  w = np.asarray(ppo_math.whiten(x, mask))
  np.testing.assert_allclose(w[0, :3], (x[0, :3] - 2.0) / np.std(x[0, :3]), rtol=1e-4)
  assert w[0, 3] == 0.0


def test_policy_loss_clips():
  mask = np.ones((1, 3), np.float32)
  old = np.zeros((1, 3), np.float32)
  new = np.log(np.array([[1.5, 0.5, 1.0]], np.float32))
  adv = np.array([[1.0, -1.0, 2.0]], np.float32)
  loss, stats = ppo_math.policy_loss(new, old, adv, mask, clip_ratio=0.2)
  # min(ρA, clip(ρ)A): 1.2 (clipped), −0.8 (clipped: ρ=.5 → .8, A<0), 2.0.
  assert float(loss) == pytest.approx(-(1.2 - 0.8 + 2.0) / 3, rel=1e-5)
  assert float(stats['clip_fraction']) == pytest.approx(2 / 3)
  assert float(stats['approx_kl']) > 0


def test_value_loss_clips():
  mask = np.ones((1, 2), np.float32)
  values, old, returns = np.array([[2.0, 0.0]]), np.array([[0.0, 0.0]]), np.array([[3.0, 1.0]])
  loss, stats = ppo_math.value_loss(values, old, returns, mask, value_clip=0.5)
  # token 0: V moved 2 from V_old = 0, clipped to 0.5: max((2−3)², (0.5−3)²) = 6.25, the clipped
  # term wins; token 1: max((0−1)², (0−1)²) = 1.
  assert float(loss) == pytest.approx(0.5 * (6.25 + 1) / 2)
  assert float(stats['value_clip_fraction']) == pytest.approx(0.5)
  # Where the clipped term wins, V gets no gradient (it cannot move past V_old ± c).
  grad = jax.grad(lambda v: ppo_math.value_loss(v, old, returns, mask, 0.5)[0])(values)
  np.testing.assert_allclose(np.asarray(grad), [[0.0, -0.5]], atol=1e-6)
  unclipped, stats = ppo_math.value_loss(values, old, returns, mask, value_clip=None)
  assert float(unclipped) == pytest.approx(0.5 * (1 + 1) / 2)
  assert float(stats['value_clip_fraction']) == 0.0


def test_alpha_gamma_round_trip():
  for alpha in (0.014, 0.081, 0.222, 0.5):
    assert ppo_math.alpha_from_kl_coef(ppo_math.kl_coef_from_alpha(alpha)) == pytest.approx(alpha)
  with pytest.raises(ValueError, match='alpha'):
    ppo_math.kl_coef_from_alpha(1.0)
