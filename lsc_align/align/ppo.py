"""The PPO learner: one iteration = rollout → scoring step → GAE → minibatch epochs.

`ppo_iteration` is what `run_training` calls per step; everything fixed during training (reward
models, π0, prompts, reference table, γ) lives in a `PPOSetup`. The state's `step` counts
iterations, so checkpoints and metrics are per iteration and resume is exact (the rollout key is
fold_in(rng, step) and the prompt batch is a function of the step).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from lsc_align import partitioning
from lsc_align.models import sampling
from lsc_align.align import ppo_step, scoring_step
from lsc_align.train.loop import EpochBatchSchedule, TrainState
from lsc_align.align.ppo_step import PPOHyperparams
from lsc_align.align.scoring_step import Scorer


class PPOState(struct.PyTreeNode):
  step: jax.Array          # completed PPO iterations
  policy: TrainState       # π (with value head); its own step counts minibatch updates


@dataclasses.dataclass
class PPOSetup:
  """What stays fixed during a PPO run."""
  scorer: Scorer
  hp: PPOHyperparams
  kl_coef: float                         # γ of the objective E[u] − γ KL
  reward_params: tuple[Any, ...]         # one reward model per objective property
  ref_policy_params: Any                 # π0
  prompt_ids: np.ndarray                 # [N, Lp] training prompts
  table_refs: np.ndarray                 # [N, P] per-prompt reference rewards (precomputed)
  batch_size: int
  seed: int = 0
  gaussian_params: tuple[Any, ...] = ()  # per property, for Gaussian references
  mesh: jax.sharding.Mesh | None = None
  timings: dict[str, float] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if not self.kl_coef > 0:
      raise ValueError(f'kl_coef (γ) must be > 0, got {self.kl_coef}')
    n = self.prompt_ids.shape[0]
    if self.table_refs.shape != (n, len(self.scorer.objective.properties)):
      raise ValueError(f'table_refs shape {self.table_refs.shape} != ({n}, '
                       f'{len(self.scorer.objective.properties)})')
    if not np.all(np.isfinite(self.table_refs)):
      bad = np.argwhere(~np.isfinite(self.table_refs))[0]
      raise ValueError(f'reference reward is not finite for prompt {bad[0]}, property '
                       f'{self.scorer.objective.properties[bad[1]]!r}')
    self.schedule = EpochBatchSchedule(n, self.batch_size, self.seed)

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's rows of step ``step``'s prompt batch (all of it with one process).

    `ppo_iteration` assembles the global batch from every process's rows (shard_batch).
    """
    idx = self.schedule.batch_indices(step, jax.process_index(), jax.process_count())
    return {'prompt_ids': self.prompt_ids[idx], 'table_refs': self.table_refs[idx].astype(
        np.float32), 'prompt_index': idx.astype(np.int32)}


def init_state(params: Any, hp: PPOHyperparams, seed: int) -> PPOState:
  """Step-0 state from π0's parameters (π starts at π0, value head included)."""
  tx = ppo_step.make_optimizer(hp, params)
  # A copy: updates donate π's buffers, and π0 (often the same arrays) must survive.
  params = jax.tree.map(lambda x: jnp.array(x, copy=True), params)
  return PPOState(step=jnp.zeros((), jnp.int32),
                  policy=TrainState.create(params, tx, jax.random.key(seed)))


