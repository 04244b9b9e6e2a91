"""Mixed precision (PolicyConfig.dtype = 'bfloat16': bfloat16 matmuls, float32 master weights,
logits, softmaxes and losses) gives the float32 results within stated tolerances.

Tolerances: bfloat16 keeps 8 significant bits (relative rounding 2^-9 ≈ 0.002 per operation), so
per-token log-probs and values may move by a few 0.01 in absolute terms; the losses and statistics
of the PPO update, means over tokens, agree to 1% (measured: < 0.1%); the gradient norm, whose
backward pass runs in bfloat16, to 10% (measured: 6%); the parameter change of three fused
updates points the same way (cosine > 0.95).
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from lsc_align.models import policy, sampling
from lsc_align.align import ppo_step
from lsc_align.train.loop import TrainState

F32 = policy.PolicyConfig(vocab_size=64, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64,
                          num_layers=2, max_len=24, value_hidden_dim=16)
BF16 = dataclasses.replace(F32, dtype='bfloat16')
HP = ppo_step.PPOHyperparams(policy_lr=1e-3, value_lr=1e-3, warmup_steps=1, epochs=2,
                             num_minibatches=2, max_response_length=8)
_scores = jax.jit(sampling.response_logprobs, static_argnums=1)


def _data():
  rng = np.random.default_rng(0)
  prompts = rng.integers(2, 64, size=(16, 6)).astype(np.int32)
  prompts[::2, 4:] = 0
  responses = rng.integers(2, 64, size=(16, 8)).astype(np.int32)
  responses[3, 5:] = 0
  return prompts, responses, rng.normal(size=responses.shape).astype(np.float32)


def test_bfloat16_scores_match_float32():
  params = policy.init_params(F32, jax.random.key(0))
  prompts, responses, _ = _data()
  s32, s16 = _scores(params, F32, prompts, responses), _scores(params, BF16, prompts, responses)
  assert s16.logprobs.dtype == s16.values.dtype == jnp.float32
  for field in ('logprobs', 'values', 'entropy'):
    np.testing.assert_allclose(getattr(s16, field), getattr(s32, field), atol=0.05, err_msg=field)
  # bfloat16 does change the numbers (the option is not a no-op).
  assert np.max(np.abs(np.asarray(s16.logprobs) - np.asarray(s32.logprobs))) > 1e-4


def test_bfloat16_updates_match_float32():
  params = policy.init_params(F32, jax.random.key(0))
  prompts, responses, noise = _data()
  s = _scores(params, F32, prompts, responses)
  advantages = jnp.asarray(noise) * s.response_mask
  rollout = ppo_step.Rollout(jnp.asarray(prompts), jnp.asarray(responses), s.response_mask,
                             s.logprobs, s.values, advantages, advantages)
  results = {}
  for config in (F32, BF16):
    state = TrainState.create(jax.tree.map(jnp.copy, params), ppo_step.make_optimizer(HP, params),
                              jax.random.key(1))
    for _ in range(3):
      state, stats = ppo_step.update_epochs(state, config, HP, rollout, jax.random.key(2))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
    results[config.dtype] = (state.params, jax.device_get(stats))
  (p32, st32), (p16, st16) = results['float32'], results['bfloat16']
  for key in ('loss', 'policy_loss', 'value_loss', 'entropy'):
    np.testing.assert_allclose(st16[key], st32[key], rtol=0.01, err_msg=key)
  np.testing.assert_allclose(st16['grad_norm'], st32['grad_norm'], rtol=0.1)
  delta = lambda p: np.concatenate([np.ravel(a - b) for a, b in zip(jax.tree.leaves(p),
                                                                     jax.tree.leaves(params))])
  d32, d16 = delta(p32), delta(p16)
  cosine = float(d32 @ d16 / (np.linalg.norm(d32) * np.linalg.norm(d16)))
  assert cosine > 0.95, cosine
