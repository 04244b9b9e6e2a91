"""Tests for lsc_align.eval.win_rates: hand-computed examples and brute-force loop references."""
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsc_align.eval import win_rates as metrics


def _loop_quantile(values, q):
  """Linear-interpolation quantile written out (numpy's default method)."""
  ordered = sorted(values)
  position = q * (len(ordered) - 1)
  low = math.floor(position)
  high = min(low + 1, len(ordered) - 1)
  return ordered[low] + (position - low) * (ordered[high] - ordered[low])


def _enumerated_majority_win(p_policy_first, p_sft_first, votes):
  """Expected majority outcome by enumerating all 2^V vote patterns."""
  total, expected = sum(votes), 0.0
  probs = [p_policy_first] * votes[0] + [p_sft_first] * votes[1]
  for pattern in itertools.product((0, 1), repeat=total):
    weight = math.prod(p if v else 1.0 - p for v, p in zip(pattern, probs))
    expected += weight * (1.0 if 2 * sum(pattern) > total else
                          0.5 if 2 * sum(pattern) == total else 0.0)
  return expected


# ---------------------------------------------------------------- win rates


def test_win_rate_vs_quantile_hand_example():
  sft = [[1.0, 2.0, 3.0, 4.0, 5.0], [0.0, 0.0, 0.0, 0.0, 10.0]]
  # 0.85-quantiles: 1 + 0.85·4 = 4.4 and 0 + (3.4 − 3)·10 = 4.0.
  policy = [[4.5, 4.4, 5.0], [3.9, 4.1, 4.2]]
  result = metrics.win_rate_vs_quantile(policy, sft, q=0.85)
  np.testing.assert_allclose(result.per_prompt, [2 / 3, 2 / 3])  # 4.4 ties: no win
  assert result.overall == pytest.approx(2 / 3)
  assert metrics.win_rate_vs_quantile([[3.0, 3.5]], [[1.0, 3.0, 5.0]], q=0.5).overall == 0.5


@pytest.mark.parametrize('q', [0.5, 0.85, 0.95])
def test_win_rate_vs_quantile_matches_loops(q):
  rng = np.random.default_rng(1)
  policy, sft = rng.normal(size=(6, 5)), rng.normal(size=(6, 9))
  expected = [sum(s > _loop_quantile(sft[p], q) for s in policy[p]) / 5 for p in range(6)]
  result = metrics.win_rate_vs_quantile(policy, sft, q)
  np.testing.assert_allclose(result.per_prompt, expected)
  assert result.overall == pytest.approx(np.mean(expected))
  jitted = jax.jit(metrics.quantile_wins, static_argnums=2)(jnp.asarray(policy, jnp.float32),
                                                             jnp.asarray(sft, jnp.float32), q)
  np.testing.assert_allclose(np.asarray(jitted).mean(axis=1), expected)


@pytest.mark.parametrize('q', [0.0, 1.0, -0.1, 1.5, float('nan')])
def test_win_rate_rejects_quantile_outside_open_interval(q):
  with pytest.raises(ValueError, match=r'q=') as info:
    metrics.win_rate_vs_quantile([[1.0]], [[0.0, 1.0]], q=q)
  assert '(0, 1)' in str(info.value)


def test_win_rate_rejects_mismatched_prompts():
  with pytest.raises(ValueError, match='number of prompts'):
    metrics.win_rate_vs_quantile(np.zeros((2, 3)), np.zeros((3, 3)))


def test_and_win_rate_hand_example_and_loops():
  sft_help = [[0.0, 1.0, 2.0]]   # median 1
  sft_harm = [[5.0, 6.0, 9.0]]   # median 6
  policy_help = [[2.0, 2.0, 0.5, 1.0]]
  policy_harm = [[7.0, 6.0, 9.0, 9.0]]
  # only sample 0 is above both medians (sample 1 ties harm, 2 is below help, 3 ties help)
  result = metrics.and_win_rate(policy_help, policy_harm, sft_help, sft_harm)
  np.testing.assert_allclose(result.per_prompt, [0.25])

  rng = np.random.default_rng(2)
  ph, pa, sh, sa = (rng.normal(size=s) for s in [(5, 7), (5, 7), (5, 4), (5, 4)])
  expected = [np.mean([ph[p, i] > _loop_quantile(sh[p], 0.5) and
                       pa[p, i] > _loop_quantile(sa[p], 0.5) for i in range(7)])
              for p in range(5)]
  result = metrics.and_win_rate(ph, pa, sh, sa)
  np.testing.assert_allclose(result.per_prompt, expected)
  assert result.overall == pytest.approx(np.mean(expected))


