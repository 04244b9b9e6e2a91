"""Tests for lsc_align.train.sft_trainer on the tiny world.

Runs go through configs/runs/world_sft.gin with a 1-layer policy of width 16, on the 8 fake CPU
devices of conftest.py (mesh 8 x 1), so the trainer's sharded path is the one exercised.
"""
import json
import math
import pathlib
from typing import Any

import gin
import jax
import numpy as np
import pytest

from lsc_align import gin_utils
from lsc_align.models import policy
from lsc_align.data import arrays as data_arrays
from lsc_align.train import loop
from lsc_align.train import sft_trainer
from lsc_align.train import trainer_utils

STEPS = 6
CRASH_AT = 3
TINY_POLICY = dict(emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32, num_layers=1,
                   value_hidden_dim=8, max_len=64)
TINY_BINDINGS = (
    *(f'PolicyConfig.{name} = {value}' for name, value in TINY_POLICY.items()),
    *(f'train_sft/TrainerSettings.{binding}' for binding in (
        f'steps = {STEPS}', 'batch_size = 16', 'warmup_steps = 2', 'eval_every = 4',
        'eval_batch_size = 16', 'log_every = 2', 'checkpoint_every = 2')),
    'train_sft.world_samples_per_prompt = 1')


pytestmark = [pytest.mark.slow, pytest.mark.usefixtures('clean_gin')]  # trains models


@pytest.fixture(scope='module')
def arrays(tmp_path_factory) -> pathlib.Path:
  """One tokenised-array cache for the module's runs, so the world is tokenised once."""
  return tmp_path_factory.mktemp('arrays')


def run_from_run_file(run_dir: pathlib.Path, world_dir: pathlib.Path,
                      **kwargs: Any) -> loop.TrainResult:
  """train_sft as configured by runs/world_sft.gin with TINY_BINDINGS."""
  gin_utils.parse(['runs/world_sft.gin'], [
      f"train_sft.data_dir = '{world_dir}'", f"train_sft.vocabulary = '{world_dir}/vocab.txt'",
      *TINY_BINDINGS])
  try:
    return sft_trainer.train_sft(str(run_dir), **kwargs)
  finally:
    gin.clear_config()


@pytest.fixture(scope='module')
def uninterrupted(tiny_world, arrays, tmp_path_factory) -> pathlib.Path:
  run_dir = tmp_path_factory.mktemp('sft_full')
  result = run_from_run_file(run_dir, tiny_world, cache_dir=str(arrays))
  assert result.exit_code == 0 and result.step == STEPS
  return run_dir


def test_run_directory_files_and_eval(uninterrupted):
  for name in ('eval.json', 'policy_final.msgpack', 'policy.json', 'config.gin',
               'metrics.jsonl'):
    assert (uninterrupted / name).is_file(), name
  summary = json.loads((uninterrupted / 'eval.json').read_text())
  assert summary['step'] == STEPS and summary['split'] == 'test'
  assert summary['train_examples'] == 120 and summary['responses'] == 40
  assert 0.0 < summary['nll_per_token'] < math.log(384) + 1.0  # near uniform after 6 steps
  assert 0.0 <= summary['token_accuracy'] <= 1.0
  entropy = summary['world']['collection_policy']['entropy_per_token_upper_bound']
  assert 0.0 < entropy < summary['world']['sft_nll_per_token_on_policy_samples']
  config = (uninterrupted / 'config.gin').read_text().splitlines()
  assert config.count(f'train_sft/TrainerSettings.steps = {STEPS}') == 1  # the operative binding
  assert config.count(f'#   train_sft/TrainerSettings.steps = {STEPS}') == 1  # binding given
  rows = [json.loads(line) for line in (uninterrupted / 'metrics.jsonl').read_text().splitlines()]
  assert sorted(r['step'] for r in rows if 'loss' in r and 'eval/loss' not in r) == list(
      range(1, STEPS + 1))
  assert sorted(r['step'] for r in rows if 'eval/nll_per_token' in r) == [4, STEPS]


