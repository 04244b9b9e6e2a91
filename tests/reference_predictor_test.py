"""The reference-reward predictor: calibration maths, the model's std guard, the trainer, the
experiment stage and Gaussian references in best-of-k, the optimum and PPO."""
import json
import os
import shutil

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conftest  # pylint: disable=g-bad-import-order
from lsc_align.align import pools
from lsc_align.align import ppo_step
from lsc_align.align import references
from lsc_align.models import reward_model
from lsc_align.models import t5_encoder
from lsc_align.pipeline import experiment
from lsc_align.pipeline import reference_stage
from lsc_align.pipeline import runs
from lsc_align.rewards import reference
from lsc_align.train import loop
from lsc_align.train import reference_trainer
from lsc_align.train import trainer_utils


def _gaussian_pool(n=300, m=64, seed=0):
  rng = np.random.default_rng(seed)
  mean, std = rng.normal(size=n), np.exp(0.3 * rng.normal(size=n))
  return mean, std, mean[:, None] + std[:, None] * rng.normal(size=(n, m))


def test_calibration_of_the_true_moments_is_near_ideal():
  mean, std, samples = _gaussian_pool()
  result = reference.calibration(mean, std, samples)
  assert [row['q'] for row in result['quantiles']] == [0.5, 0.75, 0.85, 0.95]
  for row in result['quantiles']:
    assert abs(row['coverage'] - row['q']) < 3 * row['coverage_se'] + 0.005
    # The true quantile is off the empirical one only by the latter's sampling error.
    assert row['quantile_error_rmse'] < 1.5 * row['empirical_quantile_se']


def test_calibration_sees_a_shifted_predictor():
  mean, std, samples = _gaussian_pool()
  result = reference.calibration(mean + 0.5 * std, std, samples)
  median = result['quantiles'][0]
  assert median['coverage'] == pytest.approx(0.69, abs=0.03)  # Φ(0.5)
  assert median['quantile_error_mean'] == pytest.approx(0.5 * std.mean(), abs=0.05)
  assert median['quantile_error_mae_in_std'] == pytest.approx(0.5, abs=0.06)


def test_moments_must_be_finite_with_a_positive_std():
  with pytest.raises(ValueError, match='prompt 1 .* std > 0'):
    reference.check_moments([0.0, 1.0], [1.0, 0.0], 'x')
  with pytest.raises(ValueError, match='prompt 0'):
    reference.check_moments([np.nan], [1.0], 'x')
  with pytest.raises(ValueError, match='quantile'):
    reference.calibration([0.0], [1.0], [[0.0, 1.0]], [1.0])


def _tiny_config(min_std=1e-3):
  return reward_model.RewardModelConfig(encoder=t5_encoder.T5EncoderConfig(
      vocab_size=32, emb_dim=8, num_heads=2, head_dim=4, mlp_dim=16, num_layers=1),
                                        min_std=min_std)


def test_the_model_keeps_the_std_positive_for_any_parameters():
  with pytest.raises(ValueError, match='min_std > 0'):
    reward_model.GaussianReferenceModel(_tiny_config(0.0)).init(jax.random.key(0),
                                                                jnp.ones((1, 4), jnp.int32))
  model = reward_model.GaussianReferenceModel(_tiny_config())
  tokens = jnp.ones((2, 4), jnp.int32)
  params = model.init(jax.random.key(0), tokens)['params']
  params['std_head']['bias'] = jnp.full((1,), -1e4)  # softplus underflows to 0
  _, std = model.apply({'params': params}, tokens)
  assert np.all(np.asarray(std) > 0) and np.allclose(std, 1e-3)


