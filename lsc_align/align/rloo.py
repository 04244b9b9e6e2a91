"""RLOO: k responses per prompt, a leave-one-out baseline, and no critic.

Per prompt, k responses y_1..y_k ~ π; each gets its KL-penalised return from the same jitted
scoring step as PPO (`scoring_step.score`: rewards → references → transform → aggregate →
per-token KL), R_i = u(x, y_i) − γ Σ_t log π/π0, and the advantage A_i = R_i − (1/(k−1)) Σ_{j≠i} R_j, an
unbiased baseline that needs no value function (Ahmadian et al. 2024, "Back to basics"). A_i is
divided by the batch's standard deviation of A (a global scale, so directions are unchanged) and
applied to every token of y_i in PPO's clipped surrogate, so several epochs over a batch stay
close to the sampling policy. The value head is left untouched (value_coef 0).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from lsc_align.models import sampling
from lsc_align.models.policy import PolicyConfig
from lsc_align.align import ppo, ppo_step
from lsc_align.align.ppo import PPOSetup, PPOState


def leave_one_out_advantages(returns: ArrayLike, k: int) -> jax.Array:
  """A_i = R_i − mean of the other k − 1 returns of the same prompt; rows grouped k by k.

  Args:
    returns: [B·k] sequence returns, rows i·k .. i·k + k − 1 belonging to prompt i.
    k: samples per prompt, ≥ 2.

  Returns:
    [B·k] advantages; each prompt's advantages sum to 0.
  """
  if k < 2:
    raise ValueError(f'RLOO needs at least 2 samples per prompt, got {k}')
  r = jnp.asarray(returns, jnp.float32).reshape(-1, k)
  baseline = (jnp.sum(r, axis=1, keepdims=True) - r) / (k - 1)
  return (r - baseline).reshape(-1)


@functools.partial(jax.jit, static_argnames=('config', 'hp'))
def rollout_step(config: PolicyConfig, hp: ppo_step.PPOHyperparams, params: Any,
                 prompt_ids: jax.Array, response_ids: jax.Array,
                 token_rewards: jax.Array) -> ppo_step.Rollout:
  """Old log-probs in one forward pass and the leave-one-out advantage on every token."""
  scores = sampling.response_logprobs(params, config, prompt_ids, response_ids, hp.temperature)
  mask = scores.response_mask.astype(jnp.float32)
  adv = leave_one_out_advantages(jnp.sum(token_rewards, axis=-1), hp.samples_per_prompt)
  adv = adv * jax.lax.rsqrt(jnp.mean(adv ** 2) + 1e-8)
  zeros = jnp.zeros_like(mask)
  return ppo_step.Rollout(prompt_ids, response_ids, scores.response_mask, scores.logprobs, zeros,
                          adv[:, None] * mask, zeros)


def rloo_iteration(setup: PPOSetup, state: PPOState,
                   batch: dict[str, np.ndarray]) -> tuple[PPOState, dict[str, jax.Array]]:
  """One RLOO iteration on a prompt batch (setup.hp.samples_per_prompt responses per prompt)."""
  hp, config = setup.hp, setup.scorer.policy_config
  # The value loss is off: the update is PPO's clipped surrogate (and entropy bonus) alone.
  update_hp = dataclasses.replace(hp, value_coef=0.0)
  scored = ppo.sample_and_score(setup, state, batch)
  rollout = rollout_step(config, hp, state.policy.params, scored.batch['prompt_ids'],
                         scored.sample.response_ids, scored.scores.token_rewards)
  train, stats = ppo.minibatch_updates(state.policy, config, update_hp, rollout,
                                       scored.shuffle_key)
  stats = {k: v for k, v in stats.items() if not k.startswith('value')}
  return ppo.finish_iteration(setup, state, scored, train, stats)
