"""Tests for lsc_align.checkpointing: round trips, schedule, retention, sharded restore."""
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np
import optax
import pytest

from lsc_align import checkpointing
from lsc_align.train import loop


class TinyMLP(nn.Module):
  hidden: int = 16

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    hidden = nn.relu(nn.Dense(self.hidden)(x))  # Dense_0: kernel [4, hidden]
    return nn.Dense(1)(hidden)[..., 0]


# One optimizer object: it is static pytree metadata, so templates must share it.
TX = optax.adam(1e-2)


def make_state(seed: int, key_fn=jax.random.key) -> loop.TrainState:
  params = TinyMLP().init(jax.random.key(seed), jnp.zeros((1, 4)))['params']
  state = loop.TrainState.create(params, TX, key_fn(seed + 100))
  # One real update so the optimizer moments are non-zero and differ between seeds.
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5 + seed), params)
  return state.apply_gradients(grads)


def host_leaves(tree):
  """Leaves as numpy; typed keys as their uint32 key data."""
  def leaf(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    return np.asarray(jax.device_get(x))
  return [leaf(x) for x in jax.tree.leaves(tree)]


def assert_trees_bitwise_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(host_leaves(a), host_leaves(b)):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize('key_fn', [jax.random.key, jax.random.PRNGKey], ids=['typed', 'raw'])
def test_round_trip_restores_state_and_host_json(tmp_path, key_fn):
  saved = make_state(0, key_fn)
  with checkpointing.TrainCheckpointer(tmp_path, save_interval_steps=1) as ckpt:
    assert ckpt.latest_step() is None
    assert ckpt.save(3, saved, {'epoch': 1, 'data_position': 32})
  # A fresh manager and a template with different values, as a resumed process has.
  fresh = checkpointing.TrainCheckpointer(tmp_path)
  template = make_state(1, key_fn)
  assert fresh.latest_step() == 3
  state, host = fresh.restore(template)
  fresh.close()
  assert isinstance(state, loop.TrainState)
  assert state.tx is template.tx
  assert host == {'step': 3, 'epoch': 1, 'data_position': 32}
  assert state.rng.dtype == saved.rng.dtype
  assert_trees_bitwise_equal(state, saved)
  with pytest.raises(AssertionError):
    assert_trees_bitwise_equal(template, saved)  # the check can fail


def test_typed_key_keeps_its_implementation(tmp_path):
  saved = {'rng': jax.random.key(7, impl='rbg')}
  with checkpointing.TrainCheckpointer(tmp_path) as ckpt:
    ckpt.save(1, saved, force=True)
    restored, _ = ckpt.restore({'rng': jax.random.key(0, impl='rbg')})
  assert jax.random.key_impl(restored['rng']) == jax.random.key_impl(saved['rng'])
  np.testing.assert_array_equal(jax.random.key_data(restored['rng']),
                                jax.random.key_data(saved['rng']))
  # The restored key draws the same numbers.
  np.testing.assert_array_equal(jax.random.uniform(restored['rng'], (3,)),
                                jax.random.uniform(saved['rng'], (3,)))


def test_save_schedule_and_max_to_keep(tmp_path):
  state = make_state(0)
  ckpt = checkpointing.TrainCheckpointer(tmp_path, save_interval_steps=2, max_to_keep=2)
  started = [step for step in range(1, 8) if ckpt.save(step, state, {})]
  assert started == [2, 4, 6]
  assert ckpt.save(7, state, {}, force=True)
  assert not ckpt.save(7, state, {}, force=True)  # already saved: no error, no second copy
  ckpt.wait_until_finished()
  assert ckpt.all_steps() == [6, 7]
  assert ckpt.latest_step() == 7
  assert ckpt.restore_host_state(6) == {'step': 6}
  with pytest.raises(FileNotFoundError):
    ckpt.restore(state, step=2)  # deleted by max_to_keep
  ckpt.close()


def test_restore_without_checkpoint_raises(tmp_path):
  with checkpointing.TrainCheckpointer(tmp_path / 'empty') as ckpt:
    with pytest.raises(FileNotFoundError):
      ckpt.restore(make_state(0))


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match='save_interval_steps must be >= 1, got 0'):
    checkpointing.TrainCheckpointer('/tmp/unused', save_interval_steps=0)
  with pytest.raises(ValueError, match='max_to_keep must be >= 1 or None, got 0'):
    checkpointing.TrainCheckpointer('/tmp/unused', max_to_keep=0)


def shard_state(state: loop.TrainState, mesh: Mesh) -> loop.TrainState:
  """Kernels split ('data', 'model') where they divide evenly, everything else replicated."""
  def put(x):
    if x.ndim == 2 and x.shape[0] % 4 == 0 and x.shape[1] % 2 == 0:
      spec = P('data', 'model')
    elif x.ndim == 1 and x.shape[0] % 8 == 0:
      spec = P(('data', 'model'))
    else:
      spec = P()
    return jax.device_put(x, NamedSharding(mesh, spec))
  return jax.tree.map(put, state)


def test_sharded_state_restores_with_template_shardings(tmp_path):
  assert len(jax.devices()) == 8
  mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ('data', 'model'))
  saved = shard_state(make_state(0), mesh)
  kernel = saved.params['Dense_0']['kernel']
  assert kernel.sharding.spec == P('data', 'model')
  assert len(kernel.addressable_shards) == 8
  with checkpointing.TrainCheckpointer(tmp_path) as ckpt:
    ckpt.save(5, saved, {'epoch': 0}, force=True)

  # Sharded template (fresh values): every leaf comes back with the template's sharding.
  template = shard_state(make_state(1), mesh)
  with checkpointing.TrainCheckpointer(tmp_path) as ckpt:
    restored, host = ckpt.restore(template)
  assert host == {'step': 5, 'epoch': 0}
  assert_trees_bitwise_equal(restored, saved)
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(template)):
    assert got.sharding == want.sharding

  # Abstract template (ShapeDtypeStructs) onto 1 device: same values, new sharding.
  one_device = NamedSharding(Mesh(np.array(jax.devices()[:1]), ('data',)), P())
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one_device), saved)
  with checkpointing.TrainCheckpointer(tmp_path) as ckpt:
    single, _ = ckpt.restore(abstract)
  assert_trees_bitwise_equal(single, saved)
  assert all(x.sharding == one_device for x in jax.tree.leaves(single))
