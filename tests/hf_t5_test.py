"""Tests for lsc_align.models.hf_t5 on the transformers-written T5 checkpoints (tests/data)."""
import dataclasses
import json
import os
import pathlib
import shutil
import struct

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from safetensors import numpy as safetensors_numpy

from gcs_paths_test import bucket  # pylint: disable=unused-import (the gs:// stand-in fixture)
from lsc_align import partitioning
from lsc_align.models import hf_t5
from lsc_align.models import reward_model
from lsc_align.models import t5_encoder
from lsc_align.models import t5x_checkpoint
from lsc_align.train import loop
from lsc_align.train import reward_model_trainer

PRETRAINED = pathlib.Path(__file__).resolve().parent / 'data' / 'pretrained'
CASES = {'t5_v1_1_encoder': ('gelu', 'linear'), 't5_encdec': ('relu',)}
TOLERANCE = 1e-4


def _golden(case):
  return dict(np.load(PRETRAINED / case / 'golden.npz'))


def _encode(config, params, ids):
  return np.asarray(jax.jit(t5_encoder.T5Encoder(config).apply)({'params': params}, ids))


def _real_max_error(config, params, golden):
  """Largest |ours - transformers'| over real positions (transformers' pads attend to keys)."""
  real = golden['attention_mask'].astype(bool)
  out = _encode(config, params, golden['input_ids'])
  return float(np.abs(out - golden['hidden'])[real].max())


def _copy(case, tmp_path):
  return pathlib.Path(shutil.copytree(PRETRAINED / case, tmp_path / case))


def _edit_config(directory, **changes):
  path = directory / 'config.json'
  config = json.loads(path.read_text())
  config.update(changes)
  for key in [k for k, v in changes.items() if v is None]:
    del config[key]
  path.write_text(json.dumps(config))


def _tensors(directory):
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  with safe_open(str(directory / 'model.safetensors'), framework='numpy') as f:
    return {k: f.get_tensor(k) for k in f.keys()}


def _write_safetensors(path, tensors):
  """A safetensors file written by hand (bfloat16 included), independent of the reader."""
  names = {np.dtype(np.float32): 'F32', np.dtype(np.float16): 'F16',
           np.dtype(ml_dtypes.bfloat16): 'BF16'}
  header, offset, chunks = {}, 0, []
  for name, value in tensors.items():
    data = np.ascontiguousarray(value).tobytes()
    header[name] = {'dtype': names[value.dtype], 'shape': list(value.shape),
                    'data_offsets': [offset, offset + len(data)]}
    offset += len(data)
    chunks.append(data)
  encoded = json.dumps(header).encode()
  path.write_bytes(struct.pack('<Q', len(encoded)) + encoded + b''.join(chunks))


@pytest.mark.parametrize('case', sorted(CASES))
def test_hidden_states_match_transformers_on_real_positions(case, monkeypatch):
  golden = _golden(case)
  # Our encoder pads where the id is 0; the golden mask is exactly that.
  np.testing.assert_array_equal(golden['input_ids'] > 0, golden['attention_mask'] == 1)
  config, params, tokenizer = hf_t5.load_hf_t5_encoder(PRETRAINED / case)
  assert config.mlp_activations == CASES[case]
  mlp = {'wi', 'wo'} if CASES[case] == ('relu',) else {'wi_0', 'wi_1', 'wo'}
  assert set(params['encoder']['layers_0']['mlp']) == mlp
  assert tokenizer.pad_id == 0 and tokenizer.eos_id == 1
  error = _real_max_error(config, params, golden)
  print(f'{case}: max |delta| over real positions {error:.3g}')
  assert error < TOLERANCE
  # The settings read from config.json matter at this tolerance: the max distance, and for
  # v1.1 the tanh GELU (gelu_new) rather than the exact one.
  wrong_distance = dataclasses.replace(config, relpos_max_distance=128)
  assert _real_max_error(wrong_distance, params, golden) > 100 * TOLERANCE
  if 'gelu' in CASES[case]:
    monkeypatch.setitem(t5_encoder._ACTIVATIONS, 'gelu',  # pylint: disable=protected-access
                        lambda x: jax.nn.gelu(x, approximate=False))
    assert _real_max_error(config, params, golden) > 5 * TOLERANCE


