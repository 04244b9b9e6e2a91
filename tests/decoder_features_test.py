"""The decoder with every family feature on: cache paths agree with the full forward pass.

Grouped-query attention, biases, q/k norms, (1 + w) norms, sandwich norms, GELU, scaled and
tied embeddings, both soft-caps, query_pre_attn_scalar, a sliding layer with its own rope base
and llama3 scaling on the full layer; parameters perturbed so biases and norm scales matter.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsc_align.models import policy
from lsc_align.models import sampling

CONFIG = policy.PolicyConfig(
    vocab_size=32, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=48, num_layers=2, max_len=32,
    value_hidden_dim=16, num_kv_heads=2, qkv_bias=True, out_bias=True, qk_norm=True,
    norm_epsilon=1e-5, norm_scale_plus_one=True, post_norms=True, mlp_activation='gelu_tanh',
    scale_embeddings=True, tie_embeddings=True, attn_logit_softcap=5.0, final_logit_softcap=8.0,
    query_pre_attn_scalar=12.0, sliding_window=3,
    layer_types=('sliding_attention', 'full_attention'), local_rope_max_wavelength=100.0,
    rope_max_wavelength=10_000.0, rope_scaling='llama3', rope_scaling_factor=4.0,
    rope_low_freq_factor=1.0, rope_high_freq_factor=2.0, rope_original_max_len=16)
PROMPTS = np.array([[5, 6, 7, 8, 9, 10], [3, 0, 0, 0, 0, 0], [4, 12, 13, 0, 0, 0],
                    [14, 15, 2, 11, 6, 0]], np.int32)


@functools.lru_cache(maxsize=None)
def _params(config=CONFIG):
  params = jax.jit(policy.init_params, static_argnums=0)(config, jax.random.key(0, impl='rbg'))
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  return jax.tree.unflatten(tree, [x + 0.2 * jax.random.normal(k, x.shape)
                                   for x, k in zip(leaves, keys)])


def test_parameter_tree_has_the_features():
  params = _params()
  attention = params['layers_0']['attention']
  assert attention['key']['kernel'].shape == (32, 2, 8)  # kv heads only
  assert attention['query']['bias'].shape == (4, 8) and attention['out']['bias'].shape == (32,)
  assert set(attention) >= {'query_norm', 'key_norm'}
  assert set(params['layers_1']) >= {'post_attention_norm', 'post_mlp_norm'}
  assert 'logits_dense' not in params  # tied


def test_prefill_and_decode_equal_forward():
  params = _params()
  tokens = np.random.default_rng(0).integers(1, 32, (2, 12)).astype(np.int32)
  logits, values = jax.jit(policy.forward, static_argnums=1)(params, CONFIG, tokens)
  assert np.abs(logits).max() <= CONFIG.final_logit_softcap
  prefix, _, cache = jax.jit(policy.prefill, static_argnums=(1, 3))(params, CONFIG,
                                                                    tokens[:, :2], 12)
  np.testing.assert_allclose(prefix, logits[:, :2], atol=1e-5)
  assert cache[0][0].shape == (2, 2, 12, 8)
  step = jax.jit(policy.decode_step, static_argnums=1)
  for t in range(2, 12):
    step_logits, step_values, cache = step(params, CONFIG, tokens[:, t],
                                           jnp.full((2,), t, jnp.int32), cache)
    np.testing.assert_allclose(step_logits, logits[:, t], atol=1e-5)
    np.testing.assert_allclose(step_values, values[:, t], atol=1e-5)


@pytest.mark.parametrize('pad_id', [0, -1])
def test_cached_sampler_equals_recomputing_sampler(pad_id):
  """Ragged prompts (pad 0), or full-length prompts with no pad id at all (-1)."""
  prompts = PROMPTS if pad_id == 0 else np.where(PROMPTS == 0, 7, PROMPTS)
  kwargs = dict(max_response_length=10, temperature=0.8, pad_id=pad_id, eos_id=-1)
  cached = sampling.sample(_params(), CONFIG, prompts, jax.random.key(2), **kwargs)
  recomputed = sampling.sample_without_cache(_params(), CONFIG, prompts, jax.random.key(2),
                                             **kwargs)
  np.testing.assert_array_equal(cached.response_ids, recomputed.response_ids)
  np.testing.assert_allclose(cached.logprobs, recomputed.logprobs, atol=1e-5)
  assert np.all(cached.response_mask == 1)  # eos -1 never stops
  scores = sampling.response_logprobs(_params(), CONFIG, prompts, cached.response_ids, 0.8,
                                      pad_id=pad_id)
  np.testing.assert_allclose(scores.logprobs, cached.logprobs, atol=1e-5)


def test_sliding_window_limits_what_a_layer_sees():
  """With both layers sliding (window 3), a token 3+ positions back does not matter."""
  config = dataclasses.replace(CONFIG, layer_types=('sliding_attention',) * 2)
  forward = jax.jit(policy.forward, static_argnums=1)
  tokens = np.random.default_rng(3).integers(1, 32, (1, 10)).astype(np.int32)
  changed = tokens.copy()
  changed[0, 2] = (changed[0, 2] + 5) % 32
  base, other = forward(_params(), config, tokens)[0], forward(_params(), config, changed)[0]
  # Two layers of window 3 reach 4 positions back: positions 2..6 change, 7.. do not.
  assert np.abs(base[0, 6] - other[0, 6]).max() > 1e-4
  np.testing.assert_array_equal(base[0, 7:], other[0, 7:])


def test_no_pad_id_responses_that_stop_score_like_the_sampler():
  """pad_id -1: finished rows are filled with -1, and scoring them gives the sampler's log-probs."""
  prompts = np.where(PROMPTS == 0, 7, PROMPTS)
  free = sampling.sample(_params(), CONFIG, prompts, jax.random.key(4), max_response_length=10,
                         temperature=0.8, pad_id=-1, eos_id=-1)
  eos = int(free.response_ids[0, 3])
  out = sampling.sample(_params(), CONFIG, prompts, jax.random.key(4), max_response_length=10,
                        temperature=0.8, pad_id=-1, eos_id=eos)
  ids, mask = np.asarray(out.response_ids), np.asarray(out.response_mask)
  stop = list(np.asarray(free.response_ids[0])).index(eos) + 1  # the same draws up to eos
  np.testing.assert_array_equal(ids[0, :stop], free.response_ids[0, :stop])
  assert mask[0, :stop].all() and not mask[0, stop:].any() and np.all(ids[0, stop:] == -1)
  np.testing.assert_array_equal(mask, (ids != -1).astype(np.int32))
  scores = sampling.response_logprobs(_params(), CONFIG, prompts, out.response_ids, 0.8,
                                      pad_id=-1)
  assert np.isfinite(scores.logprobs).all()
  np.testing.assert_allclose(scores.logprobs, out.logprobs, atol=1e-5)
