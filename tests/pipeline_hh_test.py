"""The same pipeline end to end on Anthropic HH text at tiny scale (plumbing, not quality).

../shared/data/hh-rlhf holds only test splits; the trainers derive train/validation from them.
HH has no gold utilities, so `prepare` trains judge reward models and the shortcut flags come
from the text regexes of lsc_align.eval.shortcuts.
"""
import os

import gin
import numpy as np
import pytest

from lsc_align.eval import report as report_lib
from lsc_align.pipeline import experiment, pools_stage, runs
from lsc_align.pipeline import layout

import conftest  # pylint: disable=g-bad-import-order

pytestmark = pytest.mark.slow  # trains models or runs whole commands


@pytest.fixture(scope='module')
def hh_experiment(shared_data, tmp_path_factory):
  from lsc_align.data import vocab  # pylint: disable=g-import-not-at-top  (seqio / TF)
  root = tmp_path_factory.mktemp('hh_experiment')
  hh_dir = shared_data / 'hh-rlhf'
  texts = vocab.training_texts(hh_dir, lenient=True)[:3000]  # the shared files have bad lines
  vocab.train_sentencepiece(texts, str(root / 'spm'), 300)
  conftest.parse_tiny_experiment_gin()
  try:
    exp = experiment.prepare(str(root / 'exp'), data_dir=str(hh_dir),
                             vocabulary=str(root / 'spm.model'), lenient=True,
                             log=lambda _: None)
    yield exp
  finally:
    gin.clear_config()


def test_prepare_on_hh_trains_judges_and_pools(hh_experiment):
  exp = hh_experiment
  assert not exp.is_world and exp.data.endswith('hh-rlhf')
  for prop in layout.PROPERTIES:
    assert os.path.exists(os.path.join(exp.judge_model(prop), 'rm_final.msgpack'))
  arrays = layout.load_npz(exp.pool('eval'))
  assert arrays['pool_gold_helpful'].shape == arrays['pool_reward_helpful'].shape == (8, 8)
  assert arrays['pool_flag_list'].dtype == bool
  # The judge is another model than the proxy: its scores differ.
  assert not np.allclose(arrays['pool_gold_helpful'], arrays['pool_reward_helpful'])
  judge = pools_stage.load_judge(exp)
  assert isinstance(judge, pools_stage.RewardModelJudge)
  assert all(isinstance(t, str) for t in pools_stage.decode_responses(
      judge.vocabulary, arrays['pool_responses'][:2]))


def test_best_of_k_ppo_and_report_on_hh(hh_experiment, tiny_gin, tmp_path):  # pylint: disable=unused-argument
  exp = hh_experiment
  bok = runs.run_best_of_k(exp.root, experiment.load_objective('combined_lsc_sum_bok'),
                           ks=(1, 4))
  assert [r.k for r in bok] == [1, 4] and bok[1].and_win_rate is not None
  result = runs.run_learner(exp.root, experiment.load_objective('helpful_lsc'), kl_coef=0.1,
                        steps=2)
  assert result.method == 'ppo' and np.isfinite(result.kl)
  assert set(result.shortcut_rate) == {'list', 'referral'}
  path = report_lib.write_report(os.path.join(exp.root, 'runs'), str(tmp_path / 'report'))
  assert 'helpful_lsc' in open(path, encoding='utf-8').read()
