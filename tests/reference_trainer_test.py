"""Tests for lsc_align.train.reference_trainer: pool checks and exact resume (the run itself on
the tiny experiment's reference pool, conftest.reference_experiment)."""
import os

import gin
import jax
import numpy as np
import pytest

import conftest  # pylint: disable=g-bad-import-order
from lsc_align.pipeline import layout
from lsc_align.train import loop
from lsc_align.train import reference_trainer
from lsc_align.train import trainer_utils


@pytest.fixture
def exp_dir(reference_experiment):
  return reference_experiment


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


@pytest.mark.slow
def test_preempted_then_resumed_predictor_equals_uninterrupted(exp_dir, tmp_path, monkeypatch):
  exp = layout.ExperimentDirs(exp_dir)
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
