"""Evaluation metrics against a judge the policy was never optimised against (docs/DESIGN.md §1).

Host-side functions take numpy (or anything array-like), validate their inputs, compute in
float64 and return numpy values. `quantile_wins` and `kl_from_logprobs` are pure `jnp` and run
inside jit (no validation beyond shapes there, since values are traced).

* `win_rate_vs_quantile`: a sample wins if its judge reward beats the per-prompt q-quantile of
  the judge rewards of SFT samples for the same prompt (paper: q = 0.85 helpful, 0.95 harmless).
* `and_win_rate`: helpfulness above the SFT median AND harmlessness above the SFT median.
* `pairwise_win_rate`: a judge with position bias compares each policy sample with a random SFT
  sample for the same prompt, in both orders; the majority of the votes decides.
* `bootstrap_ci`: percentile bootstrap over prompts.
* `kl_from_logprobs`: Monte Carlo estimate of KL(π ‖ π0) from samples of π.
* histograms and matched-KL helpers for the report.

Quantiles use linear interpolation (numpy's default, as `rewards.reference.empirical_quantile`);
"beats" is strict (>), so a sample equal to the threshold does not win. A per-prompt rate is the
mean over that prompt's samples; the overall rate is the mean over prompts (each prompt weighs
the same). NaN in a reward input is a ValueError naming the argument and the first NaN's index.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

HELPFUL_QUANTILE = 0.85
HARMLESS_QUANTILE = 0.95
DEFAULT_VOTES = (4, 4)  # (policy shown first, SFT shown first): 8 votes, both orders

# p(first response preferred) for arrays of first / second items (scores, ids, texts ...).
JudgeFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


class WinRate(NamedTuple):
  """Per-prompt win fractions [P] and their mean over prompts."""
  per_prompt: np.ndarray
  overall: float


class ConfidenceInterval(NamedTuple):
  estimate: float
  low: float
  high: float


class Histogram(NamedTuple):
  values: np.ndarray  # [bins] counts, or densities when density=True
  edges: np.ndarray   # [bins + 1]


# ---------------------------------------------------------------- validation


def check_no_nan(name: str, values: ArrayLike) -> np.ndarray:
  """Returns values as float64; ValueError naming `name` and the first NaN's index if any."""
  array = np.asarray(values, dtype=np.float64)
  nan = np.isnan(array)
  if nan.any():
    index = tuple(int(i) for i in np.argwhere(nan)[0])
    raise ValueError(f'{name} contains NaN; first NaN at index {index if array.ndim else ()}')
  return array


def _check_quantile(q: float, name: str = 'q') -> float:
  try:
    q = float(q)
  except (TypeError, ValueError) as e:
    raise ValueError(f'{name} must be a number in (0, 1), got {name}={q!r}') from e
  if not 0.0 < q < 1.0:  # also rejects NaN
    raise ValueError(f'{name} must lie strictly inside (0, 1), got {name}={q}')
  return q


def _check_2d(name: str, array: np.ndarray) -> None:
  if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
    raise ValueError(f'{name} must have shape [num_prompts, num_samples] with both > 0, '
                     f'got shape {array.shape}')


def _check_same_prompts(**arrays: np.ndarray) -> None:
  counts = {name: a.shape[0] for name, a in arrays.items()}
  if len(set(counts.values())) != 1:
    raise ValueError(f'arguments disagree on the number of prompts (axis 0): {counts}')


# ---------------------------------------------------------------- win rates


def quantile_wins(policy_judge: ArrayLike, sft_judge: ArrayLike, q: float) -> jax.Array:
  """jnp: bool [P, n], policy_judge[p, i] > q-quantile of sft_judge[p, :]. Runs under jit."""
  threshold = jnp.quantile(jnp.asarray(sft_judge), q, axis=1, keepdims=True, method='linear')
  return jnp.asarray(policy_judge) > threshold