@pytest.mark.parametrize('argument', ['policy_help', 'policy_harm', 'sft_help', 'sft_harm'])
def test_and_win_rate_nan_names_argument_and_index(argument):
  arrays = {name: np.zeros((3, 4)) for name in ['policy_help', 'policy_harm', 'sft_help',
                                                 'sft_harm']}
  arrays[argument][2, 1] = np.nan
  arrays[argument][2, 3] = np.nan
  with pytest.raises(ValueError, match=rf'{argument}.*NaN.*\(2, 1\)'):
    metrics.and_win_rate(**arrays)


def test_win_rate_nan_names_argument_and_index():
  sft = np.zeros((2, 3))
  sft[1, 2] = np.nan
  with pytest.raises(ValueError, match=r'sft_judge.*\(1, 2\)'):
    metrics.win_rate_vs_quantile(np.zeros((2, 2)), sft)
  with pytest.raises(ValueError, match=r'policy_judge.*\(0, 0\)'):
    metrics.win_rate_vs_quantile([[np.nan]], [[0.0]])


# ---------------------------------------------------------------- pairwise judge


@pytest.mark.parametrize('votes', [(4, 4), (8, 0), (0, 8), (3, 2), (1, 0)])
@pytest.mark.parametrize('p1,p2', [(0.5, 0.5), (0.9, 0.2), (0.73, 0.27), (0.0, 1.0)])
def test_expected_majority_win_matches_enumeration(votes, p1, p2):
  exact = metrics.expected_majority_win(p1, p2, votes)
  assert float(exact) == pytest.approx(_enumerated_majority_win(p1, p2, votes), abs=1e-12)


def test_pairwise_large_beta_no_bias_is_hard_comparison():
  rng = np.random.default_rng(3)
  policy = rng.normal(size=(10, 6))
  sft = rng.normal(size=(10, 5))
  sft[:, 0] = policy[:, 0]  # some exact ties
  result = metrics.pairwise_win_rate(policy, sft, beta=1e6, position_bias=0.0, seed=7,
                                     exact=True)
  # The documented protocol: opponents are the Generator's first draw.
  opponent = np.random.default_rng(7).integers(0, 5, size=(10, 6))
  expected = [np.mean([1.0 if policy[p, i] > sft[p, opponent[p, i]] else
                       0.5 if policy[p, i] == sft[p, opponent[p, i]] else 0.0
                       for i in range(6)]) for p in range(10)]
  np.testing.assert_allclose(result.per_prompt, expected)
  # Sampled votes agree exactly wherever the comparison is not a tie.
  untied = metrics.pairwise_win_rate(policy[:, 1:], sft[:, 1:], beta=1e6, seed=7)
  opponent = np.random.default_rng(7).integers(0, 4, size=(10, 5))
  expected = [np.mean([float(policy[p, i + 1] > sft[p, opponent[p, i] + 1]) for i in range(5)])
              for p in range(10)]
  np.testing.assert_allclose(untied.per_prompt, expected)


def test_position_bias_biases_single_order_but_not_both_orders():
  rng = np.random.default_rng(4)
  # Policy and SFT responses are exchangeable: the true win rate is 1/2.
  policy, sft = rng.normal(size=(200, 8)), rng.normal(size=(200, 8))
  kwargs = dict(beta=1.0, position_bias=1.5, seed=11)
  both = metrics.pairwise_win_rate(policy, sft, votes=(4, 4), **kwargs).overall
  policy_first = metrics.pairwise_win_rate(policy, sft, votes=(8, 0), **kwargs).overall
  sft_first = metrics.pairwise_win_rate(policy, sft, votes=(0, 8), **kwargs).overall
  assert abs(both - 0.5) < 0.04
  assert policy_first > 0.6 and sft_first < 0.4
  # The exact outcome is antisymmetric with both orders, not with one.
  judge = metrics.position_biased_judge(beta=1.0, position_bias=1.5)
  a, b = rng.normal(size=50), rng.normal(size=50)

  def outcome(x, y, votes):
    return metrics.expected_majority_win(judge(x, y), 1 - judge(y, x), votes)

  np.testing.assert_allclose(outcome(a, b, (4, 4)) + outcome(b, a, (4, 4)), 1.0, atol=1e-12)
  assert np.all(outcome(a, b, (8, 0)) + outcome(b, a, (8, 0)) > 1.0)
  # Equal responses: exactly 1/2 with both orders, far from it with one.
  assert float(outcome(0.0, 0.0, (4, 4))) == pytest.approx(0.5)
  assert float(outcome(0.0, 0.0, (8, 0))) > 0.8


