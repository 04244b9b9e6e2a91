"""Tests for lsc_align.train.reward_model_trainer on the tiny world and a slice of real HH.

Every run uses a 1-layer T5 of width 16 on the 8 fake CPU devices of conftest.py (mesh 8 x 1),
so the trainer's sharded path is the one exercised.
"""
import json
import os
import pathlib
from typing import Any

import conftest  # pylint: disable=g-bad-import-order
import gin
import jax
import numpy as np
import pytest

from lsc_align import gin_utils
from lsc_align.models import reward_model
from lsc_align.models import t5_encoder
from lsc_align.data import arrays as data_arrays
from lsc_align.train import loop
from lsc_align.train import reward_model_trainer as rmt
from lsc_align.train import trainer_utils

STEPS = 6
STOP_AT = 3
# The run file with tiny sizes: the same gin path as `lsc-align train-rm --gin_file runs/...`.
TINY_BINDINGS = (
    'T5EncoderConfig.emb_dim = 16', 'T5EncoderConfig.num_heads = 2',
    'T5EncoderConfig.head_dim = 8', 'T5EncoderConfig.mlp_dim = 32',
    'T5EncoderConfig.num_layers = 1', 'T5EncoderConfig.dropout_rate = 0.1',
    *(f'train_reward_model/TrainerSettings.{binding}' for binding in (
        f'steps = {STEPS}', 'batch_size = 16', 'warmup_steps = 2', 'learning_rate = 1e-3',
        'eval_every = 4', 'eval_batch_size = 16', 'log_every = 2', 'checkpoint_every = 2')))


def tiny_model(vocab_size: int = 384) -> reward_model.RewardModelConfig:
  return reward_model.RewardModelConfig(encoder=t5_encoder.T5EncoderConfig(
      vocab_size=vocab_size, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32, num_layers=1))


pytestmark = [pytest.mark.slow, pytest.mark.usefixtures('clean_gin')]  # trains models


@pytest.fixture(scope='module')
def arrays(tmp_path_factory) -> pathlib.Path:
  """One tokenised-array cache for the module's runs, so each data set is tokenised once."""
  return tmp_path_factory.mktemp('arrays')


def run_from_run_file(run_dir: pathlib.Path, data_dir: pathlib.Path,
                      vocabulary: pathlib.Path | None = None, **kwargs: Any) -> loop.TrainResult:
  """train_reward_model as configured by runs/world_rm.gin with TINY_BINDINGS."""
  vocabulary = vocabulary or data_dir / 'vocab.txt'
  gin_utils.parse(['runs/world_rm.gin'], [
      f"train_reward_model.data_dir = '{data_dir}'",
      f"train_reward_model.vocabulary = '{vocabulary}'",
      *TINY_BINDINGS])
  try:
    return rmt.train_reward_model(str(run_dir), **kwargs)
  finally:
    gin.clear_config()


@pytest.fixture(scope='module')
def uninterrupted(tiny_world, arrays, tmp_path_factory) -> pathlib.Path:
  run_dir = tmp_path_factory.mktemp('rm_full')
  result = run_from_run_file(run_dir, tiny_world, cache_dir=str(arrays))
  assert result.exit_code == 0 and result.step == STEPS
  return run_dir


def test_run_directory_files_and_eval(uninterrupted):
  for name in ('eval.json', 'rm_final.msgpack', 'reward_model.json', 'config.gin',
               'metrics.jsonl'):
    assert (uninterrupted / name).is_file(), name
  summary = json.loads((uninterrupted / 'eval.json').read_text())
  assert summary['step'] == STEPS and summary['split'] == 'test'
  assert summary['pairs'] == 40 and summary['train_pairs'] == 120
  assert 0.0 <= summary['accuracy'] <= 1.0
  low, high = summary['accuracy_ci95']
  assert 0.0 <= low <= summary['accuracy'] <= high <= 1.0
  assert 0.0 <= summary['gold_label_agreement'] <= 1.0  # a world: gold comparison present
  assert summary['resumed_from_step'] == 0
  config = (uninterrupted / 'config.gin').read_text()
  assert f'train_reward_model/TrainerSettings.steps = {STEPS}' in config and 'emb_dim = 16' in config
  rows = [json.loads(line) for line in (uninterrupted / 'metrics.jsonl').read_text().splitlines()]
  assert sorted(r['step'] for r in rows if 'loss' in r) == list(range(1, STEPS + 1))
  assert sorted(r['step'] for r in rows if 'eval/accuracy' in r) == [4, STEPS]


