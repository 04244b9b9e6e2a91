"""The utility gives the same result jitted on 1 device and sharded over 8 fake CPU devices."""
import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lsc_align.rewards import aggregate, make_objective

OBJECTIVES = [
    make_objective('lsc_sum', ['helpful', 'harmless'], 'lsc',
                   {'helpful': ('quantile', 0.75), 'harmless': ('quantile', 0.5)}),
    make_objective('raw_sum', ['helpful', 'harmless'], 'raw', helpful_weight=0.3),
    make_objective('centered', ['helpful', 'harmless'], 'centered',
                   {'helpful': ('quantile', 0.75), 'harmless': ('quantile', 0.5)}),
]


def test_eight_fake_devices_are_available():
  assert jax.device_count() == 8, 'tests/conftest.py should force 8 host devices'


@pytest.mark.parametrize('objective', OBJECTIVES, ids=lambda o: o.name)
def test_utility_sharded_equals_single_device(objective):
  rng = np.random.default_rng(0)
  rewards = rng.normal(0, 4, size=(64, 2)).astype(np.float32)
  refs = rng.normal(0, 4, size=(64, 2)).astype(np.float32)

  def run(devices):
    mesh = Mesh(np.array(devices), ('data',))
    sharding = NamedSharding(mesh, P('data'))
    fn = jax.jit(aggregate.utility, static_argnums=2, in_shardings=(sharding, sharding),
                 out_shardings=sharding)
    out = fn(jax.device_put(rewards, sharding), jax.device_put(refs, sharding), objective)
    return out

  single = run(jax.devices()[:1])
  sharded = run(jax.devices())
  assert len(sharded.sharding.device_set) == 8
  assert sharded.addressable_shards[0].data.shape == (8,)
  np.testing.assert_array_equal(np.asarray(single), np.asarray(sharded))
