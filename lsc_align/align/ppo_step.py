"""The PPO update's jitted pieces, shared by both learners: settings, optimizer, GAE rollout
and the clipped-surrogate minibatch updates (the scoring step is lsc_align.align.scoring_step).

Update: `update_step` is one minibatch step; `update_epochs` runs all epochs × minibatches as
one compiled program (the learners' path).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import gin
import jax
import jax.numpy as jnp
import optax

from lsc_align.models import policy, sampling
from lsc_align.models.policy import PolicyConfig
from lsc_align.align import ppo_math
from lsc_align.train.loop import TrainState


@dataclasses.dataclass(frozen=True)
class PPOHyperparams:
  """Update settings. Paper scale: policy lr 5e-6, value lr 4e-5, 2,000 warm-up of 20,000."""
  policy_lr: float = 5e-6
  value_lr: float = 4e-5
  warmup_steps: int = 2000
  discount: float = 1.0
  gae_lambda: float = 0.95
  clip_ratio: float = 0.2
  value_clip: float | None = 0.2   # V moves at most this far from V_old per update; None: off
  value_coef: float = 1.0
  entropy_coef: float = 0.0
  epochs: int = 1
  num_minibatches: int = 1
  max_grad_norm: float = 1.0
  temperature: float = 1.0
  max_response_length: int = 32
  # True: the value loss trains the value head only (no value gradient into the shared trunk).
  detach_value: bool = False
  # Critic start: 'none' (V as SFT left it), 'mean_return' (value head's output bias set to the
  # mean π0 return), 'prefit' (value head fitted to π0 rollouts' returns, value_prefit_steps).
  value_init: str = 'none'
  value_prefit_steps: int = 100
  # Responses per prompt per iteration (the batch holds batch_size × this many rollouts); the
  # RLOO learner needs ≥ 2 for its leave-one-out baseline.
  samples_per_prompt: int = 1
  # > 0: after warm-up, both learning rates fall linearly to 0 at this many updates (counted in
  # minibatch updates, like warmup_steps); 0: constant after warm-up.
  lr_decay_steps: int = 0

  def __post_init__(self):
    if self.value_init not in VALUE_INITS:
      raise ValueError(f'PPOHyperparams.value_init {self.value_init!r} not in {VALUE_INITS}')
    if self.value_clip is not None and not self.value_clip > 0:
      raise ValueError(f'PPOHyperparams.value_clip must be > 0 or None, got {self.value_clip}')
    if self.samples_per_prompt < 1:
      raise ValueError(f'samples_per_prompt must be >= 1, got {self.samples_per_prompt}')


VALUE_INITS = ('none', 'mean_return', 'prefit')
# Bound as @ppo.PPOHyperparams() (e.g. run_learner.hp); a direct call takes only its arguments.
gin.external_configurable(PPOHyperparams, module='ppo')


def loss_config(config: PolicyConfig, hp: PPOHyperparams) -> PolicyConfig:
  """The policy config for loss computations: value head detached from the trunk if asked."""
  if hp.detach_value and not config.detach_value_head:
    return dataclasses.replace(config, detach_value_head=True)
  return config


def make_optimizer(hp: PPOHyperparams, params: Any) -> optax.GradientTransformation:
  """Adam with separate policy and value learning rates, linear warm-up then constant (or a
  linear decay to 0 at hp.lr_decay_steps)."""
  warmup = max(hp.warmup_steps, 1)
  if hp.lr_decay_steps and hp.lr_decay_steps <= warmup:
    raise ValueError(f'lr_decay_steps {hp.lr_decay_steps} must exceed warmup_steps {warmup}')

  def schedule(lr: float) -> optax.Schedule:
    after = (optax.linear_schedule(lr, 0.0, hp.lr_decay_steps - warmup) if hp.lr_decay_steps
             else optax.constant_schedule(lr))
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), after], [warmup])
  return optax.chain(
      optax.clip_by_global_norm(hp.max_grad_norm),
      optax.multi_transform({'policy': optax.adam(schedule(hp.policy_lr)),
                             'value_head': optax.adam(schedule(hp.value_lr))},
                            policy.param_labels(params)))


class Rollout(NamedTuple):
  """What one minibatch update needs, all [B, ...]."""
  prompt_ids: jax.Array
  response_ids: jax.Array
  response_mask: jax.Array
  old_logprobs: jax.Array
  old_values: jax.Array
  advantages: jax.Array
  returns: jax.Array


@functools.partial(jax.jit, static_argnames=('config', 'hp'))
def advantages_step(config: PolicyConfig, hp: PPOHyperparams, params: Any, prompt_ids: jax.Array,
                    response_ids: jax.Array, token_rewards: jax.Array) -> Rollout:
  """Old log-probs and values in one forward pass, then GAE and whitened advantages.

  Recomputing log π_old here (instead of reusing the sampler's) keeps the ratio at exactly 1 on
  the first minibatch: the sampler's incremental cache and a full forward pass differ in float
  rounding, which would otherwise leak into the clipping.
  """
  scores = sampling.response_logprobs(params, config, prompt_ids, response_ids, hp.temperature)
  mask = scores.response_mask
  adv, returns = ppo_math.gae_advantages(token_rewards, scores.values, mask, hp.discount,
                                         hp.gae_lambda)
  return Rollout(prompt_ids, response_ids, mask, scores.logprobs, scores.values,
                 ppo_math.whiten(adv, mask), returns)


def _minibatch_step(state: TrainState, config: PolicyConfig, hp: PPOHyperparams,
                    batch: Rollout) -> tuple[TrainState, dict[str, jax.Array]]:
  """One gradient step on a minibatch: clipped surrogate + clipped value loss (− entropy)."""
  config = loss_config(config, hp)

  def loss_fn(params):
    # With entropy_coef 0 the entropy is only reported: no backward pass through it.
    s = sampling.response_logprobs(params, config, batch.prompt_ids, batch.response_ids,
                                   hp.temperature, entropy_gradient=hp.entropy_coef != 0)
    pg_loss, pg_stats = ppo_math.policy_loss(s.logprobs, batch.old_logprobs, batch.advantages,
                                             batch.response_mask, hp.clip_ratio)
    v_loss, v_stats = ppo_math.value_loss(s.values, batch.old_values, batch.returns,
                                          batch.response_mask, hp.value_clip)
    entropy = ppo_math.masked_mean(s.entropy, batch.response_mask)
    loss = pg_loss + hp.value_coef * v_loss - hp.entropy_coef * entropy
    return loss, {'policy_loss': pg_loss, 'value_loss': v_loss, 'entropy': entropy,
                  **pg_stats, **v_stats}

  (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  stats = dict(stats, loss=loss, grad_norm=optax.global_norm(grads))
  return state.apply_gradients(grads), stats


update_step = functools.partial(jax.jit, static_argnames=('config', 'hp'),
                                donate_argnums=(0,))(_minibatch_step)
update_step.__doc__ = _minibatch_step.__doc__


def minibatch_orders(size: int, hp: PPOHyperparams, shuffle_key: jax.Array) -> jax.Array:
  """[epochs · num_minibatches, size / num_minibatches] row indices: epoch e's rows in the order
  permutation(fold_in(shuffle_key, e)), cut into consecutive minibatches."""
  if size % hp.num_minibatches:
    raise ValueError(f'{size} rollouts not divisible by num_minibatches {hp.num_minibatches}')
  orders = [jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), size)
            for epoch in range(hp.epochs)]
  return jnp.stack(orders).reshape(hp.epochs * hp.num_minibatches, size // hp.num_minibatches)


@functools.partial(jax.jit, static_argnames=('config', 'hp'), donate_argnums=(0,))
def update_epochs(state: TrainState, config: PolicyConfig, hp: PPOHyperparams, rollout: Rollout,
                  shuffle_key: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
  """hp.epochs passes of hp.num_minibatches `update_step`s over the rollout, as one program.

  A lax.scan over the epochs × minibatches updates, the minibatch order drawn inside
  (`minibatch_orders`, the same for the same key); the state is donated. Returns the new state
  and each statistic's mean over the updates.
  """
  orders = minibatch_orders(rollout.prompt_ids.shape[0], hp, shuffle_key)

  def body(state, rows):
    minibatch = jax.tree.map(lambda x: jnp.take(x, rows, axis=0), rollout)
    return _minibatch_step(state, config, hp, minibatch)

  state, stats = jax.lax.scan(body, state, orders)
  return state, jax.tree.map(lambda x: jnp.mean(x, axis=0), stats)
