"""Tests for lsc_align.models.reward_model: packing, heads, losses, sharded training."""
import dataclasses
import functools

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from jax.sharding import PartitionSpec as P

from lsc_align import gin_utils
from lsc_align import partitioning
from lsc_align.models import reward_model
from lsc_align.models import t5_encoder
from lsc_align.models import t5x_checkpoint

ENCODER = t5x_checkpoint.TINY_CHECKPOINT_CONFIG
CONFIG = reward_model.RewardModelConfig(encoder=ENCODER)


def _random_params(abstract):
  """Random float32 values for an abstract (eval_shape) param tree: no init compile."""
  rng = np.random.default_rng(0)
  return jax.tree_util.tree_map(lambda s: rng.normal(0.0, 0.5, s.shape).astype(np.float32),
                                nn.unbox(abstract))


def _variables(model, tokens):
  return {'params': _random_params(jax.eval_shape(model.init, jax.random.key(0), tokens)['params'])}


# --- packing ---------------------------------------------------------------------------------

def test_pack_keeps_prompt_end_and_response_start():
  packed = reward_model.pack_encoder_input(
      prompts=[[3, 4, 5, 6], [3], [3], [9, 9, 9, 9, 9, 9, 9, 10]],
      responses=[[7, 8], [4, 5, 6, 7, 8, 9, 10], [4], [11, 12, 13, 14, 15, 16]],
      max_length=6)
  np.testing.assert_array_equal(packed['tokens'], [
      [3, 4, 5, 6, 7, 8],      # fits
      [3, 4, 5, 6, 7, 8],      # short prompt: the response may use the room
      [3, 4, 0, 0, 0, 0],      # right padding
      [9, 9, 10, 11, 12, 13],  # long both: response capped at 6 // 2, prompt keeps its end
  ])
  np.testing.assert_array_equal(packed['response_mask'], [
      [0, 0, 0, 0, 1, 1], [0, 1, 1, 1, 1, 1], [0, 1, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1]])
  assert packed['tokens'].dtype == np.int32
  long_response = reward_model.pack_encoder_input([[5] * 10], [[6] * 10], 8,
                                                    max_response_length=5)
  np.testing.assert_array_equal(long_response['tokens'], [[5, 5, 5, 6, 6, 6, 6, 6]])


def test_pack_rejects_bad_input():
  with pytest.raises(ValueError, match='example 1'):
    reward_model.pack_encoder_input([[3], [4, 0]], [[5], [6]], 4)
  with pytest.raises(ValueError, match='2 prompts but 1 responses'):
    reward_model.pack_encoder_input([[3], [4]], [[5]], 4)


# --- heads and pooling -------------------------------------------------------------------------

TOKENS = np.array([[37, 5, 912, 7, 1, 0], [8, 31000, 64, 99, 12, 1], [400, 1, 0, 0, 0, 0]],
                  np.int32)


@pytest.mark.parametrize('pooling', ['mean', 'last'])
def test_reward_shape_and_padding_invariance(pooling):
  model = reward_model.RewardModel(reward_model.RewardModelConfig(encoder=ENCODER,
                                                                  pooling=pooling))
  variables = _variables(model, TOKENS)
  apply = jax.jit(model.apply)
  rewards = apply(variables, TOKENS)
  assert rewards.shape == (3,) and rewards.dtype == jnp.float32
  padded = apply(variables, np.pad(TOKENS, ((0, 0), (0, 4))))
  np.testing.assert_allclose(padded, rewards, rtol=1e-5, atol=1e-6)
  assert np.abs(np.asarray(rewards) - np.asarray(rewards)[0]).max() > 1e-4  # inputs matter


def test_pool_against_numpy():
  encoded = np.random.default_rng(0).normal(size=(3, 6, 4)).astype(np.float32)
  mean = reward_model.pool(encoded, TOKENS, 'mean')
  last = reward_model.pool(encoded, TOKENS, 'last')
  for b, n in enumerate((TOKENS > 0).sum(1)):
    np.testing.assert_allclose(mean[b], encoded[b, :n].mean(0), rtol=1e-6)
    np.testing.assert_allclose(last[b], encoded[b, n - 1], rtol=1e-6)
  np.testing.assert_array_equal(reward_model.pool(encoded, np.zeros((3, 6), np.int32), 'mean'), 0)


def test_gaussian_reference_heads():
  model = reward_model.GaussianReferenceModel(reward_model.RewardModelConfig(
      encoder=ENCODER, min_std=0.01))
  variables = _variables(model, TOKENS)
  assert set(variables['params']) == {'token_embedder', 'encoder', 'mean_head', 'std_head'}
  # Push the std head far negative: softplus saturates at the floor, never 0 or negative.
  variables['params']['std_head']['bias'] = np.array([-50.0], np.float32)
  mean, std = jax.jit(model.apply)(variables, TOKENS)
  assert mean.shape == std.shape == (3,)
  np.testing.assert_allclose(std, 0.01, rtol=1e-4)