def win_rate_vs_quantile(policy_judge: ArrayLike, sft_judge: ArrayLike,
                         q: float = HELPFUL_QUANTILE) -> WinRate:
  """Win rate against the per-prompt q-quantile of SFT samples' judge rewards.

  Args:
    policy_judge: [P, n] judge rewards of n policy samples per prompt.
    sft_judge: [P, m] judge rewards of m SFT (π0) samples for the same prompts.
    q: quantile in (0, 1); 0.85 for helpfulness, 0.95 for harmlessness.

  Returns:
    WinRate(per_prompt [P] fraction of samples with reward > threshold, overall mean).
  """
  q = _check_quantile(q)
  policy = check_no_nan('policy_judge', policy_judge)
  sft = check_no_nan('sft_judge', sft_judge)
  _check_2d('policy_judge', policy)
  _check_2d('sft_judge', sft)
  _check_same_prompts(policy_judge=policy, sft_judge=sft)
  threshold = np.quantile(sft, q, axis=1, keepdims=True)
  per_prompt = (policy > threshold).mean(axis=1)
  return WinRate(per_prompt, float(per_prompt.mean()))


def and_win_rate(policy_help: ArrayLike, policy_harm: ArrayLike, sft_help: ArrayLike,
                 sft_harm: ArrayLike, q_help: float = 0.5, q_harm: float = 0.5) -> WinRate:
  """AND win rate: helpfulness above the SFT q_help-quantile AND harmlessness above q_harm's.

  Both quantiles default to the per-prompt SFT median (docs/DESIGN.md §1). policy_help and
  policy_harm score the same [P, n] samples; sft_help and sft_harm the same [P, m] samples.
  """
  q_help = _check_quantile(q_help, 'q_help')
  q_harm = _check_quantile(q_harm, 'q_harm')
  arrays = {name: check_no_nan(name, value) for name, value in
            (('policy_help', policy_help), ('policy_harm', policy_harm),
             ('sft_help', sft_help), ('sft_harm', sft_harm))}
  for name, array in arrays.items():
    _check_2d(name, array)
  _check_same_prompts(**arrays)
  if arrays['policy_help'].shape != arrays['policy_harm'].shape:
    raise ValueError(f'policy_help shape {arrays["policy_help"].shape} != policy_harm shape '
                     f'{arrays["policy_harm"].shape} (they must score the same samples)')
  if arrays['sft_help'].shape != arrays['sft_harm'].shape:
    raise ValueError(f'sft_help shape {arrays["sft_help"].shape} != sft_harm shape '
                     f'{arrays["sft_harm"].shape} (they must score the same samples)')
  help_threshold = np.quantile(arrays['sft_help'], q_help, axis=1, keepdims=True)
  harm_threshold = np.quantile(arrays['sft_harm'], q_harm, axis=1, keepdims=True)
  wins = (arrays['policy_help'] > help_threshold) & (arrays['policy_harm'] > harm_threshold)
  per_prompt = wins.mean(axis=1)
  return WinRate(per_prompt, float(per_prompt.mean()))


# ---------------------------------------------------------------- pairwise judge


