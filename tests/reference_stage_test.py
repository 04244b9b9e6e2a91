"""Tests for lsc_align.pipeline.reference_stage and Gaussian references in the alignment runs
(best-of-k, the optimum, PPO on every training prompt), on the tiny experiment."""
import json
import os
import shutil

import gin
import jax.numpy as jnp
import numpy as np
import pytest

import conftest  # pylint: disable=g-bad-import-order
from lsc_align.align import scoring_step
from lsc_align.pipeline import experiment
from lsc_align.pipeline import layout
from lsc_align.pipeline import pool
from lsc_align.pipeline import pools_stage
from lsc_align.pipeline import reference_stage
from lsc_align.pipeline import reference_tables
from lsc_align.pipeline import runs
from lsc_align.rewards import reference
from lsc_align.train import reference_trainer
from lsc_align.train import trainer_utils

pytestmark = pytest.mark.slow  # trains predictors and runs PPO


@pytest.fixture
def exp_dir(reference_experiment):
  return reference_experiment


def test_stage_trains_both_predictors_and_writes_calibration(exp_dir):
  exp = layout.ExperimentDirs(exp_dir)
  pool = layout.load_npz(exp.pool('reference'))
  assert pool['prompt_ids'].shape[0] == 24 and pool['reward_harmless'].shape == (24, 8)
  for prop in layout.PROPERTIES:
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


def test_a_predictor_is_refused_for_another_property_or_reward_model(exp_dir, tmp_path):
  exp = layout.ExperimentDirs(exp_dir)
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
    reference_tables.load_predictor(layout.ExperimentDirs(str(other)), 'helpful')


def test_gaussian_reference_without_a_predictor_says_how_to_train_one(tiny_experiment):
  objective = experiment.load_objective('helpful_lsc_gaussian')
  with pytest.raises(FileNotFoundError, match='lsc-align references --exp_dir'):
    runs.run_best_of_k(tiny_experiment, objective, ks=(1,), name='never')


def test_bok_and_optimum_use_the_predicted_quantile(exp_dir):
  objective = experiment.load_objective('combined_lsc_sum_gaussian')
  exp = layout.ExperimentDirs(exp_dir)
  evaluation = pool.load_pool(exp, 'eval')
  refs = reference_tables.references_for(exp, objective, evaluation.prompt_ids, evaluation)
  config, params, _ = reference_trainer.load_reference_model(exp.reference_model('helpful'))
  mean, std = reference_trainer.predict_moments(config, params, evaluation.prompt_ids)
  np.testing.assert_allclose(refs[:, 0], mean + reference.gaussian_quantile_offset(0.75) * std,
                             rtol=1e-5, atol=1e-6)
  results = runs.run_best_of_k(exp_dir, objective, ks=(1, 4))
  assert results[1].extra['utility'] >= results[0].extra['utility']
  assert len(runs.run_optimum(exp_dir, objective, kl_coefs=(1.0,))) == 1


def test_ppo_with_gaussian_references_trains_on_every_training_prompt(exp_dir):
  objective = experiment.load_objective('combined_lsc_sum_gaussian')
  exp = layout.ExperimentDirs(exp_dir)
  conftest.parse_tiny_experiment_gin()
  try:
    models = pools_stage.load_models(exp)
    prompts, train_pool, mode = pools_stage.training_prompts(exp, objective, models)
    assert train_pool is None
    pooled = layout.load_npz(exp.pool('train'))['prompt_ids']
    assert mode == 'all' and prompts.shape[0] > pooled.shape[0]
    with pytest.raises(ValueError, match="quantile references, which exist only"):
      pools_stage.training_prompts(exp, experiment.load_objective('combined_lsc_sum'), models,
                                   'all')
    # Without moments the Gaussian columns are empty; run_learner tabulates the predictor's.
    table = reference_tables.references_for(exp, objective, prompts, None, models)
    loaded = [reference_tables.load_predictor(exp, p) for p in objective.properties]
    host = reference.reference_table(objective, gaussian={
        p: reference_trainer.predict_moments(c, q, prompts[:8])
        for p, (c, q) in zip(objective.properties, loaded)})
    np.testing.assert_allclose(table[:8], host, rtol=1e-6)
    assert np.all(host != 0)
    # The scoring step's in-graph predictor (a scorer that carries one) gives the same references.
    scorer = scoring_step.Scorer(objective, tuple(models.reward_configs[p]
                                              for p in objective.properties),
                             models.policy_config, 1.0, loaded[0][0])
    in_step = scoring_step.batch_references(scorer, jnp.zeros((8, 2)), tuple(p for _, p in loaded),
                                        jnp.asarray(prompts[:8]))
    np.testing.assert_allclose(np.asarray(in_step), host, rtol=1e-5, atol=1e-5)
    # A scorer without a predictor reads the table.
    plain = scoring_step.Scorer(objective, scorer.reward_configs, models.policy_config, 1.0)
    np.testing.assert_array_equal(np.asarray(scoring_step.batch_references(
        plain, jnp.asarray(table[:8]), (), jnp.asarray(prompts[:8]))), table[:8])
    result = runs.run_learner(exp_dir, objective, kl_coef=0.05)
  finally:
    gin.clear_config()
  info = json.loads(open(os.path.join(exp.run('ppo_combined_lsc_sum_gaussian_g0.05_s0'),
                                      'run.json')).read())
  assert info['train_prompts'] == 'all' and info['num_train_prompts'] == prompts.shape[0]
  assert result.and_win_rate is not None and np.isfinite(result.kl)

