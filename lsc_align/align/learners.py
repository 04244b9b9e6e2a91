"""The policy learners by name: each name of conventions.LEARNERS → its iteration function.

Both learners share the scoring step (lsc_align.align.scoring_step) and PPO's clipped-surrogate
update (lsc_align.align.ppo_step); they differ in the advantage: PPO's GAE with a critic
(lsc_align.align.ppo), RLOO's leave-one-out baseline (lsc_align.align.rloo).
"""
from __future__ import annotations

from typing import Callable

import jax

from lsc_align.conventions import LEARNERS
from lsc_align.align import ppo, rloo
from lsc_align.align.ppo import PPOState

Iteration = Callable[..., tuple[PPOState, dict[str, jax.Array]]]
ITERATIONS: dict[str, Iteration] = {'ppo': ppo.ppo_iteration, 'rloo': rloo.rloo_iteration}
if tuple(ITERATIONS) != LEARNERS:
  raise ImportError(f'learners.ITERATIONS names {tuple(ITERATIONS)}, conventions.LEARNERS '
                    f'{LEARNERS}')


def iteration_fn(learner: str) -> Iteration:
  """The iteration function of a learner name ('ppo' or 'rloo')."""
  if learner not in ITERATIONS:
    raise ValueError(f'learner {learner!r} must be one of {sorted(ITERATIONS)}')
  return ITERATIONS[learner]
