"""PPO's critic and optimiser: the critic learns, the two learning rates act on their own
parameters, detach_value keeps the value loss out of the trunk, entropy_coef raises entropy, and
value_init starts V near the returns."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsc_align.models import policy, sampling
from lsc_align.align import critic, ground_truth, ppo, ppo_step
from lsc_align.train.loop import TrainState

CONFIG = policy.PolicyConfig(vocab_size=8, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                             num_layers=1, max_len=12, value_hidden_dim=16)
HP = ppo_step.PPOHyperparams(policy_lr=1e-2, value_lr=1e-2, warmup_steps=1, max_response_length=3,
                             value_clip=None)


def _rollout(params, advantages=0.0, returns=-2.0):
  prompts = jnp.array([[2, 3, 4], [5, 6, 0], [7, 2, 0], [3, 3, 3]], jnp.int32)
  responses = jnp.array([[2, 3, 1], [4, 1, 0], [1, 0, 0], [5, 6, 7]], jnp.int32)
  s = sampling.response_logprobs(params, CONFIG, prompts, responses)
  mask = s.response_mask.astype(jnp.float32)
  return ppo_step.Rollout(prompts, responses, s.response_mask, s.logprobs, s.values,
                          advantages * mask, returns * mask)


def _split(params):
  head = jax.tree.leaves(params['value_head'])
  trunk = jax.tree.leaves({k: v for k, v in params.items() if k != 'value_head'})
  return trunk, head


def _changed(a, b):
  return [not np.allclose(np.asarray(x), np.asarray(y)) for x, y in zip(a, b)]


def _steps(hp, advantages=1.0, n=2):  # warm-up: update 1 has learning rate 0
  params = policy.init_params(CONFIG, jax.random.key(0))
  batch = _rollout(params, advantages)
  state = TrainState.create(jax.tree.map(jnp.copy, params), ppo_step.make_optimizer(hp, params),
                            jax.random.key(1))
  for _ in range(n):
    state, stats = ppo_step.update_step(state, CONFIG, hp, batch)
  return params, state.params, stats


def test_policy_and_value_learning_rates_act_on_their_own_parameters():
  before, after, _ = _steps(dataclasses.replace(HP, policy_lr=0.0))
  trunk0, head0 = _split(before)
  trunk1, head1 = _split(after)
  assert not any(_changed(trunk0, trunk1)) and all(_changed(head0, head1))
  before, after, _ = _steps(dataclasses.replace(HP, value_lr=0.0))
  trunk0, head0 = _split(before)
  trunk1, head1 = _split(after)
  assert any(_changed(trunk0, trunk1)) and not any(_changed(head0, head1))


def test_detach_value_keeps_the_value_loss_out_of_the_trunk():
  # Zero advantages: the policy loss has no gradient, only the value loss moves parameters.
  hp = dataclasses.replace(HP, detach_value=True)
  before, after, _ = _steps(hp, advantages=0.0)
  assert not any(_changed(_split(before)[0], _split(after)[0]))
  before, after, _ = _steps(HP, advantages=0.0)
  assert any(_changed(_split(before)[0], _split(after)[0]))


def test_entropy_coef_raises_the_entropy():
  hp = dataclasses.replace(HP, value_coef=0.0, entropy_coef=1.0, policy_lr=3e-2)
  _, _, first = _steps(hp, advantages=0.0, n=1)
  _, _, last = _steps(hp, advantages=0.0, n=11)
  assert float(last['entropy']) > float(first['entropy']) + 0.01
  # Without the bonus and with zero advantages nothing moves the policy.
  before, after, _ = _steps(dataclasses.replace(hp, entropy_coef=0.0), advantages=0.0, n=3)
  assert not any(_changed(_split(before)[0], _split(after)[0]))


def test_the_critic_learns_the_returns():
  # Fixed policy (policy_lr 0), returns −2 everywhere: the value loss must fall by 10×.
  hp = dataclasses.replace(HP, policy_lr=0.0, value_lr=3e-2)
  _, _, first = _steps(hp, n=1)
  _, _, last = _steps(hp, n=61)
  assert float(last['value_loss']) < 0.1 * float(first['value_loss']), (first, last)


@pytest.fixture(scope='module')
def problem():
  return ground_truth.make_problem(ground_truth.GroundTruthSizes(
      vocab_size=6, max_response_length=2, num_prompts=4))


@pytest.mark.slow
@pytest.mark.parametrize('value_init', ['mean_return', 'prefit'])
def test_value_init_starts_the_critic_near_the_returns(problem, value_init):
  hp = ppo_step.PPOHyperparams(value_lr=1e-2, max_response_length=2, value_init=value_init,
                               value_prefit_steps=50)
  setup = ground_truth.make_setup(problem, problem.objective('lsc_sum'), 0.3, hp, 8)
  state = ppo.init_state(problem.pi0_params, hp, 0)
  new, stats = critic.init_critic(setup, state)
  assert stats['value_mse_after'] < stats['value_mse_before']
  if value_init == 'prefit':  # fitted: better than the best constant (the returns' mean)
    assert stats['value_mse_after'] < stats['return_variance']
  trunk0, _ = _split(state.policy.params)
  trunk1, _ = _split(new.policy.params)
  assert not any(_changed(trunk0, trunk1))  # only the value head moves
  assert critic.init_critic(dataclasses.replace(setup, hp=dataclasses.replace(
      hp, value_init='none')), state)[1] == {}