def _place(setup: PPOSetup, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
  if setup.mesh is None:
    if jax.process_count() > 1:  # each process holds only its rows (PPOSetup.batch)
      raise ValueError('PPOSetup.mesh is None but there are several processes; give a mesh over '
                       'all devices so the processes\' rows form one global batch')
    return {k: jnp.asarray(v) for k, v in batch.items()}
  return partitioning.shard_batch(batch, setup.mesh)


def repeat_samples(batch: dict[str, jax.Array], k: int) -> dict[str, jax.Array]:
  """Each prompt row k times in a row (rows i·k .. i·k + k − 1 are prompt i's samples)."""
  return batch if k == 1 else {key: jnp.repeat(v, k, axis=0) for key, v in batch.items()}


def minibatch_updates(train: TrainState, config: Any, hp: PPOHyperparams,
                      rollout: ppo_step.Rollout, shuffle_key: jax.Array
                      ) -> tuple[TrainState, dict[str, jax.Array]]:
  """hp.epochs passes of hp.num_minibatches clipped updates over the rollout; mean statistics.

  One compiled program (ppo_step.update_epochs); `train` is donated.
  """
  return ppo_step.update_epochs(train, config, hp, rollout, shuffle_key)


def iteration_metrics(setup: PPOSetup, scores: scoring_step.Scores, response_mask: jax.Array,
                      update_stats: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """The scalar metrics of one iteration (rollout utility, KL, objective, lengths, rewards)."""
  mask = response_mask.astype(jnp.float32)
  return {
      'kl': jnp.mean(scores.kl),
      'utility': jnp.mean(scores.utility),
      'objective': jnp.mean(scores.utility) - setup.kl_coef * jnp.mean(scores.kl),
      'response_length': jnp.mean(jnp.sum(mask, axis=-1)),
      **{f'reward_{p}': jnp.mean(scores.rewards[:, i])
         for i, p in enumerate(setup.scorer.objective.properties)},
      **update_stats,
  }


@dataclasses.dataclass
class Scored:
  """One iteration's rollouts, scored: what every learner's update starts from."""
  batch: dict[str, jax.Array]      # placed prompt batch, samples_per_prompt rows per prompt
  sample: Any                      # sampling.SampleOutput
  scores: Any                      # scoring_step.Scores
  shuffle_key: jax.Array           # for the minibatch order
  started: float                   # perf_counter at the start of sampling
  sampled: float                   # ... after sampling
  scored: float                    # ... after scoring


def sample_and_score(setup: PPOSetup, state: PPOState,
                     batch: dict[str, np.ndarray]) -> Scored:
  """Samples from the policy and runs the jitted scoring step (the part every learner shares)."""
  hp, config = setup.hp, setup.scorer.policy_config
  batch = repeat_samples(_place(setup, batch), hp.samples_per_prompt)
  key = jax.random.fold_in(state.policy.rng, state.step)
  rollout_key, shuffle_key = jax.random.split(key)
  t0 = time.perf_counter()
  sample = sampling.sample(state.policy.params, config, batch['prompt_ids'], rollout_key,
                           max_response_length=hp.max_response_length,
                           temperature=hp.temperature)
  jax.block_until_ready(sample.response_ids)
  t1 = time.perf_counter()
  scores = scoring_step.score(setup.scorer, setup.reward_params, setup.ref_policy_params,
                          setup.gaussian_params, batch['prompt_ids'], sample.response_ids,
                          sample.logprobs, batch['table_refs'], jnp.float32(setup.kl_coef))
  jax.block_until_ready(scores.utility)
  return Scored(batch, sample, scores, shuffle_key, t0, t1, time.perf_counter())


def finish_iteration(setup: PPOSetup, state: PPOState, scored: Scored, train: TrainState,
                     stats: dict[str, jax.Array]) -> tuple[PPOState, dict[str, jax.Array]]:
  """Records the timings and returns (next state, metrics) after a learner's update."""
  jax.block_until_ready(train.params)
  setup.timings = {'rollout_s': scored.sampled - scored.started,
                   'scoring_s': scored.scored - scored.sampled,
                   'update_s': time.perf_counter() - scored.scored}
  metrics = iteration_metrics(setup, scored.scores, scored.sample.response_mask, stats)
  return PPOState(step=state.step + 1, policy=train), metrics


def ppo_iteration(setup: PPOSetup, state: PPOState,
                  batch: dict[str, np.ndarray]) -> tuple[PPOState, dict[str, jax.Array]]:
  """One PPO iteration on a prompt batch; returns the new state and scalar metrics."""
  hp, config = setup.hp, setup.scorer.policy_config
  scored = sample_and_score(setup, state, batch)
  rollout = ppo_step.advantages_step(config, hp, state.policy.params, scored.batch['prompt_ids'],
                                     scored.sample.response_ids, scored.scores.token_rewards)
  train, stats = minibatch_updates(state.policy, config, hp, rollout, scored.shuffle_key)
  return finish_iteration(setup, state, scored, train, stats)