def test_config_from_both_config_styles():
  base = t5_encoder.T5EncoderConfig(dtype='bfloat16', dropout_rate=0.1,
                                    float32_attention_logits=False)
  v1_1 = hf_t5.read_encoder_config(PRETRAINED / 't5_v1_1_encoder', base=base)  # 4.x config
  assert v1_1 == t5_encoder.T5EncoderConfig(
      vocab_size=384, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=64, num_layers=2,
      mlp_activations=('gelu', 'linear'), dropout_rate=0.1, relpos_num_buckets=8,
      relpos_max_distance=16, dtype='bfloat16', float32_attention_logits=False,
      layer_norm_epsilon=1e-6)
  encdec = hf_t5.read_encoder_config(PRETRAINED / 't5_encdec')  # 5.x config
  assert encdec == dataclasses.replace(v1_1, mlp_activations=('relu',), dropout_rate=0.0,
                                       dtype='float32', float32_attention_logits=True)
  # A config.json from before these keys existed gets transformers' T5Config defaults.
  old = {'model_type': 't5', 'd_model': 32, 'num_heads': 4, 'd_kv': 8, 'd_ff': 64,
         'num_layers': 2, 'vocab_size': 384}
  assert hf_t5.encoder_config_from_hf(old) == dataclasses.replace(
      encdec, relpos_num_buckets=32, relpos_max_distance=128)


def test_every_param_is_the_files_tensor_transposed_or_kept():
  directory = PRETRAINED / 't5_encdec'
  config, params, _ = hf_t5.load_hf_t5_encoder(directory)
  raw = _tensors(directory)
  flat = t5x_checkpoint.flat_names(params)
  table = hf_t5.tensor_names(config)
  assert set(flat) == set(table) == set(t5x_checkpoint.expected_encoder_shapes(config))
  for name, (hf, transform) in table.items():
    want = raw[hf].T if transform == hf_t5.TRANSPOSE else raw[hf]
    np.testing.assert_array_equal(flat[name], want, err_msg=name)
    assert flat[name].dtype == np.float32
  np.testing.assert_array_equal(
      flat['encoder/layers_1/attention/query/kernel'],
      raw['encoder.block.1.layer.0.SelfAttention.q.weight'].T)
  np.testing.assert_array_equal(flat['encoder/relpos_bias/rel_embedding'],
                                raw['encoder.block.0.layer.0.SelfAttention.'
                                    'relative_attention_bias.weight'].T)
  used = {hf for hf, _ in table.values()}
  assert {n.split('.')[0] for n in set(raw) - used} == {'decoder'}


def test_on_a_mesh_params_are_sharded_by_the_rules_and_give_the_same_states():
  case = 't5_v1_1_encoder'
  mesh = partitioning.create_mesh((2, 4))
  config, params, _ = hf_t5.load_hf_t5_encoder(PRETRAINED / case, mesh=mesh)
  boxed = jax.eval_shape(t5_encoder.T5Encoder(config).init, jax.random.key(0),
                         jnp.ones((1, 1), jnp.int32))['params']
  report = partitioning.verify_sharding(params, partitioning.logical_shardings(boxed, mesh),
                                        mesh)
  assert report.num_sharded >= 2 * 6  # q, k, v, out, wi_0, wi_1, wo per layer; embedding
  spec = params['encoder']['layers_0']['mlp']['wi_0']['kernel'].sharding.spec
  assert spec == jax.sharding.PartitionSpec(None, 'model')
  _, host, _ = hf_t5.load_hf_t5_encoder(PRETRAINED / case)
  for name, value in t5x_checkpoint.flat_names(host).items():
    np.testing.assert_array_equal(np.asarray(t5x_checkpoint.flat_names(params)[name]), value)
  golden = _golden(case)
  with partitioning.activate(mesh):
    ids = partitioning.shard_batch({'ids': np.tile(golden['input_ids'], (2, 1))}, mesh)['ids']
    out = np.asarray(jax.jit(t5_encoder.T5Encoder(config).apply)({'params': params}, ids))
  real = golden['attention_mask'].astype(bool)
  assert np.abs(out[:3] - golden['hidden'])[real].max() < TOLERANCE
  # The reward model on the mesh: encoder and fresh head laid out as RewardModel's boxes say.
  key = jax.random.key(5)
  rm_config, rm_params, _ = hf_t5.load_hf_t5_reward_model(PRETRAINED / case, key, mesh=mesh)
  net = reward_model.RewardModel(rm_config)
  boxed = jax.eval_shape(net.init, key, jnp.ones((1, 1), jnp.int32))['params']
  partitioning.verify_sharding(rm_params, partitioning.logical_shardings(boxed, mesh), mesh)
  _, rm_host, _ = hf_t5.load_hf_t5_reward_model(PRETRAINED / case, key)
  for name, value in t5x_checkpoint.flat_names(rm_host).items():
    np.testing.assert_array_equal(np.asarray(t5x_checkpoint.flat_names(rm_params)[name]), value)


