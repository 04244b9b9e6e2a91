"""The scoring step both learners (PPO and RLOO) share, one jitted function (docs/DESIGN.md §2).

Reward-model forward passes for each property → reference rewards for the batch (a per-prompt
table, or the Gaussian predictor) → transform → aggregate → per-token KL penalty against π0 →
per-token rewards. The transform and aggregation are the reward library's pure functions,
elementwise over the batch, so they shard like the batch and add no host round trip.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lsc_align.models import policy, reward_model, sampling
from lsc_align.models.policy import PolicyConfig
from lsc_align.rewards import aggregate, reference
from lsc_align.rewards.objectives import Objective, ReferenceKind
from lsc_align.align import ppo_math


@dataclasses.dataclass(frozen=True)
class Scorer:
  """Static description of the scoring step (hashable: a static jit argument)."""
  objective: Objective
  reward_configs: tuple[reward_model.RewardModelConfig, ...]  # one per objective property
  policy_config: PolicyConfig
  temperature: float = 1.0
  gaussian_config: reward_model.RewardModelConfig | None = None

  def __post_init__(self):
    if len(self.reward_configs) != len(self.objective.properties):
      raise ValueError(f'{len(self.reward_configs)} reward models for objective '
                       f'{self.objective.name!r} with properties {self.objective.properties}')


class Scores(NamedTuple):
  token_rewards: jax.Array   # [B, Lr] −γ per-token KL, plus u at the last token
  utility: jax.Array         # [B]
  rewards: jax.Array         # [B, P] raw reward-model outputs
  references: jax.Array      # [B, P]
  kl: jax.Array              # [B] Σ_t log π − log π0 (sample estimate of the sequence KL)
  ref_logprobs: jax.Array    # [B, Lr] log π0


def reward_model_rewards(configs: tuple[reward_model.RewardModelConfig, ...],
                         params: tuple[Any, ...], prompt_ids: jax.Array,
                         response_ids: jax.Array) -> jax.Array:
  """r_i(x, y) for each property: [B, P]; inputs are packed exactly as the policy sees them."""
  tokens, _ = policy.pack_prompt_response(prompt_ids, response_ids)
  return jnp.stack([reward_model.RewardModel(c).apply({'params': p}, tokens)
                    for c, p in zip(configs, params)], axis=-1)


def batch_references(scorer: Scorer, table_refs: jax.Array, gaussian_params: tuple[Any, ...],
                     prompt_ids: jax.Array) -> jax.Array:
  """[B, P] references: per-prompt table entries; a Gaussian reference is evaluated here by the
  predictor when the scorer carries one (gaussian_config), else read from the table too."""
  columns = []
  for i, spec in enumerate(scorer.objective.references):
    if spec.kind == ReferenceKind.GAUSSIAN and scorer.gaussian_config is not None:
      mean, std = reward_model.GaussianReferenceModel(scorer.gaussian_config).apply(
          {'params': gaussian_params[i]}, prompt_ids)
      columns.append(reference.gaussian_reference(mean, std, spec.quantile))
    else:
      columns.append(table_refs[:, i])
  return jnp.stack(columns, axis=-1)


@functools.partial(jax.jit, static_argnames=('scorer',))
def score(scorer: Scorer, reward_params: tuple[Any, ...], ref_policy_params: Any,
          gaussian_params: tuple[Any, ...], prompt_ids: jax.Array, response_ids: jax.Array,
          logprobs: jax.Array, table_refs: jax.Array, kl_coef: jax.Array) -> Scores:
  """The scoring step (module docstring). kl_coef is γ, traced so a sweep reuses one compile."""
  rewards = reward_model_rewards(scorer.reward_configs, reward_params, prompt_ids, response_ids)
  refs = batch_references(scorer, table_refs, gaussian_params, prompt_ids)
  u = aggregate.utility(rewards, refs, scorer.objective)
  ref_scores = sampling.response_logprobs(ref_policy_params, scorer.policy_config, prompt_ids,
                                          response_ids, scorer.temperature)
  mask = ref_scores.response_mask
  token_rewards, kl_tokens = ppo_math.token_rewards(u, logprobs, ref_scores.logprobs, mask,
                                                    kl_coef)
  return Scores(token_rewards, u, rewards, refs, jnp.sum(kl_tokens, axis=-1), ref_scores.logprobs)