# --- losses ------------------------------------------------------------------------------------

def test_bradley_terry_loss_against_numpy():
  chosen = np.array([1.0, -2.0, 0.5, 3.0, 0.0], np.float32)
  rejected = np.array([0.0, 1.0, 0.5, -4.0, 20.0], np.float32)
  want = np.log1p(np.exp(-(chosen.astype(np.float64) - rejected)))
  got = jax.jit(reward_model.bradley_terry_loss)(chosen, rejected)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_allclose(reward_model.bradley_terry_loss(1.0, 0.0), 0.31326169, rtol=1e-6)
  assert float(reward_model.pairwise_accuracy(chosen, rejected)) == pytest.approx(2.5 / 5)


def test_bradley_terry_loss_stable_at_huge_margins():
  margins = jnp.array([1e6, -1e6, 1e30, -1e30])
  loss = reward_model.bradley_terry_loss(margins, jnp.zeros(4))
  grad = jax.grad(lambda m: reward_model.bradley_terry_loss(m, 0.0).sum())(margins)
  assert np.isfinite(np.asarray(loss)).all() and np.isfinite(np.asarray(grad)).all()
  np.testing.assert_allclose(loss, [0.0, 1e6, 0.0, 1e30], rtol=1e-6)
  np.testing.assert_allclose(grad, [0.0, -1.0, 0.0, -1.0])


def test_soft_bradley_terry_loss_against_numpy_and_hard_case():
  chosen = np.array([1.0, -2.0, 0.5, 3.0], np.float32)
  rejected = np.array([0.0, 1.0, 0.5, -4.0], np.float32)
  p = np.array([0.9, 0.5, 0.2, 1.0], np.float32)
  m = chosen.astype(np.float64) - rejected
  want = p * np.log1p(np.exp(-m)) + (1 - p) * np.log1p(np.exp(m))
  got = jax.jit(reward_model.soft_bradley_terry_loss)(chosen, rejected, p)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # p = 1 is the plain BT loss; the minimum over margins sits at logit(p)
  np.testing.assert_allclose(reward_model.soft_bradley_terry_loss(chosen, rejected, 1.0),
                             reward_model.bradley_terry_loss(chosen, rejected), rtol=1e-6)
  grad = jax.grad(lambda x: reward_model.soft_bradley_terry_loss(x, 0.0, 0.8))(
      jnp.float32(np.log(4.0)))
  assert abs(float(grad)) < 1e-6


def test_pointwise_logistic_loss_against_numpy():
  logits = np.array([-3.0, 0.0, 2.0, 40.0, -1e6], np.float32)
  labels = np.array([0.0, 1.0, 1.0, 0.0, 0.3], np.float32)
  x = logits.astype(np.float64)
  want = np.maximum(x, 0) - x * labels + np.log1p(np.exp(-np.abs(x)))
  got = reward_model.pointwise_logistic_loss(logits, labels)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert np.isfinite(np.asarray(jax.grad(
      lambda z: reward_model.pointwise_logistic_loss(z, labels).sum())(logits))).all()


def test_gaussian_losses():
  rng = np.random.default_rng(1)
  samples = rng.normal(1.5, 2.0, size=(4, 64))
  m, s = samples.mean(1), samples.std(1)  # biased std, as the NLL identity needs
  mu, sigma = np.array([1.0, 1.5, 2.0, 0.0]), np.array([2.0, 1.0, 3.0, 0.5])
  direct_nll = np.mean(0.5 * np.log(2 * np.pi * sigma[:, None] ** 2)
                       + (samples - mu[:, None]) ** 2 / (2 * sigma[:, None] ** 2), axis=1)
  np.testing.assert_allclose(reward_model.gaussian_moment_nll(mu, sigma, m, s), direct_nll,
                             rtol=1e-5)
  np.testing.assert_allclose(reward_model.gaussian_regression_loss(mu, sigma, m, s),
                             (mu - m) ** 2 + (sigma - s) ** 2, rtol=1e-5)


# --- a sharded training step -------------------------------------------------------------------

def _pair_batch() -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  prompts = [list(rng.integers(3, 32128, size=rng.integers(2, 9))) for _ in range(8)]
  chosen = [list(rng.integers(3, 32128, size=rng.integers(1, 6))) + [1] for _ in range(8)]
  rejected = [list(rng.integers(3, 32128, size=rng.integers(1, 6))) + [1] for _ in range(8)]
  return {'chosen': reward_model.pack_encoder_input(prompts, chosen, 12)['tokens'],
          'rejected': reward_model.pack_encoder_input(prompts, rejected, 12)['tokens']}


