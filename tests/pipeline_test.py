"""The experiment pipeline on a tiny world: stages, best-of-k, optimum, PPO resume, report."""
import json
import os

import numpy as np
import pytest

from lsc_align.eval import results as results_lib
from lsc_align.pipeline import experiment, runs
from lsc_align.rewards import aggregate, make_objective
from lsc_align.align import best_of_k
from lsc_align.pipeline import layout, pool, reference_tables
from lsc_align.train import loop, sft_trainer

pytestmark = pytest.mark.slow  # trains models or runs whole commands


@pytest.fixture
def exp_dir(tiny_experiment, tiny_gin):  # pylint: disable=unused-argument
  return tiny_experiment


def test_prepare_writes_every_stage_and_is_idempotent(exp_dir):
  exp = layout.ExperimentDirs(exp_dir)
  for path in (exp.pool('train'), exp.pool('eval'), os.path.join(exp.sft, sft_trainer.INFO_FILE)):
    assert os.path.exists(path), path
  evaluation = layout.load_npz(exp.pool('eval'))
  assert evaluation['pool_responses'].shape[:2] == (8, 8)
  assert evaluation['pool_gold_helpful'].shape == (8, 8)
  assert np.all(np.isfinite(evaluation['pool_reward_harmless']))
  before = os.path.getmtime(exp.pool('eval'))
  experiment.prepare(exp_dir, log=lambda _: None)  # every stage is done: nothing is redone
  assert os.path.getmtime(exp.pool('eval')) == before


def test_best_of_k_picks_the_highest_utility_and_reports_its_kl(exp_dir):
  objective = experiment.load_objective('combined_lsc_sum_bok')
  results = runs.run_best_of_k(exp_dir, objective, ks=(1, 4, 8))
  assert [r.k for r in results] == [1, 4, 8]
  np.testing.assert_allclose([r.kl for r in results], [0.0, np.log(4) - 0.75, np.log(8) - 7 / 8],
                             rtol=1e-6)
  utilities = [r.extra['utility'] for r in results]
  assert utilities == sorted(utilities)  # a larger k never picks a worse sample
  evaluation = pool.load_pool(layout.ExperimentDirs(exp_dir), 'eval')
  u = aggregate.pool_utilities(objective, evaluation.pool.rewards,
                               reference_tables.references_for(None, objective,
                                                               evaluation.prompt_ids, evaluation))
  assert utilities[-1] == pytest.approx(float(u.max(axis=1).mean()), rel=1e-6)
  assert np.array_equal(best_of_k.select_best_of_k(u, 1), np.zeros(8, int))


def test_optimum_kl_grows_as_gamma_shrinks(exp_dir):
  objective = experiment.load_objective('combined_raw_sum')
  results = runs.run_optimum(exp_dir, objective, kl_coefs=(1.0, 0.1, 0.01))
  kls = [r.kl for r in results]
  assert kls[0] < kls[1] < kls[2] <= np.log(8) + 1e-6


def test_weighted_variants_and_objective_files():  # no experiment needed
  base = experiment.load_objective('combined_raw_sum')
  variants = experiment.weighted_variants(base, [0.3, 0.7])
  assert [v.name for v in variants] == ['combined_raw_sum_w0.3', 'combined_raw_sum_w0.7']
  assert variants[0].weights == (0.3, 0.7)
  assert experiment.load_objective('helpful_lsc') == make_objective(
      'helpful_lsc', ['helpful'], 'lsc', {'helpful': ('quantile', 0.85)})


def test_objective_file_errors_name_the_line(tmp_path):
  bad = tmp_path / 'bad.gin'
  bad.write_text("make_objective.name = 'x'\nmake_objective.transform = @foo()\n")
  with pytest.raises(ValueError, match='bad.gin:2'):
    experiment.load_objective(str(bad))
  bad.write_text("make_objective.name = 'x'\nmake_objective.transform = 'raw'\n")
  with pytest.raises(ValueError, match='no make_objective.properties binding'):
    experiment.load_objective(str(bad))
  bad.write_text("make_objective.name = 'x'\nmake_objective.properties = ['helpful']\n"
                 "make_objective.transform = 'raw'\nmake_objective.quantile = 0.5\n")
  with pytest.raises(ValueError, match="bad.gin:4: make_objective has no argument 'quantile'"):
    experiment.load_objective(str(bad))