def position_biased_judge(beta: float = 1.0, position_bias: float = 0.0) -> JudgeFn:
  """A score-based judge: p(first preferred) = σ(β (s_first − s_second) + b_pos).

  b_pos > 0 favours whichever response is shown first; β is an inverse temperature (β → ∞ with
  b_pos = 0 is the hard comparison s_first > s_second, equal scores give 1/2).
  """
  beta = float(beta)
  position_bias = float(position_bias)

  def judge(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    z = beta * (np.asarray(first, np.float64) - np.asarray(second, np.float64)) + position_bias
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # σ(z) without overflow for large |z|

  return judge


def _binomial_pmf(num: int, p: np.ndarray) -> np.ndarray:
  """[K, num + 1] pmf of Binomial(num, p) for a vector p."""
  counts = np.arange(num + 1)
  coefficients = np.array([math.comb(num, c) for c in counts], np.float64)
  p = p[:, None]
  return coefficients * p**counts * (1.0 - p)**(num - counts)


def expected_majority_win(p_policy_first: ArrayLike, p_sft_first: ArrayLike,
                          votes: tuple[int, int] = DEFAULT_VOTES) -> np.ndarray:
  """Exact expected outcome of the majority vote (win 1, tie 1/2, loss 0).

  Args:
    p_policy_first: p(a vote prefers the policy sample) when the policy sample is shown first.
    p_sft_first: the same when the SFT sample is shown first.
    votes: (number of votes with the policy sample first, number with the SFT sample first).
  """
  v_first, v_second = votes
  p1 = np.atleast_1d(np.asarray(p_policy_first, np.float64))
  p2 = np.atleast_1d(np.asarray(p_sft_first, np.float64))
  pmf1, pmf2 = _binomial_pmf(v_first, p1), _binomial_pmf(v_second, p2)
  total = v_first + v_second
  pmf = np.zeros((p1.shape[0], total + 1))
  for j in range(v_second + 1):  # distribution of the sum = convolution of the two pmfs
    pmf[:, j:j + v_first + 1] += pmf1 * pmf2[:, j:j + 1]
  counts = np.arange(total + 1)
  outcome = np.where(2 * counts > total, 1.0, np.where(2 * counts == total, 0.5, 0.0))
  return (pmf * outcome).sum(axis=1).reshape(np.shape(p_policy_first))


def pairwise_win_rate(policy: ArrayLike, sft: ArrayLike, *, judge_fn: JudgeFn | None = None,
                      beta: float | None = None, position_bias: float | None = None,
                      votes: tuple[int, int] = DEFAULT_VOTES, seed: int = 0,
                      exact: bool = False) -> WinRate:
  """Pairwise judge win rate against a random SFT sample for the same prompt.

  Protocol: for each policy sample (p, i) one SFT sample j ~ Uniform{0..m−1} of prompt p is drawn.
  The judge is asked votes[0] times with the policy sample first and votes[1] times with the SFT
  sample first (default 4 + 4 = 8 votes); each vote is an independent Bernoulli draw from the
  judge's p(first preferred). The policy sample scores 1 if it gets more than half of the votes,
  1/2 on a tie (4-4) and 0 otherwise. With votes in both orders equally often a position bias
  cancels: the outcome is antisymmetric (win(a, b) = 1 − win(b, a)), so two exchangeable
  responses score 1/2 in expectation; with one order only it does not.

  All randomness (opponents, votes) comes from np.random.default_rng(seed): deterministic.

  Args:
    policy: [P, n] policy samples' judge scores, or any items judge_fn accepts (e.g. an object
      array of texts).
    sft: [P, m] SFT samples, same kind as policy.
    judge_fn: judge_fn(first [K], second [K]) → p(first preferred) [K]. Default:
      position_biased_judge(beta, position_bias) on numeric scores.
    beta: the default judge's inverse temperature (1.0 if None); not allowed with judge_fn.
    position_bias: the default judge's b_pos (0.0 if None); not allowed with judge_fn.
    votes: (votes with the policy sample first, votes with the SFT sample first).
    seed: seed of the numpy Generator.
    exact: if True, replace the vote draws by their exact expected majority outcome (less
      variance; the opponents are still drawn).

  Returns:
    WinRate(per_prompt [P] mean outcome over the prompt's samples, overall mean over prompts).
  """
  if judge_fn is None:
    judge_fn = position_biased_judge(1.0 if beta is None else beta,
                                     0.0 if position_bias is None else position_bias)
    policy_arr, sft_arr = check_no_nan('policy', policy), check_no_nan('sft', sft)
  elif beta is not None or position_bias is not None:
    raise ValueError('pairwise_win_rate: beta / position_bias configure the default judge; '
                     'they cannot be combined with judge_fn')
  else:
    policy_arr, sft_arr = np.asarray(policy), np.asarray(sft)
  _check_2d('policy', policy_arr)
  _check_2d('sft', sft_arr)
  _check_same_prompts(policy=policy_arr, sft=sft_arr)
  if len(votes) != 2 or min(votes) < 0 or sum(votes) < 1:
    raise ValueError(f'votes must be two counts >= 0 with a positive sum, got votes={votes}')
  rng = np.random.default_rng(seed)
  num_prompts, num_samples = policy_arr.shape
  opponent_index = rng.integers(0, sft_arr.shape[1], size=(num_prompts, num_samples))
  opponents = np.take_along_axis(sft_arr, opponent_index, axis=1).ravel()
  samples = policy_arr.ravel()
  p_policy_first = np.asarray(judge_fn(samples, opponents), np.float64)
  p_sft_first = 1.0 - np.asarray(judge_fn(opponents, samples), np.float64)
  if exact:
    outcome = expected_majority_win(p_policy_first, p_sft_first, votes)
  else:
    count = rng.binomial(votes[0], p_policy_first) + rng.binomial(votes[1], p_sft_first)
    total = sum(votes)
    outcome = np.where(2 * count > total, 1.0, np.where(2 * count == total, 0.5, 0.0))
  per_prompt = outcome.reshape(num_prompts, num_samples).mean(axis=1)
  return WinRate(per_prompt, float(per_prompt.mean()))


# ---------------------------------------------------------------- bootstrap


def bootstrap_ci(per_prompt_values: ArrayLike, stat: Callable[[np.ndarray], float] = np.mean,
                 num_resamples: int = 1000, level: float = 0.95,
                 seed: int = 0) -> ConfidenceInterval:
  """Percentile bootstrap over prompts: (stat(values), low, high).

  Prompts are resampled with replacement num_resamples times with np.random.default_rng(seed);
  low/high are the (1 − level)/2 and (1 + level)/2 quantiles of the resampled statistic.
  """
  values = check_no_nan('per_prompt_values', per_prompt_values)
  if values.ndim != 1 or values.size == 0:
    raise ValueError(f'per_prompt_values must be a non-empty 1-d array, got shape {values.shape}')
  level = _check_quantile(level, 'level')
  if num_resamples < 1:
    raise ValueError(f'num_resamples must be >= 1, got {num_resamples}')
  rng = np.random.default_rng(seed)
  resampled = values[rng.integers(0, values.size, size=(num_resamples, values.size))]
  if stat is np.mean or stat is np.median:  # vectorised fast path
    boot = stat(resampled, axis=1)
  else:
    boot = np.array([stat(row) for row in resampled], np.float64)
  low, high = np.quantile(boot, [(1.0 - level) / 2, (1.0 + level) / 2])
  return ConfidenceInterval(float(stat(values)), float(low), float(high))


# ---------------------------------------------------------------- KL


def kl_from_logprobs(logp_pi: ArrayLike, logp_pi0: ArrayLike,
                     mask: ArrayLike | None = None) -> tuple[jax.Array, jax.Array]:
  """Sequence KL(π ‖ π0) estimate per sample: Σ_t mask_t (log π(y_t|·) − log π0(y_t|·)).

  This is the Monte Carlo estimate E_{y~π}[log π(y|x) − log π0(y|x)]: it is unbiased only when
  the samples y were drawn from π itself (at the temperature the log-probs are computed at).
  Single samples can be negative; their mean converges to the KL. Masked positions are replaced
  by 0 before the sum (so −inf log-probs of padding do not leak). Runs under jit.

  Args:
    logp_pi: [..., L] log-probs of the sampled tokens under π, e.g. [P, n, L].
    logp_pi0: [..., L] the same tokens under π0.
    mask: [..., L] 1/True on response tokens, 0/False on padding; None means all tokens.

  Returns:
    (per-sample KL [...], mean over all samples).
  """
  logp_pi, logp_pi0 = jnp.asarray(logp_pi), jnp.asarray(logp_pi0)
  if logp_pi.shape != logp_pi0.shape:
    raise ValueError(f'logp_pi shape {logp_pi.shape} != logp_pi0 shape {logp_pi0.shape}')
  log_ratio = logp_pi - logp_pi0
  if mask is not None:
    mask = jnp.asarray(mask)
    if mask.shape != logp_pi.shape:
      raise ValueError(f'mask shape {mask.shape} != logp_pi shape {logp_pi.shape}')
    log_ratio = jnp.where(mask.astype(bool), log_ratio, 0.0)
  per_sample = log_ratio.sum(axis=-1)
  return per_sample, per_sample.mean()


# ---------------------------------------------------------------- histograms


def shared_range(*arrays: ArrayLike) -> tuple[float, float]:
  """(min, max) over all arrays, widened to a unit interval if degenerate; for shared bins."""
  values = np.concatenate([np.ravel(check_no_nan(f'arrays[{i}]', a))
                           for i, a in enumerate(arrays)]) if arrays else np.zeros(0)
  if values.size == 0:
    raise ValueError('shared_range: no values')
  low, high = float(values.min()), float(values.max())
  return (low - 0.5, high + 0.5) if low == high else (low, high)


def reward_histogram(values: ArrayLike, bins: int = 30,
                     value_range: tuple[float, float] | None = None,
                     density: bool = True) -> Histogram:
  """Histogram of rewards (densities integrate to 1 when density=True)."""
  array = check_no_nan('values', values).ravel()
  if array.size == 0:
    raise ValueError('reward_histogram: values is empty')
  counts, edges = np.histogram(array, bins=bins, range=value_range or shared_range(array),
                               density=density)
  return Histogram(counts, edges)


def joint_histogram(x: ArrayLike, y: ArrayLike, bins: int = 30,
                    ranges: tuple[tuple[float, float], tuple[float, float]] | None = None,
                    density: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """2-d histogram [bins, bins] of paired rewards (e.g. helpful, harmless), with x/y edges."""
  x_arr, y_arr = check_no_nan('x', x).ravel(), check_no_nan('y', y).ravel()
  if x_arr.shape != y_arr.shape or x_arr.size == 0:
    raise ValueError(f'x and y must be non-empty and paired, got sizes {x_arr.size}, {y_arr.size}')
  ranges = ranges or (shared_range(x_arr), shared_range(y_arr))
  values, x_edges, y_edges = np.histogram2d(x_arr, y_arr, bins=bins, range=ranges,
                                            density=density)
  return values, x_edges, y_edges


# ---------------------------------------------------------------- matched KL


def nearest_kl_index(kl: Sequence[float] | ArrayLike, target_kl: float) -> int:
  """Index of the run whose KL is nearest to target_kl (the first one on ties)."""
  kls = check_no_nan('kl', kl).ravel()
  if kls.size == 0:
    raise ValueError('nearest_kl_index: no runs')
  return int(np.argmin(np.abs(kls - float(target_kl))))


def interpolate_at_kl(kl: Sequence[float] | ArrayLike, metric: Sequence[float] | ArrayLike,
                      target_kl: float | ArrayLike) -> np.ndarray | float:
  """A metric at target KL(s) by linear interpolation along a frontier of (kl, metric) points.

  Points are sorted by KL; points with equal KL are averaged. Targets outside [min KL, max KL]
  give NaN (no extrapolation), so a comparison never leaves the range a frontier covers.
  """
  kls, metrics = check_no_nan('kl', kl).ravel(), check_no_nan('metric', metric).ravel()
  if kls.shape != metrics.shape or kls.size == 0:
    raise ValueError(f'kl and metric must be non-empty and paired, got sizes {kls.size}, '
                     f'{metrics.size}')
  unique_kl, inverse = np.unique(kls, return_inverse=True)
  mean_metric = np.bincount(inverse, weights=metrics) / np.bincount(inverse)
  target = np.asarray(target_kl, np.float64)
  inside = (target >= unique_kl[0]) & (target <= unique_kl[-1])
  result = np.where(inside, np.interp(target, unique_kl, mean_metric), np.nan)
  return float(result) if result.ndim == 0 else result
