"""Reward models from Hugging Face checkpoints (models/pretrained.py), against transformers'
golden scores in tests/data/pretrained; no torch."""
import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import numpy as safetensors_numpy

from lsc_align.models import hf_t5
from lsc_align.models import pretrained
from lsc_align.models import t5_encoder

PRETRAINED = pathlib.Path(__file__).resolve().parent / 'data' / 'pretrained'
SEQCLS = ('llama_seqcls', 'qwen2_seqcls', 'gemma2_seqcls')
TOLERANCE = 1e-4


def _golden(case):
  return dict(np.load(PRETRAINED / case / 'golden.npz'))


def _copy(case, tmp_path):
  return pathlib.Path(shutil.copytree(PRETRAINED / case, tmp_path / case))


@pytest.mark.parametrize('case', SEQCLS)
def test_scores_match_transformers(case):
  golden = _golden(case)
  rm = pretrained.load_reward_model(str(PRETRAINED / case))
  assert rm.kind == pretrained.DECODER_KIND and rm.config.emb_dim == 32
  scores = np.asarray(pretrained.reward_scores(rm, golden['input_ids'], golden['attention_mask']))
  assert scores.shape == (3,)
  assert np.abs(scores - golden['scores']).max() < TOLERANCE
  # The reward is read at the last real token: one position earlier gives other scores.
  shorter = golden['attention_mask'].copy()
  shorter[np.arange(3), shorter.sum(1) - 1] = 0
  moved = np.asarray(pretrained.reward_scores(rm, golden['input_ids'], shorter))
  assert np.abs(moved - golden['scores']).min() > 10 * TOLERANCE


