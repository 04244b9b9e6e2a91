"""Sampling and scoring π0 pools: responses for a prompt set, their rewards, canned responses'.

What the pools (lsc_align.pipeline.pools_stage), the reference predictors' pool and the final
evaluation of a policy sample and score. Sampling and scoring run in fixed-size jitted chunks,
so one compile serves every prompt set.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lsc_align.conventions import EOS_ID, UNK_ID
from lsc_align.data import arrays as data_arrays
from lsc_align.models import policy, reward_model, sampling
from lsc_align.rewards import reference
from lsc_align.rewards.objectives import DEFAULT_REFUSALS

RewardFn = Callable[[jax.Array, jax.Array], jax.Array]  # (prompt_ids, response_ids) -> [B]


def make_reward_fn(config: reward_model.RewardModelConfig, params: Any) -> RewardFn:
  """A jitted r(x, y) on token ids, packed as the policy sees them (prompt, then response)."""
  @jax.jit
  def reward_fn(params, prompt_ids, response_ids):
    tokens, _ = policy.pack_prompt_response(prompt_ids, response_ids)
    return reward_model.RewardModel(config).apply({'params': params}, tokens)
  return functools.partial(reward_fn, params)


def chunks(num_rows: int, chunk: int):
  for start in range(0, num_rows, chunk):
    yield start, min(start + chunk, num_rows)


def pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
  if x.shape[0] == rows:
    return x
  return np.concatenate([x, np.repeat(x[:1], rows - x.shape[0], axis=0)])


def sample_pool(params: Any, config: policy.PolicyConfig, prompt_ids: np.ndarray,
                num_samples: int, rng: jax.Array, max_response_length: int,
                temperature: float = 1.0, chunk: int = 256) -> np.ndarray:
  """num_samples responses per prompt from a policy: [N, num_samples, Lr] token ids.

  Row (i, j) uses the key fold_in(rng, i * num_samples + j), so the pool does not depend on
  the chunk size and the first k samples of a larger pool equal a pool of k.
  """
  n = prompt_ids.shape[0]
  tiled = np.repeat(np.asarray(prompt_ids, np.int32), num_samples, axis=0)
  row_keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(tiled.shape[0]))
  out = []
  for start, stop in chunks(tiled.shape[0], chunk):
    keys = row_keys[start:stop]
    if stop - start < chunk:
      keys = jnp.concatenate([keys, jnp.repeat(keys[:1], chunk - (stop - start), axis=0)])
    s = sampling.sample(params, config, jnp.asarray(pad_rows(tiled[start:stop], chunk)), keys,
                        max_response_length=max_response_length, temperature=temperature)
    out.append(np.asarray(s.response_ids)[:stop - start])
  return np.concatenate(out).reshape(n, num_samples, max_response_length)


def score_pool(reward_fn: RewardFn, prompt_ids: np.ndarray, responses: np.ndarray,
               chunk: int = 256) -> np.ndarray:
  """r(x_i, y_ij) for a pool [N, m, Lr]: [N, m] float32."""
  n, m, _ = responses.shape
  prompts = np.repeat(np.asarray(prompt_ids, np.int32), m, axis=0)
  flat = responses.reshape(n * m, -1)
  out = []
  for start, stop in chunks(flat.shape[0], chunk):
    r = reward_fn(jnp.asarray(pad_rows(prompts[start:stop], chunk)),
                  jnp.asarray(pad_rows(flat[start:stop], chunk)))
    out.append(np.asarray(r)[:stop - start])
  scores = np.concatenate(out).reshape(n, m).astype(np.float32)
  if not np.all(np.isfinite(scores)):
    i, j = np.argwhere(~np.isfinite(scores))[0]
    raise ValueError(f'reward model returned a non-finite reward for prompt {i}, sample {j}')
  return scores


def canned_rewards(reward_fn: RewardFn, prompt_ids: np.ndarray,
                   canned_ids: Sequence[np.ndarray], chunk: int = 256) -> np.ndarray:
  """Mean reward of the canned responses for each prompt: [N]."""
  def score_one(prompts, response):
    tiled = np.broadcast_to(response, (prompts.shape[0], response.shape[0]))
    return score_pool(reward_fn, prompts, tiled[:, None, :].copy(), chunk)[:, 0]
  return np.asarray(reference.canned_reference(score_one, np.asarray(prompt_ids),
                                               [np.asarray(c, np.int32) for c in canned_ids]))


def canned_response_texts(data_dir: str) -> tuple[str, ...]:
  """The data source's refusal phrases: the world's own, or the HH defaults."""
  from lsc_align.world import supervision  # pylint: disable=g-import-not-at-top
  return supervision.refusal_phrases(data_dir) or DEFAULT_REFUSALS


def encode_canned(texts: Sequence[str], encode: Any, eos_id: int = EOS_ID,
                  unk_id: int = UNK_ID) -> list[np.ndarray]:
  """Token ids of canned responses (with EOS); a text the vocabulary cannot spell is an error."""
  out = []
  for text in texts:
    ids = list(encode(text))
    if not ids or unk_id in ids:
      raise ValueError(f'canned response {text!r} has words outside the vocabulary; give '
                       'canned responses in the data source\'s own words')
    out.append(np.asarray(ids + [eos_id], np.int32))
  return out


def canned_rewards_of(reward_fn_of: Callable[[str], RewardFn], data_dir: str, vocabulary: str,
                      prompt_ids: np.ndarray, chunk: int,
                      properties: Sequence[str]) -> dict[str, np.ndarray]:
  """property → the mean reward of the data source's refusal phrases per prompt [N]."""
  vocab = data_arrays.load_vocabulary(vocabulary)
  canned = encode_canned(canned_response_texts(data_dir), vocab.encode)
  return {prop: canned_rewards(reward_fn_of(prop), prompt_ids, canned, chunk)
          for prop in properties}
