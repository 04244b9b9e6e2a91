"""Training to convergence: J on held-out validation prompts, and the rule that stops on a plateau.

J(π) = E_x[E_π[u] − γ KL(π‖π0)] is estimated on a fixed set of validation prompts (training
prompts held out of the learner's batches), `samples` responses each, always with the same
sampling key (common random numbers: successive checks differ by the policy, not by the draw).

The rule (`PlateauRule`): every `check_every` iterations J is measured; training stops at the
first check where the best J of the last `window` checks exceeds the best J before them by less
than `tolerance` × (best J so far − J at iteration 0), or at `max_steps`. The same J at the last
check is the number a learning-rate grid compares (by J, never by KL).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np

from lsc_align.models import sampling
from lsc_align.align import scoring_step

_VALIDATION_KEY = 0x5A11D  # one fixed sampling key for every check of every run


@dataclasses.dataclass(frozen=True)
class PlateauRule:
  """When to stop (module docstring)."""
  check_every: int = 20
  window: int = 3
  tolerance: float = 0.01
  max_steps: int = 1000
  validation_prompts: int = 32      # held out of the training prompts (the last ones)
  samples: int = 8                  # responses per validation prompt per check

  def __post_init__(self):
    if min(self.check_every, self.window, self.max_steps, self.validation_prompts,
           self.samples) < 1 or not self.tolerance >= 0:
      raise ValueError(f'PlateauRule needs positive sizes and tolerance >= 0, got {self}')


# Bound as @convergence.PlateauRule(); a direct call takes only its arguments.
gin.external_configurable(PlateauRule, module='convergence')


def plateaued(history: Sequence[float], window: int, tolerance: float) -> bool:
  """True when the last `window` values (after the first, J at iteration 0) do not beat the best
  value before them by tolerance × (best so far − first)."""
  values = list(history)
  if len(values) < window + 2:  # J_0, at least one earlier check, then the window
    return False
  first, before, recent = values[0], max(values[:-window]), max(values[-window:])
  gain = max(max(values) - first, 1e-12)
  return recent - before < tolerance * gain


def validation_objective(setup: Any, params: Any, prompt_ids: np.ndarray, table_refs: np.ndarray,
                         samples: int) -> dict[str, float]:
  """J, E[u] and KL of π on the validation prompts (`samples` responses each, fixed key)."""
  hp = setup.hp
  config = setup.scorer.policy_config
  prompts = jnp.asarray(np.repeat(prompt_ids, samples, axis=0))
  refs = jnp.asarray(np.repeat(table_refs, samples, axis=0).astype(np.float32))
  out = sampling.sample(params, config, prompts, jax.random.key(_VALIDATION_KEY),
                        max_response_length=hp.max_response_length, temperature=hp.temperature)
  scores = scoring_step.score(setup.scorer, setup.reward_params, setup.ref_policy_params,
                          setup.gaussian_params, prompts, out.response_ids, out.logprobs, refs,
                          jnp.float32(setup.kl_coef))
  u, kl = float(jnp.mean(scores.utility)), float(jnp.mean(scores.kl))
  return {'objective': u - setup.kl_coef * kl, 'utility': u, 'kl': kl}


def run_until_plateau(state: Any, run_chunk: Callable[[Any, int, bool], Any],
                      validate: Callable[[Any], dict[str, float]], rule: PlateauRule,
                      history_path: str, resume: bool) -> tuple[Any, list[dict[str, float]]]:
  """Trains in chunks of rule.check_every iterations until `plateaued` or rule.max_steps.

  Args:
    state: the initial state (π0; also the restore template).
    run_chunk: (state, total_steps, resume) → loop.TrainResult; runs up to total_steps, saving
      a checkpoint there (checkpoints must fall on chunk ends, i.e. every check_every steps).
    validate: state → {'objective': J, ...} on the validation prompts.
    history_path: JSON list of {'step', 'objective', ...}, rewritten after each check; read back
      on resume, so the decision to stop is the same as without the interruption.
    resume: continue a run from its checkpoints and history.

  Returns:
    (the last chunk's TrainResult, or None if nothing ran; the history). A preempted chunk's
    result is returned at once (its status says so).
  """
  from lsc_align import io_utils  # pylint: disable=g-import-not-at-top
  history: list[dict[str, float]] = []
  if resume and io_utils.exists(history_path):
    history = json.loads(io_utils.read_text(history_path))
  if not history:
    history = [{'step': 0, **validate(state)}]  # the template's policy is π0
    io_utils.atomic_write_json(history_path, history)
  result = None
  step = int(history[-1]['step'])
  while not (plateaued([h['objective'] for h in history], rule.window, rule.tolerance)
             or step >= rule.max_steps):
    target = min(step + rule.check_every, rule.max_steps)
    result = run_chunk(state, target, resume or step > 0)
    if result.status.value != 'completed':
      return result, history
    state, step = result.state, target
    history.append({'step': step, **validate(state)})
    io_utils.atomic_write_json(history_path, history)
  if result is None:  # already converged: the final state from the last checkpoint
    result = run_chunk(state, step, True)
  return result, history
