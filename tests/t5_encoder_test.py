"""Tests for lsc_align.models.t5_encoder against an independent numpy T5 v1.1 encoder."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from lsc_align.models import t5_encoder
from lsc_align.models import t5x_checkpoint

CHECKPOINT = 't5x/test_t5_tiny.checkpoint_0'
CONFIG = t5x_checkpoint.TINY_CHECKPOINT_CONFIG
TOKENS = np.array([[37, 5, 912, 7, 1, 0, 0, 0],
                   [8, 31000, 64, 99, 12, 3, 45, 1],
                   [400, 1, 0, 0, 0, 0, 0, 0]], np.int32)


def _bucket_reference(relative_position: int, bidirectional: bool, num_buckets: int,
                      max_distance: int) -> int:
  """T5's bucket formula (mesh_tensorflow) for one position, in plain Python floats."""
  n = -relative_position
  bucket = 0
  if bidirectional:
    num_buckets //= 2
    if n < 0:
      bucket += num_buckets
    n = abs(n)
  else:
    n = max(n, 0)
  max_exact = num_buckets // 2
  if n < max_exact:
    return bucket + n
  large = max_exact + int(math.log(n / max_exact) / math.log(max_distance / max_exact)
                          * (num_buckets - max_exact))
  return bucket + min(large, num_buckets - 1)


@pytest.mark.parametrize('bidirectional', [True, False])
def test_relative_position_bucket_matches_plain_formula(bidirectional):
  relative = np.arange(-300, 301)
  got = t5_encoder.relative_position_bucket(relative, bidirectional, 32, 128)
  want = [_bucket_reference(int(r), bidirectional, 32, 128) for r in relative]
  np.testing.assert_array_equal(got, want)
  if bidirectional:  # a few values by hand: keys to the right go to the upper half
    assert [int(got[300 + r]) for r in (0, -1, 1, -7, -8, -300, 300)] == [0, 1, 17, 7, 8, 15, 31]


def _np_rms_norm(x, scale):
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-6) * scale


def _np_gelu(x):  # tanh approximation, as T5X's nn.gelu
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _np_encoder(p, tokens, cfg):
  """Reference forward pass written from the T5 v1.1 description, float64 numpy."""
  h, d = cfg.num_heads, cfg.head_dim
  batch, length = tokens.shape
  rel = np.array([[_bucket_reference(k - q, True, 32, 128) for k in range(length)]
                  for q in range(length)])
  enc = p['encoder']
  bias = enc['relpos_bias']['rel_embedding'][:, rel][None]  # [1, H, L, L]
  real = tokens > 0
  bias = bias + np.where(real[:, None, :, None] & real[:, None, None, :], 0.0, -1e10)
  x = p['token_embedder']['embedding'][tokens].astype(np.float64)
  for i in range(cfg.num_layers):
    lyr = enc[f'layers_{i}']
    y = _np_rms_norm(x, lyr['pre_attention_layer_norm']['scale'])
    att = lyr['attention']
    q, k, v = (np.einsum('ble,ef->blf', y, att[n]['kernel']).reshape(batch, length, h, d)
               for n in ('query', 'key', 'value'))
    logits = np.einsum('bqhd,bkhd->bhqk', q, k) + bias  # no 1/sqrt(d): it is in the weights
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w = w / w.sum(-1, keepdims=True)
    o = np.einsum('bhqk,bkhd->bqhd', w, v).reshape(batch, length, h * d)
    x = x + o @ att['out']['kernel']
    y = _np_rms_norm(x, lyr['pre_mlp_layer_norm']['scale'])
    mlp = lyr['mlp']
    gated = _np_gelu(y @ mlp['wi_0']['kernel']) * (y @ mlp['wi_1']['kernel'])
    x = x + gated @ mlp['wo']['kernel']
  return _np_rms_norm(x, enc['encoder_norm']['scale'])


@pytest.fixture(scope='module')
def checkpoint_params(shared_data):
  params, _ = t5x_checkpoint.load_encoder_params(shared_data / CHECKPOINT, CONFIG)
  # The checkpoint's norm scales are all 1; perturb them so a wrong norm cannot pass unseen.
  rng = np.random.default_rng(0)
  perturbed = jax.tree_util.tree_map_with_path(
      lambda path, v: v * rng.uniform(0.5, 1.5, v.shape).astype(np.float32)
      if path[-1].key == 'scale' else v, params)
  return perturbed


