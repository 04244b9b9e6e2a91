"""Tests for lsc_align.models.t5x_checkpoint on the real tiny T5X checkpoint."""
import dataclasses
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import serialization

from lsc_align.models import reward_model
from lsc_align.models import t5_encoder
from lsc_align.models import t5x_checkpoint

CONFIG = t5x_checkpoint.TINY_CHECKPOINT_CONFIG


@pytest.fixture(scope='module')
def checkpoint(shared_data):
  return shared_data / 't5x' / 'test_t5_tiny.checkpoint_0'


@pytest.fixture(scope='module')
def raw_target(checkpoint):
  """The checkpoint's optimizer/target, read with flax directly (not through the module)."""
  with open(checkpoint, 'rb') as f:
    state = serialization.msgpack_restore(f.read())
  return t5x_checkpoint.flat_names(state['optimizer']['target'])


def test_every_encoder_param_used_and_shapes_match(checkpoint, raw_target):
  params, report = t5x_checkpoint.load_encoder_params(checkpoint, CONFIG)
  encoder_names = {k for k in raw_target if k.split('/')[0] in ('token_embedder', 'encoder')}
  assert len(encoder_names) == 21
  assert set(report.used) == encoder_names
  assert set(report.unused) == set(raw_target) - encoder_names
  assert all(name.startswith('decoder/') for name in report.unused)
  assert 'decoder/logits_dense/kernel' in report.unused
  flat = t5x_checkpoint.flat_names(params)
  assert set(flat) == encoder_names
  for name in encoder_names:
    assert flat[name].shape == raw_target[name].shape == report.used[name]
    np.testing.assert_array_equal(flat[name], raw_target[name])
  assert '21 encoder params loaded' in report.summary()


def test_forward_on_loaded_weights_is_finite(checkpoint):
  params, _ = t5x_checkpoint.load_encoder_params(checkpoint, CONFIG)
  model = t5_encoder.T5Encoder(CONFIG)
  tokens = np.array([[3, 9, 2000, 32127, 1, 0], [5, 1, 0, 0, 0, 0]], np.int32)
  out = jax.jit(lambda p, t: model.apply({'params': p}, t))(params, tokens)
  assert out.shape == (2, 6, 8)
  assert np.isfinite(np.asarray(out)).all()
  assert np.asarray(out).std() > 0.1


def test_infer_config_reads_sizes(checkpoint):
  target = t5x_checkpoint.read_checkpoint(checkpoint)['optimizer']['target']
  assert t5x_checkpoint.infer_encoder_config(target) == CONFIG
  with pytest.raises(ValueError, match='lacks encoder param'):
    t5x_checkpoint.infer_encoder_config({'decoder': target['decoder']})


def test_shape_mismatch_names_the_param(checkpoint):
  wrong = dataclasses.replace(CONFIG, mlp_dim=32)
  with pytest.raises(ValueError, match=r'encoder/layers_0/mlp/wi_0/kernel has shape \(8, 16\)'):
    t5x_checkpoint.load_encoder_params(checkpoint, wrong)


def test_missing_param_names_it(checkpoint, tmp_path):
  state = t5x_checkpoint.read_checkpoint(checkpoint)
  del state['optimizer']['target']['encoder']['layers_1']['mlp']['wo']
  path = tmp_path / 'broken'
  path.write_bytes(serialization.msgpack_serialize(state))
  with pytest.raises(ValueError, match='encoder/layers_1/mlp/wo/kernel .* missing'):
    t5x_checkpoint.load_encoder_params(path, CONFIG)
  (tmp_path / 'garbage').write_bytes(b'not msgpack at all')
  with pytest.raises(ValueError, match='garbage'):
    t5x_checkpoint.load_encoder_params(tmp_path / 'garbage', CONFIG)