def test_load_reward_model_round_trips(uninterrupted, tiny_world, arrays):
  config, params = rmt.load_reward_model(uninterrupted)
  assert config == reward_model.RewardModelConfig(encoder=t5_encoder.T5EncoderConfig(
      vocab_size=384, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32, num_layers=1,
      dropout_rate=0.1))
  info = rmt.reward_model_info(uninterrupted)
  assert info['property'] == 'helpful' and info['step'] == STEPS
  # The loaded model reproduces the validation accuracy written at the end of training.
  lengths = {'prompt_length': info['prompt_length'], 'response_length': info['response_length']}
  raw = data_arrays.pair_arrays(tiny_world, info['vocabulary'], 'helpful', 'test',
                                cache_dir=arrays, **lengths)
  pairs = rmt.pack_pairs(raw, info['max_length'], info['response_length'])
  rewards = jax.jit(rmt.make_pair_reward_fn(reward_model.RewardModel(config)))(params, pairs)
  metrics = rmt.pair_metrics(np.asarray(rewards['chosen']), np.asarray(rewards['rejected']))
  summary = json.loads((uninterrupted / 'eval.json').read_text())
  assert metrics['accuracy'] == summary['accuracy']
  np.testing.assert_allclose(metrics['loss'], summary['loss'], rtol=1e-5)


def test_preempted_then_resumed_equals_uninterrupted(uninterrupted, tiny_world, arrays, tmp_path,
                                                    monkeypatch):
  # Same `steps` (so the same LR schedule) in both runs; only the stop differs: a real SIGTERM
  # after update STOP_AT, saved by loop.PreemptionGuard. Dropout is on, so the dropout keys
  # and the data order must both resume exactly. (tests/sft_trainer_test.py covers a crash.)
  conftest.preempt_at(monkeypatch, STOP_AT)
  first = run_from_run_file(tmp_path, tiny_world, cache_dir=str(arrays))
  assert first.exit_code == loop.EXIT_CODE_PREEMPTED and first.step == STOP_AT
  assert not (tmp_path / 'rm_final.msgpack').exists()
  monkeypatch.undo()
  resumed = run_from_run_file(tmp_path, tiny_world, cache_dir=str(arrays), resume=True)
  assert resumed.exit_code == 0 and resumed.start_step == STOP_AT
  expected = trainer_utils.load_params(uninterrupted / 'rm_final.msgpack')
  got = trainer_utils.load_params(tmp_path / 'rm_final.msgpack')
  jax.tree.map(np.testing.assert_array_equal, got, expected)
  full = json.loads((uninterrupted / 'eval.json').read_text())
  again = json.loads((tmp_path / 'eval.json').read_text())
  assert again['accuracy'] == full['accuracy'] and again['resumed_from_step'] == STOP_AT
  rows = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert sorted(r['step'] for r in rows if 'loss' in r) == list(range(1, STEPS + 1))