def test_pairwise_is_deterministic_given_seed_and_accepts_a_judge_fn():
  rng = np.random.default_rng(5)
  policy, sft = rng.normal(size=(20, 4)), rng.normal(size=(20, 6))
  first = metrics.pairwise_win_rate(policy, sft, position_bias=0.3, seed=1)
  again = metrics.pairwise_win_rate(policy, sft, position_bias=0.3, seed=1)
  other = metrics.pairwise_win_rate(policy, sft, position_bias=0.3, seed=2)
  np.testing.assert_array_equal(first.per_prompt, again.per_prompt)
  assert not np.array_equal(first.per_prompt, other.per_prompt)
  # A judge over non-numeric items (texts): prefers the longer response.
  texts = np.array([['a' * 5, 'a'], ['aa', 'aaa']], dtype=object)
  refs = np.array([['aa', 'aa'], ['aa', 'aa']], dtype=object)
  longer = lambda x, y: np.array([float(len(u) > len(v)) for u, v in zip(x, y)])
  result = metrics.pairwise_win_rate(texts, refs, judge_fn=longer, seed=0)
  # 'aa' vs 'aa': this judge prefers the second response in both orders, a 4-4 tie, 1/2.
  np.testing.assert_allclose(result.per_prompt, [0.5, 0.75])
  with pytest.raises(ValueError, match='judge_fn'):
    metrics.pairwise_win_rate(texts, refs, judge_fn=longer, beta=2.0)
  with pytest.raises(ValueError, match=r'sft.*\(0, 1\)'):
    metrics.pairwise_win_rate(policy, np.array([[0.0, np.nan]] * 20))


# ---------------------------------------------------------------- bootstrap


def test_bootstrap_ci_covers_the_true_mean_and_is_deterministic():
  rng = np.random.default_rng(6)
  covered = 0
  for trial in range(150):
    values = rng.exponential(1.0, size=60)  # true mean 1, skewed
    estimate, low, high = metrics.bootstrap_ci(values, num_resamples=400, seed=trial)
    assert low <= estimate <= high
    covered += low <= 1.0 <= high
  assert 0.85 <= covered / 150 <= 0.99
  values = rng.normal(size=30)
  assert metrics.bootstrap_ci(values, seed=3) == metrics.bootstrap_ci(values, seed=3)
  assert metrics.bootstrap_ci(values, seed=3) != metrics.bootstrap_ci(values, seed=4)


def test_bootstrap_ci_generic_stat_matches_fast_path_and_loops():
  values = np.random.default_rng(7).normal(size=25)
  fast = metrics.bootstrap_ci(values, num_resamples=300, level=0.9, seed=5)
  generic = metrics.bootstrap_ci(values, stat=lambda v: float(np.mean(v)), num_resamples=300,
                                 level=0.9, seed=5)
  np.testing.assert_allclose(fast, generic)
  rng = np.random.default_rng(5)  # documented protocol: one [B, P] index draw
  index = rng.integers(0, 25, size=(300, 25))
  boot = sorted(sum(values[i] for i in row) / 25 for row in index)
  assert fast.low == pytest.approx(_loop_quantile(boot, 0.05))
  assert fast.high == pytest.approx(_loop_quantile(boot, 0.95))
  assert metrics.bootstrap_ci([2.0] * 10) == (2.0, 2.0, 2.0)


def test_bootstrap_ci_rejects_nan_and_bad_level():
  with pytest.raises(ValueError, match=r'per_prompt_values.*\(3,\)'):
    metrics.bootstrap_ci([0.0, 1.0, 2.0, np.nan])
  with pytest.raises(ValueError, match='level'):
    metrics.bootstrap_ci([0.0, 1.0], level=1.0)


