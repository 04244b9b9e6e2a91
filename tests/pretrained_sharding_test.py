"""A Hugging Face checkpoint loaded onto 8 fake CPU devices: the rules' shardings, 1-device logits.

tests/conftest.py gives every test 8 host devices; the 1-device reference uses the first one.
"""
import pathlib

import jax
import numpy as np
import pytest

from lsc_align import partitioning
from lsc_align.models import policy
from lsc_align.models import pretrained

DATA = pathlib.Path(__file__).resolve().parent / 'data' / 'pretrained'


@pytest.mark.parametrize('case,mesh_shape', [('gemma3_text', (2, 4)), ('qwen2_bias', (4, 2))])
def test_sharded_load_matches_one_device(case, mesh_shape):
  assert jax.device_count() == 8
  golden = np.load(DATA / case / 'golden.npz')
  one = pretrained.load(str(DATA / case))
  mesh = partitioning.create_mesh(mesh_shape)
  sharded = pretrained.load(str(DATA / case), mesh=mesh)
  expected = partitioning.logical_shardings(policy.abstract_params(sharded.config), mesh)
  report = partitioning.verify_sharding(sharded.params, expected, mesh)
  assert report.num_sharded >= 3 * sharded.config.num_layers  # q, mlp, out kernels at least
  assert report.elements_per_device < report.total_elements
  embedding = sharded.params['token_embedder']['embedding']
  assert embedding.sharding.spec == jax.P('model', None)  # vocab over 'model'
  assert embedding.addressable_shards[0].data.shape == (
      sharded.config.vocab_size // mesh_shape[1], sharded.config.emb_dim)
  # Rows repeated to 4, so the batch divides the 'data' axis.
  ids, prompt_ids = (np.tile(golden[k], (2, 1)) for k in ('input_ids', 'prompt_ids'))
  tokens = partitioning.shard_batch({'ids': ids}, mesh)['ids']
  logits = pretrained.logits(sharded, tokens)
  assert logits.sharding.spec[0] == 'data'
  np.testing.assert_allclose(logits, pretrained.logits(one, ids), rtol=0, atol=1e-5)
  np.testing.assert_allclose(logits[:2], golden['logits'], rtol=0, atol=1e-4)
  prompts = partitioning.shard_batch({'ids': prompt_ids}, mesh)['ids']
  np.testing.assert_array_equal(pretrained.generate(sharded, prompts, 8, eos_id=None),
                                np.tile(golden['greedy_ids'], (2, 1)))


def test_sharded_world_policy_exports_the_same_tensors(tmp_path):
  config = policy.PolicyConfig(vocab_size=64, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=64,
                               num_layers=2, max_len=32, value_hidden_dim=16)
  params = jax.jit(policy.init_params, static_argnums=0)(config, jax.random.key(0, impl='rbg'))
  mesh = partitioning.create_mesh((2, 4))
  sharded = jax.device_put(
      params, partitioning.logical_shardings(policy.abstract_params(config), mesh))
  model = pretrained.from_policy(sharded, config)
  assert model.mesh.shape == mesh.shape
  pretrained.export(model, str(tmp_path / 'sharded'))
  pretrained.export(pretrained.from_policy(params, config), str(tmp_path / 'one'))
  for name in ('model.safetensors', 'config.json'):
    assert (tmp_path / 'sharded' / name).read_bytes() == (tmp_path / 'one' / name).read_bytes()