def test_bfloat16_and_float16_shards_with_an_index_and_the_embed_tokens_name(tmp_path):
  directory = _copy('t5_v1_1_encoder', tmp_path)
  raw = _tensors(directory)
  (directory / 'model.safetensors').unlink()
  raw['encoder.embed_tokens.weight'] = raw.pop('shared.weight')  # the tied copy's name
  names = sorted(raw)
  shards = {'model-00001-of-00002.safetensors': (names[:7], ml_dtypes.bfloat16),
            'model-00002-of-00002.safetensors': (names[7:], np.float16)}
  stored = {}
  for file, (members, dtype) in shards.items():
    stored.update({k: raw[k].astype(dtype) for k in members})
    _write_safetensors(directory / file, {k: stored[k] for k in members})
  (directory / 'model.safetensors.index.json').write_text(json.dumps(
      {'weight_map': {k: f for f, (members, _) in shards.items() for k in members}}))
  config, params, _ = hf_t5.load_hf_t5_encoder(directory)
  flat = t5x_checkpoint.flat_names(params)
  np.testing.assert_array_equal(flat['token_embedder/embedding'],
                                stored['encoder.embed_tokens.weight'].astype(np.float32))
  for name, (hf, transform) in hf_t5.tensor_names(config).items():
    hf = 'encoder.embed_tokens.weight' if hf == 'shared.weight' else hf
    want = stored[hf].astype(np.float32)
    assert flat[name].dtype == np.float32
    np.testing.assert_array_equal(flat[name], want.T if transform == hf_t5.TRANSPOSE else want)
  (directory / 'model-00002-of-00002.safetensors').unlink()
  with pytest.raises(FileNotFoundError, match='model-00002-of-00002.safetensors'):
    hf_t5.load_hf_t5_encoder(directory)


# pylint: disable-next=redefined-outer-name
def test_gs_checkpoint_reads_through_epath(bucket, tmp_path):
  shutil.copytree(PRETRAINED / 't5_v1_1_encoder', bucket.local('gs://models/t5'))
  config, params, tokenizer = hf_t5.load_hf_t5_encoder('gs://models/t5')
  assert tokenizer.path == 'gs://models/t5'
  assert _real_max_error(config, params, _golden('t5_v1_1_encoder')) < TOLERANCE
  assert not os.path.exists(tmp_path / 'cwd' / 'gs:') and not os.path.exists(tmp_path / 'gs:')


def test_a_checkpoint_without_encoder_tensors(tmp_path):
  directory = _copy('t5_encdec', tmp_path)
  raw = _tensors(directory)
  safetensors_numpy.save_file({k: v for k, v in raw.items() if k.startswith('decoder.')},
                              str(directory / 'model.safetensors'))
  with pytest.raises(ValueError, match='has no T5 encoder'):
    hf_t5.load_hf_t5_encoder(directory)


def test_wrong_shape_names_the_tensor(tmp_path):
  directory = _copy('t5_encdec', tmp_path)
  _edit_config(directory, d_ff=48)
  with pytest.raises(ValueError, match=r'encoder.block.0.layer.1.DenseReluDense.wi.weight has '
                     r'shape \(64, 32\), config.json gives \(48, 32\)'):
    hf_t5.load_hf_t5_encoder(directory)


def test_missing_and_unknown_encoder_tensors(tmp_path):
  directory = _copy('t5_encdec', tmp_path)
  raw = _tensors(directory)
  del raw['encoder.block.1.layer.1.DenseReluDense.wo.weight']
  safetensors_numpy.save_file(raw, str(directory / 'model.safetensors'))
  with pytest.raises(ValueError, match=r'encoder.block.1.layer.1.DenseReluDense.wo.weight '
                     r'\(encoder param encoder/layers_1/mlp/wo/kernel\) is missing'):
    hf_t5.load_hf_t5_encoder(directory)
  raw = _tensors(PRETRAINED / 't5_encdec')
  raw['encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight'] = np.zeros(
      (8, 4), np.float32)  # per-layer position biases (umT5) are another architecture
  safetensors_numpy.save_file(raw, str(directory / 'model.safetensors'))
  with pytest.raises(ValueError, match='encoder tensor encoder.block.1.layer.0.SelfAttention.'
                     'relative_attention_bias.weight is not'):
    hf_t5.load_hf_t5_encoder(directory)


def test_unsupported_or_contradictory_configs(tmp_path):
  directory = _copy('t5_encdec', tmp_path)
  cases = [({'feed_forward_proj': 'gated-silu'}, "feed_forward_proj 'gated-silu' is not"),
           ({'dense_act_fn': 'gelu_new'}, "dense_act_fn 'gelu_new' contradicts"),
           ({'model_type': 'umt5'}, "model_type 'umt5' is not a T5"),
           ({'num_heads': 0}, 'num_heads must be a positive integer'),
           ({'d_kv': 8.0}, 'd_kv must be a positive integer'),
           ({'layer_norm_epsilon': 'small'}, 'layer_norm_epsilon must be a positive number')]
  for changes, message in cases:
    _edit_config(directory, **json.loads((PRETRAINED / 't5_encdec' / 'config.json')
                                         .read_text()))
    _edit_config(directory, **changes)
    with pytest.raises(ValueError, match=message):
      hf_t5.load_hf_t5_encoder(directory)
  (directory / 'config.json').write_text('[1, 2')
  with pytest.raises(ValueError, match='config.json: not valid JSON'):
    hf_t5.load_hf_t5_encoder(directory)


