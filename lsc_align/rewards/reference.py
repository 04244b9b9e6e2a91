"""Reference rewards r_ref(x), one per prompt (paper §3: choosing the reference).

* `empirical_quantile`: the q-quantile of the rewards of m samples from π0 for the prompt.
* `gaussian_reference`: r_mean(x) + Φ⁻¹(q) · r_std(x) from two regression heads trained on the
  per-prompt mean and standard deviation of π0 sample rewards (Φ⁻¹(0.85) ≈ 1.04).
* `canned_reference`: the mean reward of canned responses such as "I can't answer that" (the
  natural reference for harmlessness: a response must beat a refusal to count as good).
* `constant_reference`: the same value for every prompt (the "log-sigmoid only" ablation uses 0).
* `reference_table`: an objective's [N, K] table, each property's column by its ReferenceSpec,
  from what the pools and predictors give (lsc_align.pipeline.reference_tables assembles them).

Quantiles are validated eagerly: outside (0, 1) is a ValueError, since q = 0 or 1 makes the
reference the sample minimum / maximum (or ±∞ for the Gaussian) rather than a typical response.
"""
from __future__ import annotations

import statistics
from typing import Any, Callable, Mapping, Sequence, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from lsc_align.rewards.objectives import Objective, ReferenceKind

Prompts = TypeVar('Prompts')
Response = TypeVar('Response')


def _check_quantile(q: float, where: str) -> float:
  try:
    q = float(q)
  except TypeError as e:
    raise ValueError(f'{where}: quantile must be a number in (0, 1), got {q!r}') from e
  if not 0.0 < q < 1.0:  # also rejects NaN
    raise ValueError(f'{where}: quantile must lie strictly inside (0, 1), got {q}')
  return q


def empirical_quantile(sample_rewards: ArrayLike, q: float, axis: int = -1) -> jax.Array:
  """The q-quantile of per-prompt sample rewards (linear interpolation, as numpy.quantile).

  Args:
    sample_rewards: rewards of m samples from π0 per prompt, e.g. shape [num_prompts, m].
    q: quantile in (0, 1); 0.5 is the π0 median.
    axis: the samples axis.

  Returns:
    r_ref(x), the samples axis removed.
  """
  q = _check_quantile(q, 'empirical_quantile')
  sample_rewards = jnp.asarray(sample_rewards)
  if sample_rewards.ndim == 0:
    raise ValueError('empirical_quantile: sample_rewards must have a samples axis, got a scalar')
  if sample_rewards.shape[axis] == 0:
    raise ValueError(f'empirical_quantile: no samples (shape {sample_rewards.shape}, '
                     f'samples axis {axis} is empty)')
  return jnp.quantile(sample_rewards, q, axis=axis, method='linear')


def gaussian_quantile_offset(q: float) -> float:
  """s = Φ⁻¹(q), the number of standard deviations above the mean for quantile q."""
  q = _check_quantile(q, 'gaussian_quantile_offset')
  # Plain Python (not jax.scipy.special.ndtri): a constant, so it also works under jit.
  return statistics.NormalDist().inv_cdf(q)


def gaussian_reference(mean: ArrayLike, std: ArrayLike, q: float) -> jax.Array:
  """r_ref(x) = r_mean(x) + Φ⁻¹(q) · r_std(x): the q-quantile of a Gaussian fit to π0 rewards."""
  mean = jnp.asarray(mean)
  std = jnp.asarray(std)
  if mean.shape != std.shape:
    raise ValueError(f'gaussian_reference: mean shape {mean.shape} != std shape {std.shape}')
  return mean + jnp.asarray(gaussian_quantile_offset(q), mean.dtype) * std


def canned_reference(score_fn: Callable[[Prompts, Response], ArrayLike], prompts: Prompts,
                     responses: Sequence[Response]) -> jax.Array:
  """Mean reward of canned responses for each prompt: r_ref(x) = mean_j r(x, y_j).

  Args:
    score_fn: score_fn(prompts, response) → rewards [num_prompts] for one canned response given
      to every prompt (e.g. a reward model's forward pass on token ids).
    prompts: whatever score_fn takes for a batch of prompts.
    responses: the canned responses, e.g. "I can't answer that." and variants.

  Returns:
    r_ref(x), shape [num_prompts].
  """
  if len(responses) == 0:
    raise ValueError('canned_reference: no canned responses given')
  scores = [jnp.asarray(score_fn(prompts, r)) for r in responses]
  shapes = {s.shape for s in scores}
  if len(shapes) != 1 or scores[0].ndim != 1:
    raise ValueError(f'canned_reference: score_fn must return one reward per prompt with the '
                     f'same shape for every response; got shapes {sorted(shapes)}')
  return jnp.mean(jnp.stack(scores), axis=0)


