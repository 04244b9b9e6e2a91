"""Reference rewards r_ref(x), one per prompt (paper §3: choosing the reference).

* `empirical_quantile`: the q-quantile of the rewards of m samples from π0 for the prompt.
* `gaussian_reference`: r_mean(x) + Φ⁻¹(q) · r_std(x) from two regression heads trained on the
  per-prompt mean and standard deviation of π0 sample rewards (Φ⁻¹(0.85) ≈ 1.04).
* `canned_reference`: the mean reward of canned responses such as "I can't answer that" (the
  natural reference for harmlessness: a response must beat a refusal to count as good).
* `constant_reference`: the same value for every prompt (the "log-sigmoid only" ablation uses 0).

Quantiles are validated eagerly: outside (0, 1) is a ValueError, since q = 0 or 1 makes the
reference the sample minimum / maximum (or ±∞ for the Gaussian) rather than a typical response.
"""
from __future__ import annotations

from typing import Callable, Sequence, TypeVar

import jax
import jax.numpy as jnp
import jax.scipy.special
import numpy as np
from jax.typing import ArrayLike

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
  return float(jax.scipy.special.ndtri(jnp.float32(q)))


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