def test_missing_files(tmp_path):
  with pytest.raises(FileNotFoundError, match='no such checkpoint directory'):
    hf_t5.load_hf_t5_encoder(tmp_path / 'absent')
  directory = _copy('t5_encdec', tmp_path)
  (directory / 'tokenizer.json').unlink()
  with pytest.raises(FileNotFoundError, match='no tokenizer.json'):
    hf_t5.load_hf_t5_encoder(directory)
  (directory / 'model.safetensors').unlink()
  with pytest.raises(FileNotFoundError, match='no model.safetensors or'):
    hf_t5.load_hf_t5_encoder(directory)
  (directory / 'config.json').unlink()
  with pytest.raises(FileNotFoundError, match='config.json: no such file'):
    hf_t5.load_hf_t5_encoder(directory)


def test_tokenizer_must_pad_with_zero_and_fit_the_embedding(tmp_path):
  directory = _copy('t5_v1_1_encoder', tmp_path)
  _edit_config(directory, vocab_size=300)  # the tokenizer has 356 ids
  raw = _tensors(directory)
  raw['shared.weight'] = raw['shared.weight'][:300]
  safetensors_numpy.save_file(raw, str(directory / 'model.safetensors'))
  with pytest.raises(ValueError, match='the tokenizer has 356 ids'):
    hf_t5.load_hf_t5_encoder(directory)
  directory = _copy('t5_encdec', tmp_path / 'pad')
  config = json.loads((directory / 'tokenizer_config.json').read_text())
  config['pad_token'] = '</s>'
  (directory / 'tokenizer_config.json').write_text(json.dumps(config))
  with pytest.raises(ValueError, match='pads with id 1; the T5 encoder needs pad id 0'):
    hf_t5.load_hf_t5_encoder(directory)


@pytest.mark.parametrize('case', sorted(CASES))
def test_reward_model_from_checkpoint_trains_a_bt_step(case):
  base = reward_model.RewardModelConfig(pooling='mean', head_bias=True)
  key = jax.random.key(3)
  config, params, tokenizer = hf_t5.load_hf_t5_reward_model(PRETRAINED / case, key, base=base)
  assert config == hf_t5.reward_model_config(PRETRAINED / case, base)
  net = reward_model.RewardModel(config)
  # The head is exactly the one RewardModel.init draws with this key.
  fresh = jax.tree.map(np.asarray, net.init(key, jnp.ones((1, 1), jnp.int32))['params'])
  for name in ('kernel', 'bias'):
    np.testing.assert_array_equal(params['reward_head'][name], fresh['reward_head'][name].value)
  # r(x, y) is the head on transformers' mean-pooled encoder states.
  golden = _golden(case)
  real = golden['attention_mask'].astype(np.float32)
  pooled = (golden['hidden'] * real[..., None]).sum(1) / real.sum(1, keepdims=True)
  want = pooled @ params['reward_head']['kernel'][:, 0] + params['reward_head']['bias'][0]
  got = np.asarray(net.apply({'params': params}, golden['input_ids']))
  assert np.abs(got - want).max() < TOLERANCE

  texts = [('Human: how do I boil an egg? Assistant:', ' Put it in boiling water.', ' No.'),
           ('Human: name a colour. Assistant:', ' Blue is a colour.', ' Eggs.')]
  packed = {}
  for side, column in (('chosen', 1), ('rejected', 2)):
    packed[side] = reward_model.pack_encoder_input(
        [tokenizer.encode(t[0], add_special_tokens=False) for t in texts],
        [tokenizer.encode(t[column]) for t in texts], 24)['tokens']
  state = loop.TrainState.create(params, optax.adam(1e-2), jax.random.key(1))
  step = jax.jit(reward_model_trainer.make_train_step(net, optax.constant_schedule(1e-2)))
  losses = []
  for _ in range(3):
    state, metrics = step(state, packed)
    losses.append(float(metrics['loss']))
  assert np.isfinite(losses).all() and int(state.step) == 3
  assert losses[-1] < losses[0]
  moved = state.params['encoder']['layers_0']['attention']['query']['kernel']
  assert np.abs(np.asarray(moved) - params['encoder']['layers_0']['attention']['query']
                ['kernel']).max() > 0
