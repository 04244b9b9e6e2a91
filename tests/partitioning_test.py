"""Tests for lsc_align.partitioning on 8 fake CPU devices (see conftest.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec as P

from lsc_align import partitioning
from lsc_align.models import t5_encoder


class _TwoDense(nn.Module):
  """Weights annotated like the encoder's MLP: [embed, mlp] then [mlp, embed], plus a norm."""

  @nn.compact
  def __call__(self, x):
    h = t5_encoder.Dense(16, ('embed', 'mlp'), name='wi')(x)
    h = nn.with_logical_constraint(h, ('batch', 'mlp'))
    return t5_encoder.LayerNorm(name='norm')(t5_encoder.Dense(8, ('mlp', 'embed'), name='wo')(h))


def test_create_mesh_shapes():
  assert dict(partitioning.create_mesh((-1, 1)).shape) == {'data': 8, 'model': 1}
  assert dict(partitioning.create_mesh((4, 2)).shape) == {'data': 4, 'model': 2}
  assert dict(partitioning.create_mesh((2, -1)).shape) == {'data': 2, 'model': 4}
  one = partitioning.create_mesh((1, 1), devices=jax.devices()[:1])
  assert one.devices.size == 1
  for bad in [(3, 2), (-1, -1), (4, 2, 1), (0, 8), (3, -1)]:
    with pytest.raises(ValueError, match='mesh shape'):
      partitioning.create_mesh(bad)


def test_rules_table_names_and_targets():
  rules = dict(partitioning.LOGICAL_AXIS_RULES)
  assert set(rules) == {'batch', 'length', 'embed', 'mlp', 'heads', 'kv', 'vocab',
                        'relpos_buckets', 'norm'}
  assert rules['batch'] == 'data'
  assert {rules[n] for n in ('mlp', 'heads', 'vocab')} == {'model'}
  assert {rules[n] for n in ('length', 'embed', 'kv', 'relpos_buckets', 'norm')} == {None}


def test_mesh_spec_replicates_uneven_dimensions():
  mesh = partitioning.create_mesh((4, 2))
  assert partitioning.mesh_spec(('embed', 'mlp'), (8, 16), mesh) == P(None, 'model')
  assert partitioning.mesh_spec(('vocab', 'embed'), (32128, 8), mesh) == P('model', None)
  assert partitioning.mesh_spec(('heads', 'relpos_buckets'), (3, 32), mesh) == P(None, None)
  with pytest.raises(ValueError, match='do not match shape'):
    partitioning.mesh_spec(('embed',), (8, 16), mesh)


def test_params_and_optimizer_state_sharded_as_annotated():
  mesh = partitioning.create_mesh((4, 2))
  model = _TwoDense()
  x = jnp.ones((8, 8))
  abstract = jax.eval_shape(model.init, jax.random.key(0), x)
  shardings = partitioning.logical_shardings(abstract, mesh)
  with partitioning.activate(mesh):
    variables = jax.jit(lambda r: nn.unbox(model.init(r, x)), out_shardings=shardings)(
        jax.random.key(0))
  report = partitioning.verify_sharding(variables, shardings, mesh)
  wi = variables['params']['wi']['kernel']
  assert wi.sharding.spec == P(None, 'model')
  assert wi.addressable_shards[0].data.shape == (8, 8)  # 16 mlp columns over 2 model devices
  assert variables['params']['norm']['scale'].sharding.is_fully_replicated
  assert report.num_sharded == 2 and len(report.params) == 3
  assert report.elements_per_device == 64 + 64 + 8
  assert 'params/wi/kernel' in report.summary()

  # Optax state built on boxed params keeps the boxes: moments shard like their params.
  tx = optax.adam(1e-3)
  opt_shardings = partitioning.logical_shardings(
      jax.eval_shape(tx.init, abstract['params']), mesh)
  opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(variables['params'])
  assert opt_state[0].mu['wo']['kernel'].sharding.spec == P('model', None)
  assert opt_state[0].count.sharding.is_fully_replicated


def test_verify_sharding_names_a_replicated_param():
  mesh = partitioning.create_mesh((4, 2))
  model = _TwoDense()
  x = jnp.ones((8, 8))
  shardings = partitioning.logical_shardings(jax.eval_shape(model.init, jax.random.key(0), x),
                                             mesh)
  variables = jax.device_put(nn.unbox(model.init(jax.random.key(0), x)),
                             partitioning.replicated(mesh))
  with pytest.raises(ValueError, match='wi/kernel'):
    partitioning.verify_sharding(variables, shardings, mesh)


def test_activation_constraint_applies_inside_activate():
  mesh = partitioning.create_mesh((4, 2))
  fn = jax.jit(lambda h: nn.with_logical_constraint(h * 2, ('batch', 'mlp')))
  with partitioning.activate(mesh):
    out = fn(jnp.ones((8, 4)))
  assert out.sharding.spec == P('data', 'model')
  np.testing.assert_array_equal(np.asarray(out), 2.0)


def test_shard_batch_splits_rows_over_data():
  mesh = partitioning.create_mesh((4, 2))
  tokens = np.arange(8 * 3, dtype=np.int32).reshape(8, 3)
  batch = partitioning.shard_batch({'tokens': tokens, 'labels': np.arange(8)}, mesh)
  assert batch['tokens'].sharding == NamedSharding(mesh, P('data'))
  np.testing.assert_array_equal(np.asarray(batch['tokens']), tokens)
  shard_rows = {tuple(np.asarray(s.data)[:, 0]) for s in batch['tokens'].addressable_shards}
  assert shard_rows == {(0, 3), (6, 9), (12, 15), (18, 21)}  # 2 rows each, model replicas agree
  with pytest.raises(ValueError, match="'tokens'.*not divisible"):
    partitioning.shard_batch({'tokens': tokens[:6]}, mesh)
  with pytest.raises(ValueError, match='scalar'):
    partitioning.shard_batch({'step': np.int32(3)}, mesh)
