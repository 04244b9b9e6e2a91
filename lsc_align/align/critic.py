"""The critic's start: the value head set or fitted on π0 rollouts before the first PPO update.

SFT never trains the value head, so at PPO's start V(s_t) is whatever its initialisation gives
(≈ 0), while returns sit elsewhere (LSC utilities are ≤ 0, around −2 on the world). Through GAE
(λ < 1) a wrong V biases the policy gradient, not only its variance. Two remedies, chosen by
`PPOHyperparams.value_init`:

* 'mean_return': shift the value head's output bias so the mean V over real tokens equals the
  mean π0 return-to-go;
* 'prefit': `value_prefit_steps` Adam steps (at `value_lr`) of the value head alone on
  ½ (V − G_t)², with G_t the Monte-Carlo return-to-go of π0 rollouts on the training prompts.

At the start π = π0, so every per-token KL penalty is exactly 0 and G_t is the utility u(x, y).
Both are deterministic given the state's RNG key, so a run resumed from a checkpoint (which holds
the fitted head) continues exactly.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lsc_align.models import sampling
from lsc_align.models.policy import PolicyConfig
from lsc_align.align import ppo, ppo_math, ppo_step, scoring_step

_ROLLOUT_FOLD = 0x7FFF0000  # rollout keys of the fit, apart from the iterations' fold_in(rng, step)


def pi0_rollouts(setup: Any, params: Any, rng: jax.Array) -> ppo_step.Rollout:
  """One pass over the training prompts (whole batches) sampled from `params`, with G_t."""
  hp, config = setup.hp, setup.scorer.policy_config
  parts = []
  for i in range(setup.schedule.steps_per_epoch):
    placed = ppo._place(setup, setup.batch(i + 1))  # pylint: disable=protected-access
    batch = ppo.repeat_samples(placed, hp.samples_per_prompt)
    sample = sampling.sample(params, config, batch['prompt_ids'],
                             jax.random.fold_in(rng, _ROLLOUT_FOLD + i),
                             max_response_length=hp.max_response_length,
                             temperature=hp.temperature)
    scores = scoring_step.score(
        setup.scorer, setup.reward_params, setup.ref_policy_params, setup.gaussian_params,
        batch['prompt_ids'], sample.response_ids, sample.logprobs, batch['table_refs'],
        jnp.float32(setup.kl_coef))
    mask = sample.response_mask.astype(jnp.float32)
    _, returns = ppo_math.gae_advantages(scores.token_rewards, jnp.zeros_like(mask), mask,
                                         hp.discount, 1.0)
    zeros = jnp.zeros_like(mask)
    parts.append(ppo_step.Rollout(batch['prompt_ids'], sample.response_ids, mask, zeros, zeros,
                                  zeros, returns))
  return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *parts)


@functools.partial(jax.jit, static_argnames=('config', 'temperature'))
def _values(params: Any, config: PolicyConfig, prompt_ids: jax.Array, response_ids: jax.Array,
            temperature: float) -> jax.Array:
  return sampling.response_logprobs(params, config, prompt_ids, response_ids, temperature).values


def set_mean_return(params: Any, config: PolicyConfig, data: ppo_step.Rollout,
                    temperature: float) -> Any:
  """Params whose value head output bias makes mean V (real tokens) = mean return-to-go."""
  values = _values(params, config, data.prompt_ids, data.response_ids, temperature)
  shift = (ppo_math.masked_mean(data.returns, data.response_mask)
           - ppo_math.masked_mean(values, data.response_mask))
  head = params['value_head']
  out = dict(head['out'], bias=head['out']['bias'] + shift)
  return {**params, 'value_head': {**head, 'out': out}}


@functools.partial(jax.jit, static_argnames=('config', 'temperature', 'tx'))
def _fit_step(head: Any, opt_state: Any, trunk: Any, config: PolicyConfig, temperature: float,
              tx: optax.GradientTransformation, batch: ppo_step.Rollout) -> tuple[Any, Any, Any]:
  def loss_fn(head_):
    v = sampling.response_logprobs({**trunk, 'value_head': head_}, config, batch.prompt_ids,
                                   batch.response_ids, temperature).values
    return 0.5 * ppo_math.masked_mean((v - batch.returns) ** 2, batch.response_mask)
  loss, grads = jax.value_and_grad(loss_fn)(head)
  updates, opt_state = tx.update(grads, opt_state, head)
  return optax.apply_updates(head, updates), opt_state, loss


def prefit_value_head(params: Any, config: PolicyConfig, data: ppo_step.Rollout, steps: int,
                      learning_rate: float, batch_size: int, temperature: float,
                      seed: int = 0) -> tuple[Any, list[float]]:
  """The value head fitted by Adam to the returns-to-go (trunk fixed); returns (params, losses)."""
  tx = optax.adam(learning_rate)
  head = params['value_head']
  trunk = {k: v for k, v in params.items() if k != 'value_head'}
  opt_state = tx.init(head)
  n = data.prompt_ids.shape[0]
  batch_size = min(batch_size, n)
  per_epoch = n // batch_size
  rng = np.random.default_rng(seed)
  order = rng.permutation(n)
  losses = []
  for step in range(steps):
    if step and step % per_epoch == 0:
      order = rng.permutation(n)
    idx = order[(step % per_epoch) * batch_size:(step % per_epoch + 1) * batch_size]
    head, opt_state, loss = _fit_step(head, opt_state, trunk, config, temperature, tx,
                                      jax.tree.map(lambda x, idx=idx: x[idx], data))
    losses.append(float(loss))
  return {**params, 'value_head': head}, losses


def init_critic(setup: Any, state: Any) -> tuple[Any, dict[str, float]]:
  """The PPO state with its critic started as `setup.hp.value_init` says; and fit statistics."""
  hp = setup.hp
  if hp.value_init == 'none':
    return state, {}
  config = setup.scorer.policy_config
  params = state.policy.params
  data = pi0_rollouts(setup, params, state.policy.rng)
  def mse(p):
    v = _values(p, config, data.prompt_ids, data.response_ids, hp.temperature)
    return float(ppo_math.masked_mean((v - data.returns) ** 2, data.response_mask))
  before = mse(params)
  params = set_mean_return(params, config, data, hp.temperature)
  if hp.value_init == 'prefit':
    params, _ = prefit_value_head(params, config, data, hp.value_prefit_steps, hp.value_lr,
                                  setup.batch_size * hp.samples_per_prompt, hp.temperature,
                                  setup.seed)
  stats = {'value_mse_before': before, 'value_mse_after': mse(params),
           'return_variance': float(ppo_math.masked_mean(
               (data.returns - ppo_math.masked_mean(data.returns, data.response_mask)) ** 2,
               data.response_mask)),
           'rollouts': int(data.prompt_ids.shape[0])}
  if not all(math.isfinite(v) for v in stats.values()):
    raise FloatingPointError(f'critic initialisation produced non-finite statistics {stats}')
  return state.replace(policy=state.policy.replace(params=params)), stats