def constant_reference(shape: Sequence[int], value: float = 0.0,
                       dtype: jnp.dtype = jnp.float32) -> jax.Array:
  """The same reference for every prompt."""
  if not np.isfinite(value):
    raise ValueError(f'constant_reference: value must be finite, got {value}')
  return jnp.full(tuple(shape), value, dtype)


def sample_statistics(sample_rewards: ArrayLike, axis: int = -1) -> tuple[jax.Array, jax.Array]:
  """Per-prompt mean and standard deviation of sample rewards: the Gaussian heads' targets."""
  sample_rewards = jnp.asarray(sample_rewards)
  if sample_rewards.ndim == 0 or sample_rewards.shape[axis] < 2:
    raise ValueError(f'sample_statistics: need at least 2 samples per prompt, got shape '
                     f'{sample_rewards.shape}')
  return jnp.mean(sample_rewards, axis=axis), jnp.std(sample_rewards, axis=axis, ddof=1)


CALIBRATION_QUANTILES = (0.5, 0.75, 0.85, 0.95)


def check_moments(mean: ArrayLike, std: ArrayLike, where: str) -> tuple[np.ndarray, np.ndarray]:
  """Host-side check of predicted (r_mean, r_std): finite, std > 0; ValueError naming the row."""
  mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
  if mean.shape != std.shape:
    raise ValueError(f'{where}: mean shape {mean.shape} != std shape {std.shape}')
  bad = ~np.isfinite(mean) | ~np.isfinite(std) | (std <= 0)
  if bad.any():
    i = int(np.flatnonzero(bad.reshape(-1))[0])
    raise ValueError(f'{where}: prompt {i} has predicted mean {mean.reshape(-1)[i]!r} and std '
                     f'{std.reshape(-1)[i]!r}; a Gaussian reference needs a finite mean and a '
                     'std > 0')
  return mean, std


def quantile_calibration(predicted: ArrayLike, q: float, sample_rewards: ArrayLike,
                         bootstrap: int = 200) -> dict[str, float]:
  """How well per-prompt references `predicted` [N] act as q-quantiles of fresh π0 samples [N, m].

  Returns `coverage` (share of samples below the reference; ideal q) with its standard error
  over prompts, the reference's error against the empirical q-quantile of the m samples (mean,
  mean absolute, RMS, in reward units; the mean absolute error also as a share of each prompt's
  sample std), and `empirical_quantile_se`, the bootstrap standard error of that empirical
  quantile itself: the noise floor under the error.
  """
  q = _check_quantile(q, 'quantile_calibration')
  predicted = np.asarray(predicted, np.float64)
  samples = np.asarray(sample_rewards, np.float64)
  if samples.ndim != 2 or samples.shape[0] != predicted.shape[0] or samples.shape[1] < 2:
    raise ValueError(f'quantile_calibration: sample_rewards must be [N={predicted.shape[0]}, '
                     f'm >= 2], got {samples.shape}')
  below = (samples < predicted[:, None]).mean(axis=1)
  error = predicted - np.quantile(samples, q, axis=1)
  sample_std = samples.std(axis=1, ddof=1)
  rng = np.random.default_rng(0)
  draws = rng.integers(0, samples.shape[1], (bootstrap, samples.shape[1]))
  boot = np.quantile(samples[:, draws], q, axis=2)  # [N, bootstrap]
  return {
      'q': q, 'coverage': float(below.mean()),
      'coverage_se': float(below.std(ddof=1) / np.sqrt(len(below))),
      'quantile_error_mean': float(error.mean()),
      'quantile_error_mae': float(np.abs(error).mean()),
      'quantile_error_rmse': float(np.sqrt(np.mean(error ** 2))),
      'quantile_error_mae_in_std': float(np.nanmean(
          np.abs(error) / np.where(sample_std > 0, sample_std, np.nan))),
      'empirical_quantile_se': float(np.mean(boot.std(axis=1))),
  }