def test_objective_files_are_bound_in_their_own_gin_scope(tmp_path):
  """Each file's bindings live in the scope of its name; a second file of that name replaces them
  all (none of the first is left behind), and the run's config names the file."""
  import gin  # pylint: disable=g-import-not-at-top
  from lsc_align import gin_utils  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  gin_utils.reset_parse_record()
  try:
    path = tmp_path / 'mine.gin'
    path.write_text("make_objective.name = 'mine'\nmake_objective.properties = ['helpful']\n"
                    "make_objective.transform = 'raw'\n"
                    "make_objective.weights = {'helpful': 2.0}\n")
    assert experiment.load_objective(str(path)).weights == (2.0,)
    assert gin.query_parameter('mine/make_objective.weights') == {'helpful': 2.0}
    path.write_text("make_objective.name = 'mine'\nmake_objective.properties = ['helpful']\n"
                    "make_objective.transform = 'raw'\n")
    assert experiment.load_objective(str(path)).weights == (1.0,)
    with gin.config_scope('rloo'):  # as `lsc-align ppo` loads it, in its learner's scope
      assert experiment.load_objective('helpful_lsc').name == 'helpful_lsc'
    operative = gin.operative_config_str()
    assert "helpful_lsc/make_objective.name = 'helpful_lsc'" in operative
    assert "mine/make_objective.weights = None" in operative
    assert 'objectives/helpful_lsc.gin' in gin_utils.provenance_header()
  finally:
    gin.clear_config()
    gin_utils.reset_parse_record()


def test_ppo_run_resumes_exactly_and_is_evaluated(exp_dir, tiny_ppo_run, tmp_path, monkeypatch):
  objective = experiment.load_objective('combined_lsc_sum')
  full_dir, full = tiny_ppo_run  # the uninterrupted run (conftest.TINY_PPO)
  assert full.method == 'ppo' and full.gamma == 0.05
  # KL is a sample estimate (mean of Σ_t log π − log π0 over 2 samples per prompt): finite,
  # not necessarily ≥ 0 after 4 small updates.
  assert full.and_win_rate is not None and np.isfinite(full.kl)
  assert 'objective_fraction_of_optimum' in full.extra

  stop_at = {'step': 2}
  real_should_stop = loop.PreemptionGuard.should_stop
  monkeypatch.setattr(loop.PreemptionGuard, 'should_stop',
                      lambda self, step: step == stop_at['step'] or real_should_stop(self, step))
  assert runs.run_learner(exp_dir, objective, kl_coef=0.05, run_dir=str(tmp_path / 'cut')) is None
  stop_at['step'] = -1
  resumed = runs.run_learner(exp_dir, objective, kl_coef=0.05, run_dir=str(tmp_path / 'cut'),
                         resume=True)
  a = json.loads(open(os.path.join(full_dir, runs.RESULTS_FILE), encoding='utf-8').read())
  b = json.loads((tmp_path / 'cut' / runs.RESULTS_FILE).read_text())
  for key in ('kl', 'win_rate', 'and_win_rate', 'gold_reward', 'proxy_reward', 'utility'):
    assert a[key] == b[key], key
  assert resumed.run == 'cut'
  again = runs.evaluate_run(full_dir)  # from the final checkpoint, no gin needed
  for key in ('kl', 'win_rate', 'and_win_rate'):
    assert getattr(again, key) == getattr(full, key), key
  samples = open(os.path.join(full_dir, runs.SAMPLES_FILE), encoding='utf-8').read().splitlines()
  assert len(samples) == 8 and 'response' in json.loads(samples[0])