# ---------------------------------------------------------------- KL


def test_kl_from_logprobs_hand_example_mask_and_jit():
  logp_pi = np.array([[[-1.0, -2.0, -np.inf]], [[-0.5, -0.5, -0.5]]])
  logp_pi0 = np.array([[[-2.0, -2.5, -np.inf]], [[-1.0, -0.5, -0.25]]])
  mask = np.array([[[1, 1, 0]], [[1, 1, 1]]])
  per_sample, mean = jax.jit(metrics.kl_from_logprobs)(logp_pi, logp_pi0, mask)
  np.testing.assert_allclose(per_sample, [[1.5], [0.25]])
  assert float(mean) == pytest.approx(0.875)


def test_kl_from_logprobs_matches_loops_and_exact_kl():
  rng = np.random.default_rng(8)
  vocab, length, num = 4, 3, 20000
  pi = rng.dirichlet(np.ones(vocab))
  pi0 = rng.dirichlet(np.ones(vocab))
  tokens = rng.choice(vocab, p=pi, size=(num, length))  # samples from π (independent tokens)
  lengths = rng.integers(1, length + 1, size=num)
  mask = np.arange(length)[None, :] < lengths[:, None]
  logp_pi, logp_pi0 = np.log(pi)[tokens], np.log(pi0)[tokens]
  per_sample, mean = metrics.kl_from_logprobs(logp_pi[None], logp_pi0[None], mask[None])
  loops = [sum(logp_pi[i, t] - logp_pi0[i, t] for t in range(lengths[i])) for i in range(50)]
  np.testing.assert_allclose(np.asarray(per_sample)[0, :50], loops, rtol=1e-5)
  token_kl = float(np.sum(pi * np.log(pi / pi0)))
  assert float(mean) == pytest.approx(token_kl * lengths.mean(), rel=0.05, abs=0.01)


# ---------------------------------------------------------------- histograms and matched KL


def test_histograms():
  values = np.array([0.0, 0.1, 0.5, 0.9, 1.0, 1.0])
  hist = metrics.reward_histogram(values, bins=2, value_range=(0.0, 1.0), density=False)
  np.testing.assert_array_equal(hist.values, [2, 4])  # [0, .5) and [.5, 1]
  dense = metrics.reward_histogram(np.random.default_rng(9).normal(size=500), bins=20)
  assert float(np.sum(dense.values * np.diff(dense.edges))) == pytest.approx(1.0)
  assert metrics.shared_range([1.0, 2.0], [0.5]) == (0.5, 2.0)
  assert metrics.shared_range([3.0]) == (2.5, 3.5)
  counts, _, _ = metrics.joint_histogram([0.1, 0.9, 0.9], [0.1, 0.1, 0.9], bins=2,
                                         ranges=((0, 1), (0, 1)), density=False)
  np.testing.assert_array_equal(counts, [[1, 0], [1, 1]])
  with pytest.raises(ValueError, match=r'values.*\(1,\)'):
    metrics.reward_histogram([0.0, np.nan])


def test_matched_kl_helpers():
  kl = [3.0, 0.5, 1.0, 2.0]
  metric = [0.9, 0.2, 0.4, 0.8]
  assert metrics.nearest_kl_index(kl, 1.6) == 3
  assert metrics.nearest_kl_index(kl, 1.5) == 2  # tie between 1.0 and 2.0: first in the list
  assert metrics.interpolate_at_kl(kl, metric, 1.5) == pytest.approx(0.6)
  assert metrics.interpolate_at_kl(kl, metric, 2.5) == pytest.approx(0.85)
  assert metrics.interpolate_at_kl(kl, metric, 3.0) == pytest.approx(0.9)
  assert math.isnan(metrics.interpolate_at_kl(kl, metric, 3.5))  # no extrapolation
  np.testing.assert_allclose(metrics.interpolate_at_kl(kl, metric, [0.5, 0.75]), [0.2, 0.3])
  # Equal KLs are averaged before interpolating.
  assert metrics.interpolate_at_kl([1.0, 1.0, 2.0], [0.0, 1.0, 1.5], 1.5) == pytest.approx(1.0)
  with pytest.raises(ValueError, match=r'metric.*\(1,\)'):
    metrics.interpolate_at_kl(kl, [0.0, np.nan, 0.0, 0.0], 1.0)