def test_pool_file_errors_name_file_array_and_row(tmp_path):
  path = str(tmp_path / 'pool.npz')
  np.savez(path, prompt_ids=np.ones((4, 3), np.int32))
  with pytest.raises(ValueError, match="pool.npz: no array 'reward_helpful'"):
    reference_trainer.pool_targets(path, 'helpful', 2)
  rewards = np.zeros((4, 8), np.float32)
  rewards[2, 5] = np.nan
  np.savez(path, prompt_ids=np.ones((4, 3), np.int32), reward_helpful=rewards)
  with pytest.raises(ValueError, match=r'reward_helpful\[2, 5\] is nan'):
    reference_trainer.pool_targets(path, 'helpful', 8)
  with pytest.raises(ValueError, match='samples_per_prompt = 9'):
    reference_trainer.pool_targets(path, 'helpful', 9)
  with pytest.raises(FileNotFoundError, match='lsc-align references'):
    reference_trainer.pool_targets(str(tmp_path / 'none.npz'), 'helpful', 8)


# ------------------------------------------------------------- on the tiny experiment


@pytest.fixture(scope='module')
def exp_dir(tiny_experiment, tmp_path_factory):
  """A copy of the tiny experiment with trained predictors (the copy keeps the shared one as
  the other tests expect it)."""
  root = str(tmp_path_factory.mktemp('ref_exp') / 'exp')
  shutil.copytree(tiny_experiment, root, ignore=shutil.ignore_patterns('runs', 'checkpoints'))
  conftest.parse_tiny_experiment_gin()
  try:
    reference_stage.prepare_references(root, log=lambda _: None)
  finally:
    gin.clear_config()
  return root


@pytest.mark.slow
def test_stage_trains_both_predictors_and_writes_calibration(exp_dir):
  exp = pools.ExperimentDirs(exp_dir)
  pool = pools.load_npz(exp.pool('reference'))
  assert pool['prompt_ids'].shape[0] == 24 and pool['reward_harmless'].shape == (24, 8)
  for prop in pools.PROPERTIES:
    info = reference_trainer.reference_model_info(exp.reference_model(prop))
    assert info['property'] == prop and info['train_prompts'] == 16
    calibration = json.loads(open(os.path.join(exp.reference_model(prop),
                                               'calibration.json')).read())
    assert calibration['gaussian']['prompts'] == 8  # the evaluation prompts
    assert {'gaussian', 'empirical', 'constant'} <= set(calibration)
  before = os.path.getmtime(os.path.join(exp.reference_model('helpful'), 'ref_final.msgpack'))
  reference_stage.prepare_references(exp_dir, log=lambda _: None)  # done: nothing is redone
  assert os.path.getmtime(os.path.join(exp.reference_model('helpful'),
                                       'ref_final.msgpack')) == before
  summary = json.loads(open(os.path.join(exp.reference_model('helpful'), 'eval.json')).read())
  assert 'constant_baseline' in summary and 'calibration' in summary


@pytest.mark.slow
def test_a_predictor_is_refused_for_another_property_or_reward_model(exp_dir, tmp_path):
  exp = pools.ExperimentDirs(exp_dir)
  with pytest.raises(ValueError, match="trained for 'helpful', not for 'harmless'"):
    reference_trainer.load_reference_model(exp.reference_model('helpful'), 'harmless')
  with pytest.raises(ValueError, match='another reward model'):
    reference_trainer.load_reference_model(exp.reference_model('helpful'), 'helpful',
                                           exp.reward_model('harmless'))
  # The same reward model retrained in place counts as another one (compared by its bytes).
  other = tmp_path / 'exp'
  shutil.copytree(exp_dir, other, ignore=shutil.ignore_patterns('pools'))
  rm_file = other / 'rm_helpful' / 'rm_final.msgpack'
  params = trainer_utils.load_params(rm_file)
  params['reward_head']['bias'] = params['reward_head']['bias'] + 1.0
  trainer_utils.save_params(rm_file, params)
  with pytest.raises(ValueError, match='another reward model'):
    reference_stage.load_predictor(pools.ExperimentDirs(str(other)), 'helpful')


@pytest.mark.slow
def test_gaussian_reference_without_a_predictor_says_how_to_train_one(tiny_experiment):
  objective = experiment.load_objective('helpful_lsc_gaussian')
  with pytest.raises(FileNotFoundError, match='lsc-align references --exp_dir'):
    runs.run_best_of_k(tiny_experiment, objective, ks=(1,), name='never')