def _assert_same_state(got, want):
  got, want = t5x_checkpoint.flat_names(got), t5x_checkpoint.flat_names(want)
  assert set(got) == set(want) and len(got) > 200
  for name, value in want.items():
    np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_export_round_trip_with_base(checkpoint, tmp_path):
  params, _ = t5x_checkpoint.load_encoder_params(checkpoint, CONFIG)
  out = tmp_path / 'checkpoint_0'
  t5x_checkpoint.export_checkpoint(out, params, base_checkpoint=checkpoint)
  # Unchanged params: the written file restores to exactly the original state, decoder and
  # optimizer moments included.
  _assert_same_state(t5x_checkpoint.read_checkpoint(out),
                     t5x_checkpoint.read_checkpoint(checkpoint))

  # A trained reward model goes back: changed encoder weights plus its head.
  trained = jax.tree_util.tree_map(lambda v: v + 0.25, params)
  trained['reward_head'] = {'kernel': np.ones((8, 1), np.float32),
                            'bias': np.zeros((1,), np.float32)}
  written = t5x_checkpoint.export_checkpoint(out, trained, base_checkpoint=checkpoint, step=7)
  assert 'reward_head/kernel' in written and len(written) == 23
  assert [p.name for p in tmp_path.iterdir()] == ['checkpoint_0']  # no temporary files left
  reloaded, report = t5x_checkpoint.load_encoder_params(out, CONFIG)
  for name, value in t5x_checkpoint.flat_names(reloaded).items():
    np.testing.assert_array_equal(value, t5x_checkpoint.flat_names(params)[name] + 0.25)
  assert 'reward_head/kernel' in report.unused
  state = t5x_checkpoint.read_checkpoint(out)
  base = t5x_checkpoint.read_checkpoint(checkpoint)
  assert int(state['optimizer']['state']['step']) == 7
  np.testing.assert_array_equal(state['optimizer']['target']['decoder']['logits_dense']['kernel'],
                                base['optimizer']['target']['decoder']['logits_dense']['kernel'])
  with pytest.raises(ValueError, match='encoder/encoder_norm/scale'):
    bad = {'encoder': {'encoder_norm': {'scale': np.ones(4, np.float32)}}}
    t5x_checkpoint.export_checkpoint(out, bad, base_checkpoint=checkpoint)


def test_export_without_base_loads_back(checkpoint, tmp_path):
  params, _ = t5x_checkpoint.load_encoder_params(checkpoint, CONFIG)
  boxed = jax.eval_shape(t5_encoder.T5Encoder(CONFIG).init, jax.random.key(0),
                         jnp.ones((1, 2), jnp.int32))['params']
  boxed = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), boxed)
  boxed = t5x_checkpoint.insert_encoder_params(boxed, params)  # boxes in, plain arrays out
  t5x_checkpoint.export_checkpoint(tmp_path / 'ckpt', boxed)
  reloaded, report = t5x_checkpoint.load_encoder_params(tmp_path / 'ckpt', CONFIG)
  assert report.unused == ()
  for name, value in t5x_checkpoint.flat_names(params).items():
    np.testing.assert_array_equal(t5x_checkpoint.flat_names(reloaded)[name], value)


def test_insert_into_reward_model_keeps_boxes(checkpoint):
  params, _ = t5x_checkpoint.load_encoder_params(checkpoint, CONFIG)
  model = reward_model.RewardModel(reward_model.RewardModelConfig(encoder=CONFIG))
  variables = jax.jit(model.init)(jax.random.key(0), jnp.ones((2, 4), jnp.int32))
  merged = t5x_checkpoint.insert_encoder_params(variables['params'], params)
  box = merged['encoder']['layers_0']['mlp']['wi_0']['kernel']
  assert isinstance(box, nn.LogicallyPartitioned) and box.names == ('embed', 'mlp')
  np.testing.assert_array_equal(box.value, params['encoder']['layers_0']['mlp']['wi_0']['kernel'])
  np.testing.assert_array_equal(merged['reward_head']['kernel'].value,
                                variables['params']['reward_head']['kernel'].value)
  with pytest.raises(ValueError, match='token_embedder/embedding'):
    t5x_checkpoint.insert_encoder_params(
        variables['params'], {'token_embedder': {'embedding': np.zeros((10, 8), np.float32)}})