@pytest.fixture(scope='module')
def encode():
  model = t5_encoder.T5Encoder(CONFIG)
  return jax.jit(lambda p, t: model.apply({'params': p}, t))


def test_forward_matches_numpy_reference(checkpoint_params, encode):
  got = np.asarray(encode(checkpoint_params, TOKENS))
  want = _np_encoder(jax.tree_util.tree_map(np.float64, checkpoint_params), TOKENS, CONFIG)
  real = TOKENS > 0
  assert np.isfinite(got).all()
  np.testing.assert_allclose(got[real], want[real], rtol=1e-4, atol=1e-5)


def test_real_positions_ignore_extra_padding(checkpoint_params, encode):
  short = np.asarray(encode(checkpoint_params, TOKENS))
  long = np.asarray(encode(checkpoint_params, np.pad(TOKENS, ((0, 0), (0, 5)))))
  real = TOKENS > 0
  np.testing.assert_allclose(long[:, :8][real], short[real], rtol=1e-6, atol=1e-6)
  # ... while changing a real token does change the others (attention is live).
  changed = np.asarray(encode(checkpoint_params, np.where(TOKENS == 7, 8, TOKENS)))
  assert np.abs(changed[0, 0] - short[0, 0]).max() > 1e-4


def test_param_tree_has_logical_axes():
  variables = jax.eval_shape(t5_encoder.T5Encoder(CONFIG).init, jax.random.key(0),
                             jnp.ones((1, 4), jnp.int32))
  p = variables['params']
  names = lambda box: tuple(box.names)
  assert names(p['token_embedder']['embedding']) == ('vocab', 'embed')
  assert names(p['encoder']['layers_0']['attention']['query']['kernel']) == ('embed', 'heads')
  assert names(p['encoder']['layers_1']['attention']['out']['kernel']) == ('heads', 'embed')
  assert names(p['encoder']['layers_0']['mlp']['wo']['kernel']) == ('mlp', 'embed')
  assert names(p['encoder']['relpos_bias']['rel_embedding']) == ('heads', 'relpos_buckets')
  assert names(p['encoder']['encoder_norm']['scale']) == ('norm',)
  assert all(v.dtype == jnp.float32 for v in jax.tree_util.tree_leaves(nn.unbox(p)))


def test_query_init_folds_in_head_dim_scaling():
  cfg = t5_encoder.T5EncoderConfig(vocab_size=16, emb_dim=256, num_heads=4, head_dim=64,
                                   mlp_dim=8, num_layers=1)
  init = jax.jit(t5_encoder.T5Encoder(cfg).init)
  p = nn.unbox(init(jax.random.key(1), jnp.ones((1, 2), jnp.int32)))
  att = p['params']['encoder']['layers_0']['attention']
  ratio = np.std(att['query']['kernel']) / np.std(att['key']['kernel'])
  assert abs(ratio - 1 / 8) < 0.01  # 1/sqrt(64)


def test_bfloat16_activations_close_to_float32(checkpoint_params):
  bf16 = t5_encoder.T5Encoder(dataclasses.replace(CONFIG, dtype='bfloat16'))
  out = jax.jit(lambda p, t: bf16.apply({'params': p}, t))(checkpoint_params, TOKENS)
  ref = _np_encoder(jax.tree_util.tree_map(np.float64, checkpoint_params), TOKENS, CONFIG)
  assert out.dtype == jnp.bfloat16
  real = TOKENS > 0
  np.testing.assert_allclose(np.asarray(out, np.float32)[real], ref[real], atol=0.1)


def test_dropout_needs_rng_and_is_reproducible(checkpoint_params):
  model = t5_encoder.T5Encoder(dataclasses.replace(CONFIG, dropout_rate=0.3))
  run = jax.jit(lambda p, t, r: model.apply({'params': p}, t, deterministic=False,
                                            rngs={'dropout': r}))
  a = run(checkpoint_params, TOKENS, jax.random.key(0))
  b = run(checkpoint_params, TOKENS, jax.random.key(0))
  c = run(checkpoint_params, TOKENS, jax.random.key(1))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-3


@pytest.mark.parametrize('field,value', [('num_heads', 0), ('dtype', 'float16'),
                                         ('mlp_activations', ('gelu', 'tanhh')),
                                         ('dropout_rate', 1.0)])
def test_config_rejects_bad_values(field, value):
  with pytest.raises(ValueError, match=field):
    t5_encoder.T5EncoderConfig(**{field: value})