def test_reward_position_skips_pad_ids_and_masked_positions():
  ids = np.array([[5, 6, 7, 9, 9], [5, 9, 9, 9, 9], [5, 6, 7, 8, 3]])
  mask = np.array([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
  # pad == eos (9): a trailing eos is skipped, as transformers' rightmost non-pad token.
  np.testing.assert_array_equal(pretrained.reward_positions(ids, mask, 9), [2, 0, 4])
  np.testing.assert_array_equal(pretrained.reward_positions(ids, mask, None), [3, 1, 4])


def test_padding_does_not_change_a_row_score():
  golden = _golden('llama_seqcls')
  rm = pretrained.load_reward_model(str(PRETRAINED / 'llama_seqcls'))
  ids, mask = golden['input_ids'], golden['attention_mask']
  alone = np.asarray(pretrained.reward_scores(rm, ids[2:, :3], mask[2:, :3]))
  assert abs(alone[0] - golden['scores'][2]) < TOLERANCE


@pytest.mark.parametrize('case', SEQCLS)
def test_export_round_trip(case, tmp_path):
  source = PRETRAINED / case
  rm = pretrained.load_reward_model(str(source))
  files = pretrained.export_reward_model(rm, str(tmp_path / 'out'))
  assert 'config.json' in files and 'tokenizer.json' in files
  written = json.loads((tmp_path / 'out' / 'config.json').read_text())
  original = json.loads((source / 'config.json').read_text())
  assert written['architectures'] == original['architectures']
  assert written['num_labels'] == 1 and written['pad_token_id'] == original['pad_token_id']
  ours = safetensors_numpy.load_file(str(tmp_path / 'out' / 'model.safetensors'))
  theirs = safetensors_numpy.load_file(str(source / 'model.safetensors'))
  assert sorted(ours) == sorted(theirs)
  for name, value in theirs.items():
    assert ours[name].dtype == value.dtype, name
    np.testing.assert_array_equal(ours[name], value, err_msg=name)
  back = pretrained.load_reward_model(str(tmp_path / 'out'))
  golden = _golden(case)
  np.testing.assert_array_equal(
      pretrained.reward_scores(back, golden['input_ids'], golden['attention_mask']),
      pretrained.reward_scores(rm, golden['input_ids'], golden['attention_mask']))


@pytest.mark.parametrize('case', ('t5_v1_1_encoder', 't5_encdec'))
def test_t5_encode_equals_hf_t5_states(case):
  golden = _golden(case)
  rm = pretrained.load_reward_model(str(PRETRAINED / case))
  assert rm.kind == pretrained.T5_KIND and rm.pad_id == 0
  states = np.asarray(pretrained.encode(rm, golden['input_ids'], golden['attention_mask']))
  config, params, _ = hf_t5.load_hf_t5_encoder(str(PRETRAINED / case))
  want = np.asarray(jax.jit(t5_encoder.T5Encoder(config).apply)({'params': params},
                                                                golden['input_ids']))
  np.testing.assert_array_equal(states, want)
  real = golden['attention_mask'].astype(bool)
  assert np.abs(states - golden['hidden'])[real].max() < TOLERANCE
  scores = np.asarray(pretrained.reward_scores(rm, golden['input_ids'], golden['attention_mask']))
  assert scores.shape == (3,) and np.isfinite(scores).all()


def test_encode_refuses_a_decoder():
  rm = pretrained.load_reward_model(str(PRETRAINED / 'llama_seqcls'))
  with pytest.raises(ValueError, match='encode takes a T5 reward model'):
    pretrained.encode(rm, np.ones((1, 2), np.int32), np.ones((1, 2), np.int32))


def test_two_labels_is_refused():
  with pytest.raises(ValueError, match='num_labels is 2; a reward model has exactly 1'):
    pretrained.load_reward_model(str(PRETRAINED / 'llama_seqcls_two_labels'))


def test_a_causal_lm_is_refused():
  with pytest.raises(ValueError, match='has no \\*ForSequenceClassification'):
    pretrained.load_reward_model(str(PRETRAINED / 'llama3_gqa_rope_scaling'))


def test_a_t5_without_encoder_is_refused(tmp_path):
  directory = _copy('t5_encdec', tmp_path)
  raw = safetensors_numpy.load_file(str(directory / 'model.safetensors'))
  safetensors_numpy.save_file({k: v for k, v in raw.items() if k.startswith('decoder.')},
                              str(directory / 'model.safetensors'))
  with pytest.raises(ValueError, match='has no T5 encoder'):
    pretrained.load_reward_model(str(directory))


def test_no_pad_token_falls_back_to_eos(tmp_path):
  directory = _copy('llama_seqcls', tmp_path)
  config = json.loads((directory / 'config.json').read_text())
  del config['pad_token_id']
  (directory / 'config.json').write_text(json.dumps(config))
  tok_config = json.loads((directory / 'tokenizer_config.json').read_text())
  tok_config.pop('pad_token', None)
  (directory / 'tokenizer_config.json').write_text(json.dumps(tok_config))
  rm = pretrained.load_reward_model(str(directory))
  assert rm.tokenizer.pad_source == 'eos fallback'
  assert rm.pad_id == rm.tokenizer.eos_id == config['eos_token_id']
  files = pretrained.export_reward_model(rm, str(tmp_path / 'out'))
  assert 'config.json' in files
  written = json.loads((tmp_path / 'out' / 'config.json').read_text())
  assert written['pad_token_id'] == rm.tokenizer.eos_id


def test_long_texts_are_truncated_and_counted():
  rm = pretrained.load_reward_model(str(PRETRAINED / 'llama_seqcls'))
  texts = ['Human: hi there, how are you today?', 'ok']
  full = rm.tokenizer.encode(texts[0])
  ids, mask, truncated = pretrained.tokenize_for_reward(rm, texts, max_length=4)
  assert truncated == 1 and ids.shape == (2, 4)
  np.testing.assert_array_equal(ids[0], full[:4])
  short = rm.tokenizer.encode('ok')
  assert mask[1].sum() == len(short) and (ids[1, len(short):] == rm.pad_id).all()
  ids, mask, truncated = pretrained.tokenize_for_reward(rm, texts)
  assert truncated == 0 and ids.shape[1] == len(full)
  scores = pretrained.reward_scores(rm, ids, mask)
  assert np.isfinite(np.asarray(scores)).all()


def test_tokenize_for_a_t5_needs_a_length():
  rm = pretrained.load_reward_model(str(PRETRAINED / 't5_encdec'))
  with pytest.raises(ValueError, match='give max_length for a T5 reward model'):
    pretrained.tokenize_for_reward(rm, ['hello'])
  ids, mask, truncated = pretrained.tokenize_for_reward(rm, ['hello world'], max_length=2)
  assert truncated == 1 and mask.sum() == 2


def test_bt_steps_on_hh_pairs_tokenized_by_the_checkpoint_reduce_the_loss(shared_data):
  import optax  # pylint: disable=g-import-not-at-top
  from lsc_align.data import arrays as data_arrays  # pylint: disable=g-import-not-at-top
  from lsc_align.models import reward_model  # pylint: disable=g-import-not-at-top
  rm = pretrained.load_reward_model(str(PRETRAINED / 'qwen2_seqcls'))
  pairs, truncated = data_arrays.checkpoint_pair_arrays(
      shared_data / 'hh-rlhf', rm.tokenizer, 'helpful', 'train', max_length=64, max_pairs=16,
      lenient=True)
  assert pairs['chosen'].shape == (16, 64) and truncated > 0  # HH dialogues exceed 64 tokens
  assert (pairs['chosen'][0, pairs['chosen_lengths'][0]:] == rm.tokenizer.pad_id).all()
  masks = {s: (np.arange(64)[None] < pairs[f'{s}_lengths'][:, None]).astype(np.int32)
           for s in ('chosen', 'rejected')}

  def loss_fn(params):
    chosen, rejected = (pretrained.decoder_rewards(params, rm.config, pairs[s], masks[s],
                                                   rm.pad_id) for s in ('chosen', 'rejected'))
    return jnp.mean(reward_model.bradley_terry_loss(chosen, rejected))

  tx = optax.adam(1e-3)
  params, opt_state = rm.params, tx.init(rm.params)
  step = jax.jit(lambda p, o: _update(tx, loss_fn, p, o))
  first = float(loss_fn(params))
  for _ in range(5):
    params, opt_state = step(params, opt_state)
  assert float(loss_fn(params)) < first - 0.05


def _update(tx, loss_fn, params, opt_state):
  import optax  # pylint: disable=g-import-not-at-top
  grads = jax.grad(loss_fn)(params)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state