def test_load_policy_round_trips(uninterrupted, tiny_world, arrays):
  config, params = sft_trainer.load_policy(uninterrupted)
  assert config == policy.PolicyConfig(vocab_size=384, **TINY_POLICY)
  info = sft_trainer.policy_info(uninterrupted)
  assert info['step'] == STEPS and (info['prompt_length'], info['response_length']) == (24, 40)
  # The loaded policy reproduces the validation NLL written at the end of training.
  data = data_arrays.sft_arrays(tiny_world, info['vocabulary'], 'test',
                                prompt_length=info['prompt_length'],
                                response_length=info['response_length'],
                                cache_dir=arrays)
  rows = jax.jit(sft_trainer.make_row_nll_fn(config))(params, data)
  metrics = sft_trainer.nll_metrics(jax.tree.map(np.asarray, rows))
  summary = json.loads((uninterrupted / 'eval.json').read_text())
  np.testing.assert_allclose(metrics['nll_per_token'], summary['nll_per_token'], rtol=1e-5)
  assert metrics['tokens'] == summary['tokens']


def test_crashed_then_resumed_equals_uninterrupted(uninterrupted, tiny_world, arrays, tmp_path,
                                                   monkeypatch):
  # Same `steps` (so the same cosine schedule) in both runs; the first dies after update
  # CRASH_AT without a save, so the resume replays from the periodic checkpoint at step 2.
  original = loop.run_training

  def crashing(*args, step_callback=None, **kwargs):
    def callback(step, state, metrics):
      step_callback(step, state, metrics)
      if step == CRASH_AT:
        raise RuntimeError('simulated crash')
    return original(*args, step_callback=callback, **kwargs)

  monkeypatch.setattr(loop, 'run_training', crashing)
  with pytest.raises(RuntimeError, match='simulated crash'):
    run_from_run_file(tmp_path, tiny_world, cache_dir=str(arrays))
  assert not (tmp_path / 'policy_final.msgpack').exists()
  monkeypatch.undo()
  resumed = run_from_run_file(tmp_path, tiny_world, cache_dir=str(arrays), resume=True)
  assert resumed.exit_code == 0 and resumed.start_step == 2
  expected = trainer_utils.load_params(uninterrupted / 'policy_final.msgpack')
  got = trainer_utils.load_params(tmp_path / 'policy_final.msgpack')
  jax.tree.map(np.testing.assert_array_equal, got, expected)
  full = json.loads((uninterrupted / 'eval.json').read_text())
  again = json.loads((tmp_path / 'eval.json').read_text())
  assert again['nll_per_token'] == full['nll_per_token'] and again['resumed_from_step'] == 2
  rows = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  train_steps = [r['step'] for r in rows if 'loss' in r and 'eval/loss' not in r]
  assert sorted(train_steps) == list(range(1, STEPS + 1))  # replayed step 3 written once


def test_bad_settings_name_the_binding(tiny_world, tmp_path):
  common = {'data_dir': str(tiny_world), 'vocabulary': str(tiny_world / 'vocab.txt')}
  small = policy.PolicyConfig(vocab_size=100, **TINY_POLICY)
  with pytest.raises(ValueError, match=r'PolicyConfig.vocab_size = 100 is smaller than'):
    sft_trainer.train_sft(str(tmp_path / 'a'), model=small, **common)
  tiny = policy.PolicyConfig(vocab_size=384, **TINY_POLICY)
  with pytest.raises(ValueError, match=r'prompt_length \+ response_length = 72 exceeds '
                                       r'PolicyConfig.max_len = 64'):
    sft_trainer.train_sft(str(tmp_path / 'b'), model=tiny, prompt_length=32,
                          response_length=40, **common)
  with pytest.raises(ValueError,
                     match=r'train_sft/TrainerSettings.batch_size = 12 must be a positive multiple'):
    sft_trainer.train_sft(str(tmp_path / 'e'), model=tiny, prompt_length=24, response_length=40,
                          settings=sft_trainer.configured_settings(batch_size=12), **common)
  with pytest.raises(ValueError, match='expected a world vocab.txt or a SentencePiece'):
    sft_trainer.train_sft(str(tmp_path / 'c'), data_dir=str(tiny_world),
                          vocabulary=str(tiny_world / 'world.json'), model=tiny)
  gin_utils.parse(['runs/world_sft.gin'], [f"train_sft.data_dir = '{tiny_world}'"])
  with pytest.raises(RuntimeError, match=r"train_sft.*\['vocabulary'\]"):
    sft_trainer.train_sft(str(tmp_path / 'd'))
  with pytest.raises(gin_utils.GinConfigError, match='PolicyConfig.num_layer '):
    gin_utils.parse(['runs/world_sft.gin'], ['PolicyConfig.num_layer = 3'])
  assert not any((tmp_path / name).exists() for name in 'abcde')  # failed before writing
