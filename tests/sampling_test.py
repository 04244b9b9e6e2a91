"""Tests for lsc_align.models.sampling: KV-cache sampler, no-cache oracle, response_logprobs."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsc_align import partitioning
from lsc_align.models import policy
from lsc_align.models import sampling

# Vocabulary of 16: with random weights EOS (1 of 15 non-pad tokens) ends many responses early.
CONFIG = policy.PolicyConfig(vocab_size=16, emb_dim=32, num_heads=2, head_dim=8, mlp_dim=64,
                             num_layers=2, max_len=32, value_hidden_dim=16)
PROMPTS = np.array([[5, 6, 7, 8, 9, 10],
                    [3, 0, 0, 0, 0, 0],
                    [4, 12, 13, 0, 0, 0],
                    [14, 15, 2, 11, 6, 0],
                    [7, 7, 0, 0, 0, 0],
                    [9, 3, 4, 5, 0, 0],
                    [2, 0, 0, 0, 0, 0],
                    [15, 14, 13, 12, 11, 10]], np.int32)
LENGTHS = [6, 1, 3, 5, 2, 4, 1, 6]
RESPONSE_LEN = 10
# One temperature != 1 throughout, so scaling is exercised and few programs are compiled.
TEMPERATURE = 0.7
REFERENCE_LEN = 16  # unpadded single-row references are right-padded to this (one compile)
_response_logprobs = jax.jit(sampling.response_logprobs, static_argnums=1)
_forward = jax.jit(policy.forward, static_argnums=1)


@functools.lru_cache(maxsize=None)
def _params():
  # An 'rbg' key: XLA compiles its initialisers about twice as fast as threefry's on CPU.
  return jax.jit(policy.init_params, static_argnums=0)(CONFIG, jax.random.key(0, impl='rbg'))


@pytest.fixture(scope='module')
def params():
  return _params()


@functools.lru_cache(maxsize=None)
def _sampled(seed=0):
  return sampling.sample(_params(), CONFIG, PROMPTS, jax.random.key(seed),
                         max_response_length=RESPONSE_LEN, temperature=TEMPERATURE)


def _reference_forward(params, tokens):
  """Logits [len, V] and values [len] of one unpadded sequence (padded on the right to a fixed
  length: by causality that changes nothing before it)."""
  padded = np.zeros((1, REFERENCE_LEN), np.int32)
  padded[0, :len(tokens)] = tokens
  logits, values = _forward(params, CONFIG, padded)
  return np.array(logits[0, :len(tokens)]), np.array(values[0, :len(tokens)])


def _log_softmax_np(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_output_shapes_and_determinism():
  out = _sampled()
  assert out.response_ids.shape == out.logprobs.shape == (len(PROMPTS), RESPONSE_LEN)
  assert out.response_mask.shape == out.values.shape == (len(PROMPTS), RESPONSE_LEN)
  assert out.response_ids.dtype == out.response_mask.dtype == jnp.int32
  again = sampling.sample(_params(), CONFIG, PROMPTS, jax.random.key(0),
                          max_response_length=RESPONSE_LEN, temperature=TEMPERATURE)
  jax.tree.map(np.testing.assert_array_equal, again, out)
  other = _sampled(seed=1)
  assert not np.array_equal(other.response_ids, out.response_ids)


def test_cache_and_no_cache_samplers_agree(params):
  cached = _sampled()
  uncached = sampling.sample_without_cache(params, CONFIG, PROMPTS, jax.random.key(0),
                                           max_response_length=RESPONSE_LEN,
                                           temperature=TEMPERATURE)
  np.testing.assert_array_equal(uncached.response_ids, cached.response_ids)
  np.testing.assert_array_equal(uncached.response_mask, cached.response_mask)
  np.testing.assert_allclose(uncached.logprobs, cached.logprobs, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(uncached.values, cached.values, rtol=1e-5, atol=1e-6)


def test_sampler_logprobs_equal_response_logprobs(params):
  out = _sampled()
  scores = _response_logprobs(params, CONFIG, PROMPTS, out.response_ids, TEMPERATURE)
  np.testing.assert_array_equal(scores.response_mask, out.response_mask)
  np.testing.assert_allclose(scores.logprobs, out.logprobs, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(scores.values, out.values, rtol=1e-5, atol=1e-6)


def test_eos_handling():
  out = jax.device_get(_sampled())
  ids, mask = out.response_ids, out.response_mask
  ended_early = 0
  for row in range(len(PROMPTS)):
    eos_at = np.flatnonzero(ids[row] == policy.EOS_ID)
    end = eos_at[0] + 1 if eos_at.size else RESPONSE_LEN
    ended_early += end < RESPONSE_LEN
    assert np.all(ids[row, :end] != policy.PAD_ID)  # pad is never sampled
    assert np.all(ids[row, end:] == policy.PAD_ID)  # nothing but pad after EOS
    np.testing.assert_array_equal(mask[row], np.arange(RESPONSE_LEN) < end)
    assert np.all(out.logprobs[row, end:] == 0) and np.all(out.values[row, end:] == 0)
    assert np.all(out.logprobs[row, :end] < 0)
  assert ended_early >= 2  # the test exercises EOS in the middle of a response


def test_each_prompt_alone_gives_the_same_sample(params):
  """Alone = a batch of one, padded differently (to 8 columns), with that row's key."""
  batch = _sampled()
  row_keys = jax.random.split(jax.random.key(0), len(PROMPTS))
  for row, length in enumerate(LENGTHS):
    prompt = np.zeros((1, 8), np.int32)
    prompt[0, :length] = PROMPTS[row, :length]
    alone = sampling.sample(params, CONFIG, prompt, row_keys[row:row + 1],
                            max_response_length=RESPONSE_LEN, temperature=TEMPERATURE)
    np.testing.assert_array_equal(alone.response_ids[0], batch.response_ids[row])
    np.testing.assert_allclose(alone.logprobs[0], batch.logprobs[row], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(alone.values[0], batch.values[row], rtol=1e-5, atol=1e-6)


def _greedy_reference(params, prompt, steps):
  """Greedy decoding of one unpadded prompt with full forward passes and numpy argmax."""
  tokens = list(prompt)
  response = []
  for _ in range(steps):
    logits = _reference_forward(params, tokens)[0][-1]
    logits[policy.PAD_ID] = -np.inf
    response.append(int(np.argmax(logits)))
    if response[-1] == policy.EOS_ID:
      break
    tokens.append(response[-1])
  return response + [0] * (steps - len(response))


def test_low_temperature_approaches_greedy(params):
  greedy = sampling.sample(params, CONFIG, PROMPTS, jax.random.key(3), temperature=0.0,
                           max_response_length=RESPONSE_LEN)
  cold = sampling.sample(params, CONFIG, PROMPTS, jax.random.key(3), temperature=1e-4,
                         max_response_length=RESPONSE_LEN)
  np.testing.assert_array_equal(cold.response_ids, greedy.response_ids)
  for row, length in enumerate(LENGTHS):
    np.testing.assert_array_equal(greedy.response_ids[row],
                                  _greedy_reference(params, PROMPTS[row, :length], RESPONSE_LEN))
  np.testing.assert_allclose(cold.logprobs, 0.0, atol=1e-3)  # near-certain tokens at T -> 0


def test_first_token_frequencies_match_the_tempered_distribution(params):
  prompts = np.tile(PROMPTS[2:3], (4000, 1))
  out = sampling.sample(params, CONFIG, prompts, jax.random.key(5), temperature=TEMPERATURE,
                        max_response_length=1)
  logits = _reference_forward(params, PROMPTS[2, :3])[0][-1] / TEMPERATURE
  logits[policy.PAD_ID] = -np.inf
  probs = np.exp(_log_softmax_np(logits))
  freqs = np.bincount(np.asarray(out.response_ids[:, 0]), minlength=CONFIG.vocab_size) / 4000
  np.testing.assert_allclose(freqs, probs, atol=4 * np.sqrt(probs.max() / 4000) + 1e-3)
  np.testing.assert_allclose(out.logprobs[:, 0], np.log(probs[out.response_ids[:, 0]]),
                             rtol=1e-5)


def test_response_logprobs_against_numpy(params):
  responses = np.zeros((len(PROMPTS), RESPONSE_LEN), np.int32)
  responses[:4, :4] = [[9, 4, 1, 0], [2, 2, 2, 2], [1, 0, 0, 0], [7, 8, 1, 0]]
  responses[4:] = np.random.default_rng(0).integers(2, CONFIG.vocab_size, (4, RESPONSE_LEN))
  scores = _response_logprobs(params, CONFIG, PROMPTS, responses, TEMPERATURE)
  for row, length in enumerate(LENGTHS):
    response = [t for t in responses[row] if t]
    logits, values = _reference_forward(params, list(PROMPTS[row, :length]) + response)
    logits = np.asarray(logits[length - 1:-1], np.float64) / TEMPERATURE
    logits[:, policy.PAD_ID] = -np.inf
    log_probs = _log_softmax_np(logits)
    n = len(response)
    expected_entropy = -np.sum(np.exp(log_probs) * np.where(np.isinf(log_probs), 0, log_probs), -1)
    np.testing.assert_allclose(scores.logprobs[row, :n], log_probs[np.arange(n), response],
                               rtol=1e-5)
    np.testing.assert_allclose(scores.entropy[row, :n], expected_entropy, rtol=1e-5)
    np.testing.assert_allclose(scores.values[row, :n], values[length - 1:-1], rtol=1e-5,
                               atol=1e-6)
    assert np.all(scores.logprobs[row, n:] == 0) and np.all(scores.entropy[row, n:] == 0)
    np.testing.assert_array_equal(scores.response_mask[row], np.arange(RESPONSE_LEN) < n)


def test_bad_shapes_raise(params):
  with pytest.raises(ValueError, match='max_len'):
    sampling.sample(params, CONFIG, PROMPTS, jax.random.key(0), max_response_length=30)
  with pytest.raises(ValueError, match='row keys'):
    sampling.sample(params, CONFIG, PROMPTS, jax.random.split(jax.random.key(0), 3),
                    max_response_length=4)


def test_sharded_sampling_matches_one_device(params):
  """On a (4, 2) mesh with sharded params and batch, the samples are those of one device."""
  mesh = partitioning.create_mesh((4, 2))
  shardings = partitioning.logical_shardings(policy.abstract_params(CONFIG), mesh)
  with partitioning.activate(mesh):
    sharded_params = jax.device_put(params, shardings)
    prompts = partitioning.shard_batch({'prompt_ids': PROMPTS}, mesh)['prompt_ids']
    # Traced again inside the mesh context (the mesh is part of jit's cache key), so the
    # logical activation constraints take effect.
    out = sampling.sample(sharded_params, CONFIG, prompts, jax.random.key(0),
                          max_response_length=RESPONSE_LEN, temperature=TEMPERATURE)
  expected = _sampled()
  np.testing.assert_array_equal(out.response_ids, expected.response_ids)
  np.testing.assert_allclose(out.logprobs, expected.logprobs, rtol=1e-5, atol=1e-6)
  assert out.response_ids.sharding.spec[0] == 'data'