def test_bad_settings_name_the_binding(tiny_world, tmp_path):
  common = {'data_dir': str(tiny_world), 'vocabulary': str(tiny_world / 'vocab.txt')}
  with pytest.raises(ValueError, match=r"property_name 'helpfull' must be one of"):
    rmt.train_reward_model(str(tmp_path / 'a'), property_name='helpfull', model=tiny_model(),
                           **common)
  with pytest.raises(ValueError, match=r'T5EncoderConfig.vocab_size = 100 is smaller than'):
    rmt.train_reward_model(str(tmp_path / 'b'), model=tiny_model(vocab_size=100), **common)
  with pytest.raises(ValueError, match=r'train_reward_model/TrainerSettings.eval_batch_size = 20 '
                                       r"must be a positive multiple of the mesh's data axis "
                                       r'\(8 devices\)'):  # not only at the first validation
    rmt.train_reward_model(str(tmp_path / 'e'), model=tiny_model(),
                           settings=rmt.configured_settings(eval_batch_size=20), **common)
  with pytest.raises(ValueError, match='no such file'):
    rmt.train_reward_model(str(tmp_path / 'c'), data_dir=str(tiny_world),
                           vocabulary=str(tiny_world / 'missing.txt'), model=tiny_model())
  # Through gin, as the CLI: the run file without its required bindings, a misspelt parameter.
  gin_utils.parse(['runs/world_rm.gin'])
  with pytest.raises(RuntimeError, match=r"train_reward_model.*\['data_dir', 'vocabulary'\]"):
    rmt.train_reward_model(str(tmp_path / 'd'))
  with pytest.raises(gin_utils.GinConfigError, match='train_reward_model.stepz'):
    gin_utils.parse(['runs/world_rm.gin'], ['train_reward_model.stepz = 3'])
  with pytest.raises(gin_utils.GinConfigError, match='train_reward_model.steps'):  # a setting
    gin_utils.parse(['runs/world_rm.gin'], ['train_reward_model.steps = 3'])
  assert not any((tmp_path / name).exists() for name in 'abcde')  # failed before writing


def test_hh_slice_with_a_tiny_sentencepiece_vocabulary(shared_data, tmp_path):
  from lsc_align.data import vocab  # pylint: disable=g-import-not-at-top  (imports seqio/TF)
  hh_dir = shared_data / 'hh-rlhf'
  texts = vocab.training_texts(hh_dir, split='train', lenient=True)[:600]  # plumbing, not quality
  vocab.train_sentencepiece(texts, str(tmp_path / 'spm'), 300)
  # The world run's sizes (vocab_size 384 >= 300), so its compiled programs are reused.
  result = run_from_run_file(tmp_path / 'run', hh_dir, tmp_path / 'spm.model',
                             property_name='harmless', max_train_pairs=64, lenient=True)
  assert result.exit_code == 0
  summary = json.loads((tmp_path / 'run' / 'eval.json').read_text())
  assert summary['split'] == 'validation' and summary['train_pairs'] == 64
  assert summary['pairs'] > 400 and 0.0 <= summary['accuracy'] <= 1.0
  assert 'gold_label_agreement' not in summary  # real data: no gold
  assert rmt.reward_model_info(tmp_path / 'run')['vocabulary'] == str(tmp_path / 'spm.model')


PRETRAINED = pathlib.Path(__file__).resolve().parent / 'data' / 'pretrained'


def test_hh_slice_from_a_hugging_face_t5_checkpoint(shared_data, tmp_path):
  from lsc_align.data import vocab  # pylint: disable=g-import-not-at-top,unused-import  (gin)
  from lsc_align.models import hf_t5  # pylint: disable=g-import-not-at-top
  from lsc_align.world import dataset  # pylint: disable=g-import-not-at-top,unused-import  (gin)
  checkpoint = PRETRAINED / 't5_v1_1_encoder'
  gin_utils.parse(['runs/world_rm.gin'], [
      f"train_reward_model.data_dir = '{shared_data / 'hh-rlhf'}'",
      f"train_reward_model.vocabulary = '{checkpoint / 'spiece.model'}'",
      *TINY_BINDINGS])
  try:
    result = rmt.train_reward_model(str(tmp_path / 'run'), init_hf_t5_checkpoint=str(checkpoint),
                                    property_name='harmless', max_train_pairs=64, lenient=True)
  finally:
    gin.clear_config()
  assert result.exit_code == 0 and result.step == STEPS
  config, params = rmt.load_reward_model(tmp_path / 'run')
  # The architecture is the checkpoint's (2 layers of width 32), not the tiny bindings'.
  assert (config.encoder.num_layers, config.encoder.emb_dim) == (2, 32)
  assert config.encoder.dropout_rate == 0.1  # numerics stay gin's
  _, start, _ = hf_t5.load_hf_t5_encoder(str(checkpoint))
  # Six AdamW steps of at most lr 1e-3 each: every weight within 6e-3 of the checkpoint's.
  moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()),
                       {k: params[k] for k in start}, start)
  assert 0 < max(jax.tree.leaves(moved)) < 6e-3 + 1e-6
  info = rmt.reward_model_info(tmp_path / 'run')
  assert info['init_hf_t5_checkpoint'] == str(checkpoint)


