"""Per-prompt reference rewards for a whole prompt set, from π0 samples or canned responses.

The table [num_prompts, num_properties] is computed once before PPO / best-of-k and looked up
per batch inside the scoring step (docs/DESIGN.md §2). Sampling and scoring run in fixed-size jitted
chunks, so one compile serves every prompt set.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lsc_align.models import policy, reward_model, sampling
from lsc_align.rewards import reference
from lsc_align.rewards.objectives import Objective, ReferenceKind

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


def reference_table(objective: Objective, sample_rewards: Mapping[str, np.ndarray] | None = None,
                    canned: Mapping[str, np.ndarray] | None = None,
                    num_prompts: int | None = None,
                    gaussian: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None
                    ) -> np.ndarray:
  """[N, P] references, one column per objective property, from its ReferenceSpec.

  Args:
    objective: which reference each property uses.
    sample_rewards: property → [N, m] rewards of π0 samples (quantile references).
    canned: property → [N] mean reward of canned responses (canned references).
    num_prompts: N, needed when no column comes from data (constant / none only).
    gaussian: property → (r_mean, r_std) [N] from its predictor (Gaussian references). Without
      it a Gaussian column is 0, for a scoring step that evaluates the predictor itself.
  """
  sample_rewards, canned = dict(sample_rewards or {}), dict(canned or {})
  gaussian = dict(gaussian or {})
  sizes = {v.shape[0] for v in list(sample_rewards.values()) + list(canned.values())}
  sizes |= {m.shape[0] for m, _ in gaussian.values()}
  if num_prompts is not None:
    sizes.add(num_prompts)
  if len(sizes) != 1:
    raise ValueError(f'reference inputs disagree on the number of prompts: {sorted(sizes)}')
  n = sizes.pop()
  columns = []
  for prop, spec in zip(objective.properties, objective.references):
    if spec.kind == ReferenceKind.QUANTILE:
      if prop not in sample_rewards:
        raise ValueError(f'objective {objective.name!r}: {prop!r} needs π0 sample rewards for '
                         f'its quantile-{spec.quantile} reference')
      columns.append(np.asarray(reference.empirical_quantile(sample_rewards[prop],
                                                             spec.quantile)))
    elif spec.kind == ReferenceKind.CANNED:
      if prop not in canned:
        raise ValueError(f'objective {objective.name!r}: {prop!r} needs canned-response rewards')
      columns.append(np.asarray(canned[prop]))
    elif spec.kind == ReferenceKind.GAUSSIAN and prop in gaussian:
      columns.append(np.asarray(reference.gaussian_reference(*gaussian[prop], spec.quantile)))
    elif spec.kind == ReferenceKind.CONSTANT:
      columns.append(np.full((n,), spec.value, np.float32))
    else:  # NONE (raw, pointwise), or GAUSSIAN evaluated in the scoring step
      columns.append(np.zeros((n,), np.float32))
  return np.stack(columns, axis=-1).astype(np.float32)