def _train(mesh, steps: int = 3):
  """Three adam steps of BT training under `mesh`; returns (losses, params, sharding report)."""
  # No head bias: BT's loss is blind to it, so its gradient is pure rounding noise, which adam's
  # g/sqrt(v) turns into steps of ±lr that differ between meshes.
  cfg = reward_model.RewardModelConfig(
      encoder=dataclasses.replace(ENCODER, dropout_rate=0.1), head_bias=False)
  model = reward_model.RewardModel(cfg)
  tx = optax.adam(1e-2)
  batch = partitioning.shard_batch(_pair_batch(), mesh)
  init = functools.partial(model.init, tokens_BxL=batch['chosen'])
  abstract = jax.eval_shape(init, jax.random.key(0))
  param_sh = partitioning.logical_shardings(abstract['params'], mesh)
  opt_sh = partitioning.logical_shardings(jax.eval_shape(tx.init, abstract['params']), mesh)

  def loss_fn(params, batch, rng):
    chosen, rejected = reward_model.pair_rewards(
        model, {'params': params}, batch['chosen'], batch['rejected'], deterministic=False,
        rngs={'dropout': rng})
    return jnp.mean(reward_model.bradley_terry_loss(chosen, rejected))

  def train_step(params, opt_state, batch, rng):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch, rng)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  # Same starting point on every mesh: numpy values placed straight into their shardings (as
  # after a checkpoint load); this also keeps flax's per-parameter RNG out of the compile.
  params = jax.device_put(_random_params(abstract['params']), param_sh)
  with partitioning.activate(mesh):
    opt_state = jax.jit(tx.init, out_shardings=opt_sh)(params)
    step = jax.jit(train_step, in_shardings=(param_sh, opt_sh, partitioning.batch_sharding(mesh),
                                             None),
                   out_shardings=(param_sh, opt_sh, partitioning.replicated(mesh)),
                   donate_argnums=(0, 1))
    losses = []
    for i in range(steps):
      params, opt_state, loss = step(params, opt_state, batch, jax.random.key(100 + i))
      losses.append(float(loss))
  return losses, params, partitioning.verify_sharding(params, param_sh, mesh)


def test_training_step_same_on_one_and_eight_devices():
  losses_1, params_1, report_1 = _train(partitioning.create_mesh((1, 1), devices=jax.devices()[:1]))
  losses_8, params_8, report_8 = _train(partitioning.create_mesh((4, 2)))
  assert report_1.num_sharded == 0
  # Same math up to float32 reduction order (dropout masks included): losses to rtol 1e-5,
  # params to rtol 1e-5 + atol 1e-5 = 1e-3 of one adam step (lr 1e-2), since adam's g/sqrt(v)
  # turns rounding in a near-zero gradient into a visible share of a step.
  np.testing.assert_allclose(losses_8, losses_1, rtol=1e-5)
  assert len(set(losses_1)) == 3  # each step saw new params (and new dropout masks)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
                         jax.device_get(params_8), jax.device_get(params_1))
  # The rules table says mlp, heads and vocab go over 'model' (2 devices).
  wi = params_8['encoder']['layers_0']['mlp']['wi_0']['kernel']
  assert wi.sharding.spec == P(None, 'model') and wi.addressable_shards[0].data.shape == (8, 8)
  query = params_8['encoder']['layers_1']['attention']['query']['kernel']
  assert query.addressable_shards[0].data.shape == (8, 6)
  assert params_8['token_embedder']['embedding'].addressable_shards[0].data.shape == (16064, 8)
  assert params_8['encoder']['encoder_norm']['scale'].sharding.is_fully_replicated
  sharded = {p.name for p in report_8.params if p.is_sharded}
  assert len(sharded) == 1 + 1 + 2 * 7  # embedding, relpos, 7 kernels per layer
  assert 'reward_head/kernel' not in sharded


def test_model_gin_files_parse():
  for name in ('models/t5_tiny', 'models/t5_small', 'models/t5_base', 'models/t5_large',
               'models/t5_xl'):
    gin_utils.parse([name])
    cfg = reward_model.RewardModelConfig()
    assert cfg.encoder.num_layers in (2, 8, 12, 24) and cfg.pooling == 'mean'
  gin_utils.parse(['models/t5_tiny'])
  assert reward_model.RewardModelConfig().encoder == ENCODER
  gin.clear_config()


def _tiny_gaussian_config(min_std=1e-3):
  return reward_model.RewardModelConfig(encoder=t5_encoder.T5EncoderConfig(
      vocab_size=32, emb_dim=8, num_heads=2, head_dim=4, mlp_dim=16, num_layers=1),
                                        min_std=min_std)


def test_the_model_keeps_the_std_positive_for_any_parameters():
  with pytest.raises(ValueError, match='min_std > 0'):
    reward_model.GaussianReferenceModel(_tiny_gaussian_config(0.0)).init(jax.random.key(0),
                                                                jnp.ones((1, 4), jnp.int32))
  model = reward_model.GaussianReferenceModel(_tiny_gaussian_config())
  tokens = jnp.ones((2, 4), jnp.int32)
  params = model.init(jax.random.key(0), tokens)['params']
  params['std_head']['bias'] = jnp.full((1,), -1e4)  # softplus underflows to 0
  _, std = model.apply({'params': params}, tokens)
  assert np.all(np.asarray(std) > 0) and np.allclose(std, 1e-3)
