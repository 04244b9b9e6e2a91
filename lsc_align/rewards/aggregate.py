"""Aggregation of per-property rewards into one utility (paper §4, "Reward Aggregation").

    u(x, y) = Σ_i w_i · T(r_i(x, y), r_ref,i(x)).

With the LSC transform and unit weights, Σ_i log σ(r_i − r_ref,i) = log Π_i σ(r_i − r_ref,i)
= log p(good on every property | x, y) under conditional independence: a logical AND. The
references take the role of weights: a lower reference saturates that property sooner. The
baseline is the weighted raw sum w·r_helpful + (1 − w)·r_harmless.

`utility` is the function the PPO scoring step calls inside jit; it is elementwise over the
leading (batch) axes, so it shards like the batch and needs no communication. `pool_utilities`
is the same function, jitted, over a pool's samples with one reference per prompt.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from lsc_align.rewards import transforms
from lsc_align.rewards import objectives
from lsc_align.rewards.objectives import Objective


def transformed_rewards(rewards: ArrayLike, references: ArrayLike,
                        objective: Objective) -> jax.Array:
  """Per-property transformed rewards T(r_i, r_ref,i), shape [..., P], before weighting."""
  rewards = jnp.asarray(rewards)
  references = jnp.asarray(references)
  num = len(objective.properties)
  if rewards.ndim == 0 or rewards.shape[-1] != num:
    raise ValueError(f'objective {objective.name!r} has {num} properties '
                     f'{objective.properties}; rewards have shape {rewards.shape} '
                     f'(expected [..., {num}])')
  if references.shape != rewards.shape:
    raise ValueError(f'references have shape {references.shape}, rewards {rewards.shape}; '
                     'give one reference per prompt and property, broadcast to the rewards')
  return transforms.apply(objective.transform, rewards, references)


def utility(rewards: ArrayLike, references: ArrayLike, objective: Objective) -> jax.Array:
  """The aggregated utility u(x, y) for a batch.

  Args:
    rewards: r_i(x, y), shape [..., P] with P = len(objective.properties), in that order.
    references: r_ref,i(x), the same shape (ignored by raw/pointwise transforms).
    objective: what to compute; hashable, so pass it as a static argument under jit.

  Returns:
    u, shape [...].

  Examples:
    >>> obj = objectives.make_objective(
    ...     'and', ['helpful', 'harmless'], 'lsc',
    ...     {'helpful': ('quantile', .5), 'harmless': ('quantile', .5)})
    >>> utility(jnp.array([[1., 2.]]), jnp.zeros((1, 2)), obj)  # log σ(1) + log σ(2)
    Array([-0.44018972], dtype=float32)
  """
  u = transformed_rewards(rewards, references, objective)
  weights = jnp.asarray(objective.weights, dtype=u.dtype)
  return jnp.sum(u * weights, axis=-1)


_utility_jit = jax.jit(utility, static_argnums=2)


def pool_utilities(objective: Objective, rewards: Mapping[str, ArrayLike],
                   refs_PxK: ArrayLike) -> np.ndarray:
  """u of every sample of a pool [P, N] from property → its rewards [P, N] and the references
  [P, K] (K: the objective's properties, in order)."""
  missing = [p for p in objective.properties if p not in rewards]
  if missing:
    raise ValueError(f'objective {objective.name!r}: the pools have no {missing} rewards')
  rewards_PxNxK = np.stack([rewards[p] for p in objective.properties], axis=-1)
  refs = np.broadcast_to(np.asarray(refs_PxK)[:, None, :], rewards_PxNxK.shape)
  return np.asarray(_utility_jit(jnp.asarray(rewards_PxNxK), jnp.asarray(refs), objective))


def lsc_sum(rewards: ArrayLike, references: ArrayLike) -> jax.Array:
  """Σ_i log σ(r_i − r_ref,i) over the last axis: the AND utility without an Objective."""
  return jnp.sum(transforms.lsc(rewards, references), axis=-1)


def weighted_raw_sum(rewards: ArrayLike, weights: ArrayLike) -> jax.Array:
  """Σ_i w_i r_i over the last axis: the baseline aggregation."""
  return jnp.sum(jnp.asarray(rewards) * jnp.asarray(weights), axis=-1)
