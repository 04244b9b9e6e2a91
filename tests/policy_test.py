"""Tests for lsc_align.models.policy and lsc_align.models.lm_losses."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lsc_align import gin_utils
from lsc_align import partitioning
from lsc_align.models import lm_losses
from lsc_align.models import policy

CONFIG = policy.PolicyConfig(vocab_size=16, emb_dim=32, num_heads=2, head_dim=8, mlp_dim=64,
                             num_layers=2, max_len=32, value_hidden_dim=16)
# Jitted once per test module: op-by-op flax on 2 shared CPU cores is several times slower.
_forward = jax.jit(policy.forward, static_argnums=1)
_prefill = jax.jit(policy.prefill, static_argnums=(1, 3))
_decode_step = jax.jit(policy.decode_step, static_argnums=1)
LOGICAL_NAMES = {'batch', 'length', 'embed', 'mlp', 'heads', 'kv', 'vocab', 'relpos_buckets',
                 'norm', None}


@pytest.fixture(scope='module')
def params():
  # An 'rbg' key: XLA compiles its initialisers about twice as fast as threefry's on CPU.
  return jax.jit(policy.init_params, static_argnums=0)(CONFIG, jax.random.key(0, impl='rbg'))


SEQ_SHAPE = (2, 12)  # most tests use this shape, so the forward pass is compiled once


def _random_tokens(seed, shape=SEQ_SHAPE):
  return np.random.default_rng(seed).integers(2, CONFIG.vocab_size, size=shape).astype(np.int32)


def _log_softmax_np(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.mark.parametrize('field,value', [('num_heads', 0), ('head_dim', 7), ('dtype', 'int9x'),
                                         ('vocab_size', 2.5)])
def test_config_rejects_bad_values(field, value):
  with pytest.raises(ValueError, match=f'PolicyConfig.{field}'):
    policy.PolicyConfig(**{field: value})


def test_forward_shapes_and_length_check(params):
  logits, values = _forward(params, CONFIG, _random_tokens(0))
  assert logits.shape == (2, 12, CONFIG.vocab_size) and logits.dtype == jnp.float32
  assert values.shape == (2, 12) and values.dtype == jnp.float32
  with pytest.raises(ValueError, match='max_len'):
    _forward(params, CONFIG, _random_tokens(0, (1, CONFIG.max_len + 1)))


def test_causal_masking(params):
  tokens = _random_tokens(1)
  changed = tokens.copy()
  changed[:, 6] = (changed[:, 6] + 3) % CONFIG.vocab_size
  logits, values = _forward(params, CONFIG, tokens)
  logits2, values2 = _forward(params, CONFIG, changed)
  np.testing.assert_array_equal(logits[:, :6], logits2[:, :6])
  np.testing.assert_array_equal(values[:, :6], values2[:, :6])
  assert np.abs(logits[:, 6:] - logits2[:, 6:]).min(axis=-1).max() > 1e-4  # later ones do change


def test_rotary_positions_are_relative(params):
  """Shifting every position by a constant leaves the outputs unchanged (up to float error)."""
  tokens = _random_tokens(2)
  positions = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
  apply = jax.jit(policy.PolicyLM(CONFIG).apply)
  logits, values, _ = apply({'params': params}, tokens, positions)
  shifted, shifted_values, _ = apply({'params': params}, tokens, positions + 11)
  np.testing.assert_allclose(shifted, logits, atol=2e-4)
  np.testing.assert_allclose(shifted_values, values, atol=2e-4)
  same_position_logits, _, _ = apply({'params': params}, tokens, positions * 0)
  assert np.abs(same_position_logits - logits).max() > 1e-3  # positions do matter


def test_prefill_then_decode_matches_forward(params):
  tokens = _random_tokens(3)
  logits, values = _forward(params, CONFIG, tokens)
  prefix_logits, prefix_values, cache = _prefill(params, CONFIG, tokens[:, :5], 12)
  np.testing.assert_allclose(prefix_logits, logits[:, :5], atol=1e-5)
  np.testing.assert_allclose(prefix_values, values[:, :5], atol=1e-5)
  assert len(cache) == CONFIG.num_layers
  assert cache[0][0].shape == (2, CONFIG.num_heads, 12, CONFIG.head_dim)
  for t in range(5, 12):
    step_logits, step_values, cache = _decode_step(
        params, CONFIG, tokens[:, t], jnp.full((2,), t, jnp.int32), cache)
    np.testing.assert_allclose(step_logits, logits[:, t], atol=1e-5)
    np.testing.assert_allclose(step_values, values[:, t], atol=1e-5)


def test_forward_at_equals_gathered_forward(params):
  tokens = _random_tokens(5)
  logits, values = _forward(params, CONFIG, tokens)
  positions = np.array([[0, 3, 11], [7, 7, 2]], np.int32)
  at_logits, at_values = jax.jit(policy.forward_at, static_argnums=1)(params, CONFIG, tokens,
                                                                      positions)
  np.testing.assert_allclose(at_logits, policy.gather_positions(logits, positions), atol=1e-5)
  np.testing.assert_allclose(at_values, policy.gather_positions(values, positions), atol=1e-5)


def test_decode_at_per_row_positions(params):
  """Rows at different positions in one decode call match their own forward passes."""
  tokens = _random_tokens(4)
  _, _, cache = _prefill(params, CONFIG, tokens[:, :5], 12)
  positions = np.array([2, 4], np.int32)  # row 0 overwrites slot 2, row 1 slot 4
  new_tokens = np.array([5, 9], np.int32)
  step_logits, _, _ = _decode_step(params, CONFIG, new_tokens, positions, cache)
  expected_tokens = np.zeros(SEQ_SHAPE, np.int32)  # each row cut after its new token
  for row in range(2):
    expected_tokens[row, :positions[row]] = tokens[row, :positions[row]]
    expected_tokens[row, positions[row]] = new_tokens[row]
  expected, _ = _forward(params, CONFIG, expected_tokens)
  for row in range(2):
    np.testing.assert_allclose(step_logits[row], expected[row, positions[row]], atol=1e-5)


def test_pack_prompt_response_against_python_loop():
  prompts = np.array([[5, 6, 7, 0], [8, 0, 0, 0], [3, 4, 5, 6]], np.int32)
  responses = np.array([[9, 1, 0], [10, 11, 1], [12, 0, 0]], np.int32)
  tokens, prediction_positions = policy.pack_prompt_response(prompts, responses)
  for row in range(3):
    prompt = [t for t in prompts[row] if t]
    expected = prompt + list(responses[row])
    expected += [0] * (7 - len(expected))
    np.testing.assert_array_equal(tokens[row], expected)
    np.testing.assert_array_equal(prediction_positions[row], len(prompt) - 1 + np.arange(3))


def test_gather_positions():
  x = np.arange(2 * 5 * 3).reshape(2, 5, 3)
  out = policy.gather_positions(x, np.array([[4, 0], [1, 1]]))
  np.testing.assert_array_equal(out, np.stack([x[0, [4, 0]], x[1, [1, 1]]]))


def test_logical_axis_names_and_labels(params):
  specs = policy.param_logical_specs(CONFIG)
  names = {n for spec in jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, jax.P))
           for n in spec}
  assert names <= LOGICAL_NAMES and {'embed', 'mlp', 'heads', 'kv', 'vocab'} <= names
  assert jax.tree.structure(specs, is_leaf=lambda s: isinstance(s, jax.P)) == (
      jax.tree.structure(params))
  labels = policy.param_labels(params)
  assert set(jax.tree.leaves(labels['value_head'])) == {'value_head'}
  assert set(jax.tree.leaves({k: v for k, v in labels.items() if k != 'value_head'})) == {'policy'}


def test_detached_value_head_keeps_value_gradients_out_of_the_trunk(params):
  tokens = _random_tokens(5)
  detached = dataclasses.replace(CONFIG, detach_value_head=True)

  def value_loss(p):
    return jnp.sum(policy.forward(p, detached, tokens)[1] ** 2)

  grads = jax.jit(jax.grad(value_loss))(params)
  trunk_norm = optax.global_norm({k: v for k, v in grads.items() if k != 'value_head'})
  assert trunk_norm == 0.0 and optax.global_norm(grads['value_head']) > 1e-3
  # Value gradients do reach the trunk by default (the SFT/train test differentiates that way).
  assert not CONFIG.detach_value_head


def test_sft_loss_against_numpy(params):
  prompts = np.array([[5, 6, 7, 0], [8, 0, 0, 0]], np.int32)
  responses = np.array([[9, 1, 0], [10, 11, 1]], np.int32)
  loss, metrics = jax.jit(lm_losses.sft_loss, static_argnums=1)(params, CONFIG, prompts, responses)
  nll, correct = [], []
  for row in range(2):  # each row unpadded (then right-padded): an independent path
    prompt = [t for t in prompts[row] if t]
    response = [t for t in responses[row] if t]
    sequence = np.zeros(SEQ_SHAPE, np.int32)
    sequence[0, :len(prompt) + len(response)] = prompt + response
    logits, _ = _forward(params, CONFIG, sequence)
    log_probs = _log_softmax_np(logits[0, len(prompt) - 1:len(prompt) + len(response) - 1])
    nll += [-log_probs[i, t] for i, t in enumerate(response)]
    correct += [log_probs[i].argmax() == t for i, t in enumerate(response)]
  np.testing.assert_allclose(loss, np.mean(nll), rtol=1e-5)
  assert metrics['num_tokens'] == 5
  np.testing.assert_allclose(metrics['accuracy'], np.mean(correct))


def _sft_batch():
  rng = np.random.default_rng(7)
  prompts = rng.integers(2, CONFIG.vocab_size, size=(8, 6)).astype(np.int32)
  responses = rng.integers(2, CONFIG.vocab_size, size=(8, 5)).astype(np.int32)
  for row in range(8):  # ragged prompts and responses, responses ending in EOS
    prompts[row, 1 + row % 6:] = 0
    responses[row, row % 4] = policy.EOS_ID
    responses[row, row % 4 + 1:] = 0
  return {'prompt_ids': prompts, 'response_ids': responses}


def _train(params, mesh, steps=3):
  """SFT steps with adam under `mesh`, params and optimizer state sharded by logical axes."""
  optimizer = optax.adam(1e-2)
  abstract = policy.abstract_params(CONFIG)
  param_shardings = partitioning.logical_shardings(abstract, mesh)
  state_shardings = partitioning.logical_shardings(jax.eval_shape(optimizer.init, abstract), mesh)

  def train_step(params, opt_state, batch):
    grad_fn = jax.value_and_grad(lm_losses.sft_loss, has_aux=True)
    (loss, _), grads = grad_fn(params, CONFIG, batch['prompt_ids'], batch['response_ids'])
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  with partitioning.activate(mesh):
    # Placed, not re-initialised: compiling the random initialisers is slow on CPU.
    params = jax.device_put(params, param_shardings)
    opt_state = jax.jit(optimizer.init, out_shardings=state_shardings)(params)
    step = jax.jit(train_step, out_shardings=(param_shardings, state_shardings, None))
    batch = partitioning.shard_batch(_sft_batch(), mesh)
    losses = []
    for _ in range(steps):
      params, opt_state, loss = step(params, opt_state, batch)
      losses.append(float(loss))
  partitioning.verify_sharding(params, param_shardings, mesh)
  return losses, jax.device_get(params)


def test_train_step_same_on_one_and_eight_devices(params):
  one_device = partitioning.create_mesh((1, 1), devices=jax.devices()[:1])
  one_losses, one_params = _train(params, one_device)
  mesh = partitioning.create_mesh((4, 2))
  eight_losses, eight_params = _train(params, mesh)
  assert one_losses[-1] < one_losses[0]  # the steps do train
  np.testing.assert_allclose(eight_losses, one_losses, rtol=1e-5)
  # Adam divides by sqrt(v): a near-zero gradient's float noise moves a weight by up to a step
  # (lr = 1e-2), so params agree to 1% of the total movement (3 steps) rather than to 1e-5.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=3e-4),
               eight_params, one_params)
  # The 8-device run really was model-parallel: the output projection is split over 'model'.
  sharding = partitioning.logical_shardings(policy.abstract_params(CONFIG), mesh)
  assert sharding['logits_dense']['kernel'].spec == jax.P(None, 'model')


@pytest.mark.parametrize('size', ['tiny', 'small', 'base'])
def test_gin_configs_parse(size, clean_gin):  # pylint: disable=unused-argument (unlocks gin after)
  gin_utils.parse([f'models/policy_{size}'])
  config = policy.PolicyConfig()
  assert config.num_layers >= 2 and config.emb_dim >= 64
  if size == 'tiny':
    assert config == policy.PolicyConfig(vocab_size=512, emb_dim=64, num_heads=4, head_dim=16,
                                         mlp_dim=256, num_layers=2, max_len=256,
                                         value_hidden_dim=64)