def test_both_encoder_checkpoints_are_refused(tmp_path):
  with pytest.raises(ValueError, match='init_t5x_checkpoint and init_hf_t5_checkpoint are both'):
    rmt.train_reward_model(str(tmp_path / 'run'), data_dir=str(tmp_path),
                           vocabulary=str(tmp_path / 'v.txt'), init_t5x_checkpoint='a',
                           init_hf_t5_checkpoint='b')
  assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('case', ('qwen2_seqcls', 'llama3_gqa_rope_scaling'))
def test_decoder_reward_model_from_a_hugging_face_checkpoint(case, shared_data, tmp_path):
  from lsc_align.models import pretrained  # pylint: disable=g-import-not-at-top
  from lsc_align.train import decoder_reward_trainer  # pylint: disable=g-import-not-at-top
  from lsc_align.world import dataset  # pylint: disable=g-import-not-at-top,unused-import  (gin)
  checkpoint = PRETRAINED / case
  gin_utils.parse(['runs/world_rm.gin'], [
      f"train_reward_model.data_dir = '{shared_data / 'hh-rlhf'}'",
      f"train_reward_model.vocabulary = '{checkpoint}'",
      *TINY_BINDINGS, 'train_reward_model/TrainerSettings.learning_rate = 3e-3'])
  try:
    result = rmt.train_reward_model(str(tmp_path / 'run'), init_hf_checkpoint=str(checkpoint),
                                    property_name='harmless', max_train_pairs=32, max_length=48,
                                    lenient=True)
  finally:
    gin.clear_config()
  assert result.exit_code == 0 and result.step == STEPS
  rows = [json.loads(line) for line in (tmp_path / 'run' / 'metrics.jsonl').read_text().split('\n')
          if line.strip()]
  losses = [r['loss'] for r in rows if 'loss' in r]
  assert np.mean(losses[-2:]) < np.mean(losses[:2])  # BT loss falls over the six steps
  info = rmt.reward_model_info(tmp_path / 'run')
  assert info['kind'] == 'decoder' and info['init_hf_checkpoint'] == str(checkpoint)
  config, params = rmt.load_reward_model(tmp_path / 'run')
  assert config.emb_dim == 32 and params['score']['kernel'].shape == (32,)
  rm = decoder_reward_trainer.load_run(str(tmp_path / 'run'), info, params)
  ids, mask, _ = pretrained.tokenize_for_reward(rm, ['Human: hi\n\nAssistant: hello'],
                                                max_length=48)
  assert np.isfinite(np.asarray(pretrained.reward_scores(rm, ids, mask))).all()
  # The trained model exports as a sequence classifier that loads back to the same scores.
  pretrained.export_reward_model(rm, str(tmp_path / 'export'))
  back = pretrained.load_reward_model(str(tmp_path / 'export'))
  np.testing.assert_allclose(pretrained.reward_scores(back, ids, mask),
                             pretrained.reward_scores(rm, ids, mask), atol=2e-2 if
                             case == 'qwen2_seqcls' else 1e-6)  # bfloat16 source: cast on export


def test_decoder_run_needs_the_checkpoint_as_vocabulary(tmp_path):
  with pytest.raises(ValueError, match='vocabulary .* must be the init_hf_checkpoint directory'):
    rmt.train_reward_model(str(tmp_path / 'run'), data_dir=str(tmp_path),
                           vocabulary=str(tmp_path / 'v.txt'),
                           init_hf_checkpoint=str(PRETRAINED / 'qwen2_seqcls'))
  assert not (tmp_path / 'run').exists()