@pytest.mark.slow
def test_bok_and_optimum_use_the_predicted_quantile(exp_dir):
  objective = experiment.load_objective('combined_lsc_sum_gaussian')
  exp = pools.ExperimentDirs(exp_dir)
  arrays = pools.load_npz(exp.pool('eval'))
  refs = runs.eval_references(objective, arrays, exp)
  config, params, _ = reference_trainer.load_reference_model(exp.reference_model('helpful'))
  mean, std = reference_trainer.predict_moments(config, params, arrays['prompt_ids'])
  np.testing.assert_allclose(refs[:, 0], mean + reference.gaussian_quantile_offset(0.75) * std,
                             rtol=1e-5, atol=1e-6)
  results = runs.run_best_of_k(exp_dir, objective, ks=(1, 4))
  assert results[1].extra['utility'] >= results[0].extra['utility']
  assert len(runs.run_optimum(exp_dir, objective, kl_coefs=(1.0,))) == 1


@pytest.mark.slow
def test_ppo_with_gaussian_references_trains_on_every_training_prompt(exp_dir):
  objective = experiment.load_objective('combined_lsc_sum_gaussian')
  exp = pools.ExperimentDirs(exp_dir)
  conftest.parse_tiny_experiment_gin()
  try:
    models = pools_stage_models(exp)
    prompts, table, mode = runs.training_prompts(exp, objective, models)
    pooled = pools.load_npz(exp.pool('train'))['prompt_ids']
    assert mode == 'all' and prompts.shape[0] > pooled.shape[0]
    with pytest.raises(ValueError, match="quantile references, which exist only"):
      runs.training_prompts(exp, experiment.load_objective('combined_lsc_sum'), models, 'all')
    # The scoring step's in-graph predictor gives the host-side table's references.
    config, params = runs.gaussian_predictors(exp, objective)
    scorer = ppo_step.Scorer(objective, tuple(models.reward_configs[p]
                                              for p in objective.properties),
                             models.policy_config, 1.0, config)
    in_step = ppo_step.batch_references(scorer, jnp.asarray(table[:8]), params,
                                        jnp.asarray(prompts[:8]))
    host = references.reference_table(
        objective, gaussian=reference_stage.gaussian_moments(exp, objective, prompts[:8]))
    np.testing.assert_allclose(np.asarray(in_step), host, rtol=1e-5, atol=1e-5)
    result = runs.run_ppo(exp_dir, objective, kl_coef=0.05)
  finally:
    gin.clear_config()
  info = json.loads(open(os.path.join(exp.run('ppo_combined_lsc_sum_gaussian_g0.05_s0'),
                                      'run.json')).read())
  assert info['train_prompts'] == 'all' and info['num_train_prompts'] == prompts.shape[0]
  assert result.and_win_rate is not None and np.isfinite(result.kl)


def pools_stage_models(exp):
  from lsc_align.pipeline import pools_stage  # pylint: disable=g-import-not-at-top
  return pools_stage.load_models(exp)


@pytest.mark.slow
def test_preempted_then_resumed_predictor_equals_uninterrupted(exp_dir, tmp_path, monkeypatch):
  exp = pools.ExperimentDirs(exp_dir)
  kwargs = dict(pool_file=exp.pool('reference'), reward_model_dir=exp.reward_model('harmless'),
                property_name='harmless')
  conftest.parse_tiny_experiment_gin()
  try:
    conftest.preempt_at(monkeypatch, 3)
    first = reference_trainer.train_reference(str(tmp_path / 'ref'), **kwargs)
    assert first.exit_code == loop.EXIT_CODE_PREEMPTED
    monkeypatch.undo()
    resumed = reference_trainer.train_reference(str(tmp_path / 'ref'), resume=True, **kwargs)
  finally:
    gin.clear_config()
  assert resumed.exit_code == 0 and resumed.start_step == 3
  expected = trainer_utils.load_params(os.path.join(exp.reference_model('harmless'),
                                                    'ref_final.msgpack'))
  got = trainer_utils.load_params(tmp_path / 'ref' / 'ref_final.msgpack')
  jax.tree.map(np.testing.assert_array_equal, got, expected)