def test_sweep_skips_finished_runs_and_report_reads_them(exp_dir):
  done = experiment.run_sweep(exp_dir, bok_objectives=['combined_lsc_sum_bok'], ks=[1, 2],
                              ppo_objectives=['combined_raw_sum'], kl_coefs=[0.3],
                              optimum_objectives=[], helpful_weights=[], log=lambda _: None)
  assert len(done) == 2
  mtimes = [os.path.getmtime(os.path.join(d, f)) for d in done for f in os.listdir(d)
            if f.startswith('eval_results')]
  experiment.run_sweep(exp_dir, bok_objectives=['combined_lsc_sum_bok'], ks=[1, 2],
                       ppo_objectives=['combined_raw_sum'], kl_coefs=[0.3],
                       optimum_objectives=[], helpful_weights=[], log=lambda _: None)
  assert mtimes == [os.path.getmtime(os.path.join(d, f)) for d in done for f in os.listdir(d)
                    if f.startswith('eval_results')]
  results = results_lib.load_run_results(os.path.join(exp_dir, 'runs'))
  assert {r.method for r in results} >= {'bok', 'ppo'}
  with pytest.raises(ValueError, match="no entry for PPO objective 'combined_raw_sum'"):
    experiment.run_sweep(exp_dir, ppo_objectives=['combined_raw_sum'], bok_objectives=[],
                         optimum_objectives=[], kl_coefs={'other': [0.1]}, log=lambda _: None)


def test_sweep_runs_each_learner_with_its_scoped_bindings(exp_dir):
  import gin  # pylint: disable=g-import-not-at-top
  with gin.unlock_config():
    gin.parse_config(['ppo/run_learner.batch_size = 16',
                      'rloo/ppo.PPOHyperparams.samples_per_prompt = 2'])
  done = experiment.run_sweep(exp_dir, ppo_objectives=['helpful_raw'], kl_coefs=[0.7],
                              learners=['ppo', 'rloo'], bok_objectives=[],
                              optimum_objectives=[], log=lambda _: None)
  assert [os.path.basename(d) for d in done] == ['ppo_helpful_raw_g0.7_s0',
                                                 'rloo_helpful_raw_g0.7_s0']
  info = [json.loads(open(os.path.join(d, 'run.json'), encoding='utf-8').read()) for d in done]
  assert [i['learner'] for i in info] == ['ppo', 'rloo']
  assert [(i['batch_size'], i['hp']['samples_per_prompt']) for i in info] == [(16, 1), (8, 2)]
  assert info[0]['hp']['policy_lr'] == info[1]['hp']['policy_lr']  # unscoped: shared
  methods = {r.run: r.method for r in results_lib.load_run_results(os.path.join(exp_dir, 'runs'))}
  assert methods['ppo_helpful_raw_g0.7_s0'] == 'ppo'
  assert methods['rloo_helpful_raw_g0.7_s0'] == 'rloo'
  with pytest.raises(ValueError, match="run_sweep.learners: \\['grpo'\\]"):
    experiment.run_sweep(exp_dir, ppo_objectives=['helpful_raw'], kl_coefs=[0.7],
                         learners=['ppo', 'grpo'], log=lambda _: None)
  with pytest.raises(ValueError, match="learners\\['rloo'\\] names objectives that are not"):
    experiment.run_sweep(exp_dir, ppo_objectives=['helpful_raw'], kl_coefs=[0.7],
                         learners={'ppo': ['helpful_raw'], 'rloo': ['harmless_raw']},
                         log=lambda _: None)


def test_ppo_refuses_a_response_length_other_than_the_pools(exp_dir, tmp_path):
  import dataclasses  # pylint: disable=g-import-not-at-top
  from lsc_align.align import ppo_step  # pylint: disable=g-import-not-at-top
  hp = dataclasses.replace(ppo_step.PPOHyperparams(), max_response_length=10)
  with pytest.raises(ValueError, match='PPOHyperparams.max_response_length = 10'):
    runs.run_learner(exp_dir, experiment.load_objective('helpful_lsc'), kl_coef=0.1, hp=hp,
                 steps=1, run_dir=str(tmp_path / 'short'))
