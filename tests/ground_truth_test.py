"""The enumerable problem is exact, and PPO (the real iteration) reaches its optimum."""
import numpy as np
import pytest

from lsc_align.align import ground_truth, ppo_step

SIZES = ground_truth.GroundTruthSizes(vocab_size=8, max_response_length=2, num_prompts=8)
# The learner settings the ground truth is reached with: critic pre-fitted on π0, no value clip,
# λ = 1 (responses of 2 tokens), learning rates decayed to 0 over the run.
HP = ppo_step.PPOHyperparams(policy_lr=3e-3, value_lr=3e-3, warmup_steps=1, epochs=2,
                             num_minibatches=2, max_response_length=2, gae_lambda=1.0,
                             value_clip=None, value_init='prefit', lr_decay_steps=320)


@pytest.fixture(scope='module')
def problem():
  return ground_truth.make_problem(SIZES)


def test_all_responses_enumerates_the_sampler_support(problem):
  c = SIZES.vocab_size - 2
  assert problem.responses.shape == (1 + c + c * c, 2)
  assert len({tuple(r) for r in problem.responses}) == problem.responses.shape[0]
  # Every response the sampler can emit is listed: π0's probabilities sum to 1 per prompt.
  np.testing.assert_allclose(np.exp(problem.logp0).sum(1), 1.0, atol=1e-5)
  assert np.std(problem.rewards[..., 0]) == pytest.approx(SIZES.reward_scale, rel=1e-3)


def test_exact_optimum_is_the_best_policy(problem):
  u = problem.utilities(problem.objective('lsc_sum'))
  gamma = 0.3
  best = ground_truth.exact_optimum(problem.logp0, u, gamma)
  at_best = ground_truth.exact_objective(best['log_pi'], problem.logp0, u, gamma)
  np.testing.assert_allclose(at_best['objective'], best['objective'], rtol=1e-9)
  np.testing.assert_allclose(at_best['kl'], best['kl'], rtol=1e-9)
  at_pi0 = ground_truth.exact_objective(problem.logp0, problem.logp0, u, gamma)
  np.testing.assert_allclose(at_pi0['kl'], 0.0, atol=1e-12)
  rng = np.random.default_rng(0)
  for _ in range(5):  # any other policy does worse
    other = best['log_pi'] + 0.3 * rng.normal(size=u.shape)
    other -= np.logaddexp.reduce(other, axis=1, keepdims=True)
    assert np.all(ground_truth.exact_objective(other, problem.logp0, u, gamma)['objective']
                  < best['objective'])


@pytest.mark.slow
@pytest.mark.parametrize('objective,gamma', [('lsc_sum', 0.1), ('lsc_sum', 0.3),
                                             ('raw_sum', 0.1), ('raw_sum', 0.3)])
def test_ppo_reaches_the_exact_optimum(problem, objective, gamma):
  out = ground_truth.train(problem, problem.objective(objective), gamma, HP, iterations=80,
                           batch_size=32)
  final = out['final']
  assert final['share'] >= 0.95, final
  assert abs(final['kl_ratio'] - 1.0) <= 0.10, final


@pytest.mark.slow
def test_rloo_reaches_the_exact_optimum(problem):
  hp = ppo_step.PPOHyperparams(policy_lr=1e-3, warmup_steps=1, epochs=2, num_minibatches=2,
                               max_response_length=2, samples_per_prompt=4, lr_decay_steps=320)
  out = ground_truth.train(problem, problem.objective('raw_sum'), 0.3, hp, learner='rloo',
                           iterations=80, batch_size=8)
  assert out['final']['share'] >= 0.95, out['final']
  assert abs(out['final']['kl_ratio'] - 1.0) <= 0.10, out['final']


def test_an_untrained_policy_is_far_from_the_optimum(problem):
  # The check above can fail: π0 itself has share 0 and KL 0.
  import jax  # pylint: disable=g-import-not-at-top
  out = ground_truth.evaluate_policy(problem, jax.tree.map(np.asarray, problem.pi0_params),
                                     problem.objective('raw_sum'), 0.3)
  assert out['share'] == pytest.approx(0.0, abs=1e-6) and out['kl'] == pytest.approx(0, abs=1e-6)
