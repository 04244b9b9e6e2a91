"""Tests of the reward-model diagnostics against the world's gold terms, and of gold-label training."""
import argparse
import json
import pathlib

import gin
import numpy as np
import pytest

from lsc_align import gin_utils
from lsc_align.world import dataset as world
from lsc_align.world import gold as world_gold
from lsc_align.eval import rm_diagnostics
from lsc_align.train import reward_model_trainer as rmt

NAMES = ('content', 'off_topic', 'repeat')
TINY_BINDINGS = (
    'T5EncoderConfig.emb_dim = 16', 'T5EncoderConfig.num_heads = 2',
    'T5EncoderConfig.head_dim = 8', 'T5EncoderConfig.mlp_dim = 32',
    'T5EncoderConfig.num_layers = 1',
    *(f'train_reward_model/TrainerSettings.{binding}' for binding in (
        'steps = 6', 'batch_size = 16', 'warmup_steps = 2', 'eval_every = 0',
        'eval_batch_size = 16', 'checkpoint_every = 6')))

pytestmark = pytest.mark.usefixtures('clean_gin')


def _terms(n: int = 400, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  diffs = np.stack([rng.normal(0, 1.5, n),
                    -0.3 * rng.integers(-2, 3, n),
                    -0.4 * rng.integers(-1, 2, n)], axis=1)
  return diffs


def test_a_gold_proportional_reward_reads_every_term_right():
  diffs = _terms()
  out = rm_diagnostics.diagnose(2.5 * diffs.sum(1), diffs, NAMES)
  assert out['model_gold_agreement'] == 1.0 and out['agreement_by_gold_quartile'] == [1.0] * 4
  assert out['misread_terms'] == [] and out['term_fit_r2'] == pytest.approx(1.0)
  for name in NAMES:
    assert out['terms'][name]['credited_weight'] == pytest.approx(1.0)
  # accuracy is against the labels (y+ = the chosen side): a gold-proportional model reaches
  # exactly the Bayes accuracy
  assert out['gold_label_agreement'] == pytest.approx(float((diffs.sum(1) > 0).mean()))
  assert out['accuracy'] == out['gold_label_agreement'] < 1.0


def test_a_reward_that_credits_off_topic_words_is_flagged():
  diffs = _terms()
  margins = diffs.sum(1) - 2.0 * diffs[:, 1]  # rewards what the gold charges for
  out = rm_diagnostics.diagnose(margins, diffs, NAMES)
  assert out['misread_terms'] == ['off_topic']
  assert out['terms']['off_topic']['credited_weight'] < 0
  assert out['terms']['content']['credited_weight'] > 0.5
  off = out['terms']['off_topic']
  assert off['disagreement_where_differs'] > off['disagreement_elsewhere'] == 0.0
  assert out['model_gold_agreement'] < 1.0


def test_bad_margins_are_value_errors():
  diffs = _terms(10)
  with pytest.raises(ValueError, match='do not match'):
    rm_diagnostics.diagnose(np.zeros(9), diffs, NAMES)
  margins = np.zeros(10)
  margins[3] = np.nan
  with pytest.raises(ValueError, match='1 reward margins are not finite'):
    rm_diagnostics.diagnose(margins, diffs, NAMES)


def test_term_differences_sum_to_the_gold_file(tiny_world, tmp_path):
  names, diffs = rm_diagnostics.term_differences(tiny_world, 'harmless', 'test')
  assert names == world_gold.HARMLESSNESS_TERMS
  gold = sorted((r for r in world.read_jsonl_gz(tiny_world / 'gold.jsonl.gz')
                 if r['property'] == 'harmless' and r['split'] == 'test'),
                key=lambda r: r['index'])
  np.testing.assert_allclose(diffs.sum(1), [r['s_chosen'] - r['s_rejected'] for r in gold],
                             atol=1e-9)
  with pytest.raises(ValueError, match='no gold.jsonl.gz'):
    rm_diagnostics.term_differences(tmp_path, 'helpful', 'test')
  with pytest.raises(ValueError, match="property 'honest'"):
    rm_diagnostics.term_differences(tiny_world, 'honest', 'test')


@pytest.fixture(scope='module')
def gold_sign_run(tiny_world, tmp_path_factory) -> pathlib.Path:
  run_dir = tmp_path_factory.mktemp('rm_gold_sign')
  gin_utils.parse(['runs/world_rm.gin'], [
      f"train_reward_model.data_dir = '{tiny_world}'",
      f"train_reward_model.vocabulary = '{tiny_world / 'vocab.txt'}'",
      "train_reward_model.world_labels = 'gold_sign'", *TINY_BINDINGS])
  try:
    result = rmt.train_reward_model(str(run_dir))
  finally:
    gin.clear_config()
  assert result.exit_code == 0
  return run_dir


@pytest.mark.slow  # trains a reward model
def test_gold_label_run_is_recorded_and_diagnosed(gold_sign_run, tiny_world, capsys):
  summary = json.loads((gold_sign_run / 'eval.json').read_text())
  assert summary['world_labels'] == 'gold_sign'
  assert rmt.reward_model_info(gold_sign_run)['world_labels'] == 'gold_sign'
  code = rm_diagnostics.main(argparse.Namespace(run_dir=str(gold_sign_run), data=None,
                                                split='test'))
  assert code == 0
  printed = json.loads(capsys.readouterr().out)
  written = json.loads((gold_sign_run / rm_diagnostics.OUTPUT_FILE).read_text())
  assert printed == written
  # the same model on the same pairs as the trainer's own validation
  assert written['pairs'] == summary['pairs']
  assert written['accuracy'] == pytest.approx(summary['accuracy'])
  assert written['gold_label_agreement'] == pytest.approx(summary['gold_label_agreement'])
  assert written['model_gold_agreement'] == pytest.approx(summary['model_gold_agreement'])
  assert set(written['terms']) == set(world_gold.HELPFULNESS_TERMS)
  assert str(tiny_world) == written['data_dir']


def test_unknown_world_labels_name_the_binding(tiny_world, tmp_path):
  gin_utils.parse(['runs/world_rm.gin'], [
      f"train_reward_model.data_dir = '{tiny_world}'",
      f"train_reward_model.vocabulary = '{tiny_world / 'vocab.txt'}'",
      "train_reward_model.world_labels = 'clean'", *TINY_BINDINGS])
  try:
    with pytest.raises(ValueError, match="train_reward_model.world_labels 'clean'"):
      rmt.train_reward_model(str(tmp_path / 'rm'))
  finally:
    gin.clear_config()


def test_importing_the_diagnostics_does_not_import_tensorflow():
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  code = ('import sys\nfrom lsc_align.eval import rm_diagnostics\n'
          'assert "tensorflow" not in sys.modules, "tensorflow imported"\n')
  env = dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).resolve().parent.parent))
  subprocess.run([sys.executable, '-c', code], check=True, env=env, timeout=60)