def calibration(mean: ArrayLike, std: ArrayLike, sample_rewards: ArrayLike,
                quantiles: Sequence[float] = CALIBRATION_QUANTILES) -> dict[str, Any]:
  """`quantile_calibration` of the Gaussian quantiles r_mean + Φ⁻¹(q)·r_std for each q.

  Args:
    mean, std: the predictor's r_mean(x), r_std(x) per prompt, [N].
    sample_rewards: rewards of m fresh π0 samples per prompt, [N, m] (prompts and samples the
      predictor has not seen).
    quantiles: the q to check.

  Returns:
    {'prompts', 'samples_per_prompt', 'mean_rmse' and 'std_rmse' (against the samples' mean and
    std), 'sample_std_mean', 'quantiles': one quantile_calibration row per q}.
  """
  mean, std = check_moments(mean, std, 'calibration')
  samples = np.asarray(sample_rewards, np.float64)
  if samples.ndim != 2 or samples.shape[0] != mean.shape[0] or samples.shape[1] < 2:
    raise ValueError(f'calibration: sample_rewards must be [N={mean.shape[0]}, m >= 2], got '
                     f'{samples.shape}')
  sample_std = samples.std(axis=1, ddof=1)
  return {'prompts': int(samples.shape[0]), 'samples_per_prompt': int(samples.shape[1]),
          'mean_rmse': float(np.sqrt(np.mean((mean - samples.mean(axis=1)) ** 2))),
          'std_rmse': float(np.sqrt(np.mean((std - sample_std) ** 2))),
          'sample_std_mean': float(sample_std.mean()),
          'quantiles': [quantile_calibration(mean + gaussian_quantile_offset(q) * std, q,
                                             samples) for q in quantiles]}


def reference_table(objective: Objective, sample_rewards: Mapping[str, np.ndarray] | None = None,
                    canned: Mapping[str, np.ndarray] | None = None,
                    num_prompts: int | None = None,
                    gaussian: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None
                    ) -> np.ndarray:
  """[N, P] references, one column per objective property, from its ReferenceSpec.

  Args:
    objective: which reference each property uses.
    sample_rewards: property → [N, m] rewards of π0 samples (quantile references).
    canned: property → [N] mean reward of canned responses (canned references).
    num_prompts: N, needed when no column comes from data (constant / none only).
    gaussian: property → (r_mean, r_std) [N] from its predictor (Gaussian references). Without
      it a Gaussian column is 0, for a scoring step that evaluates the predictor itself.
  """
  sample_rewards, canned = dict(sample_rewards or {}), dict(canned or {})
  gaussian = dict(gaussian or {})
  sizes = {v.shape[0] for v in list(sample_rewards.values()) + list(canned.values())}
  sizes |= {m.shape[0] for m, _ in gaussian.values()}
  if num_prompts is not None:
    sizes.add(num_prompts)
  if len(sizes) != 1:
    raise ValueError(f'reference inputs disagree on the number of prompts: {sorted(sizes)}')
  n = sizes.pop()
  columns = []
  for prop, spec in zip(objective.properties, objective.references):
    if spec.kind == ReferenceKind.QUANTILE:
      if prop not in sample_rewards:
        raise ValueError(f'objective {objective.name!r}: {prop!r} needs π0 sample rewards for '
                         f'its quantile-{spec.quantile} reference')
      columns.append(np.asarray(empirical_quantile(sample_rewards[prop], spec.quantile)))
    elif spec.kind == ReferenceKind.CANNED:
      if prop not in canned:
        raise ValueError(f'objective {objective.name!r}: {prop!r} needs canned-response rewards')
      columns.append(np.asarray(canned[prop]))
    elif spec.kind == ReferenceKind.GAUSSIAN and prop in gaussian:
      columns.append(np.asarray(gaussian_reference(*gaussian[prop], spec.quantile)))
    elif spec.kind == ReferenceKind.CONSTANT:
      columns.append(np.full((n,), spec.value, np.float32))
    else:  # NONE (raw, pointwise), or GAUSSIAN evaluated in the scoring step
      columns.append(np.zeros((n,), np.float32))
  return np.stack(columns, axis=-1).astype(np.float32)
