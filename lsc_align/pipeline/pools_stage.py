"""Stage: π0 sample pools for an experiment directory (layout in lsc_align.pipeline.layout).

`build_pools` samples, once per experiment, everything the alignment methods and the evaluation
read: for RL prompts, m π0 samples' proxy rewards (quantile references) and the canned
refusals' reward; for evaluation prompts, a pool of N π0 samples (best-of-k, the closed-form
optimum) and a separate set of SFT samples (win-rate baseline and the references of the
evaluation prompts), each with proxy rewards, gold judge scores and shortcut flags. Every draw
is keyed by the seed, so a pool is reproducible; each file is written atomically.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np

from lsc_align import io_utils
from lsc_align.conventions import EOS_ID, PAD_ID, PROPERTIES
from lsc_align.world import dataset as world_lib
from lsc_align.world import judge as world_judge
from lsc_align.data import arrays as data_arrays
from lsc_align.rewards.objectives import Objective, ReferenceKind
from lsc_align.pipeline import layout
from lsc_align.pipeline.pool import Pool, Samples, load_pool, save_pool
from lsc_align.align import pool_sampling
from lsc_align.train import reward_model_trainer
from lsc_align.train import sft_trainer


@gin.configurable
@dataclasses.dataclass(frozen=True)
class PoolSizes:
  """How many prompts and samples each pool holds."""
  train_prompts: int = 256        # RL prompts (both prompt mixes)
  train_samples: int = 16         # m π0 samples per RL prompt (quantile references)
  eval_prompts: int = 128         # evaluation prompts (test split, both mixes)
  eval_pool_samples: int = 64     # N π0 samples per evaluation prompt (best-of-k, optimum)
  eval_sft_samples: int = 16      # SFT samples per evaluation prompt (win-rate baseline)
  response_length: int = 40       # tokens per sampled response (incl. EOS)
  temperature: float = 1.0
  chunk: int = 256                # rows per jitted sampling / scoring call


def gold_judgements(judge: Any, prompt_ids: np.ndarray, responses: np.ndarray,
                    chunk: int = 1024) -> dict[str, np.ndarray]:
  """World judge on a pool [P, n, Lr]: gold helpful/harmless and shortcut flags, each [P, n]."""
  p, n, length = responses.shape
  prompts = np.repeat(prompt_ids, n, axis=0)
  flat = responses.reshape(p * n, length)

  @jax.jit
  def judge_chunk(judge, prompts, responses):
    h, s = judge(prompts, responses)
    return h, s, judge.list_formatting(responses), judge.referral(responses)

  parts = []
  for start in range(0, flat.shape[0], chunk):
    parts.append(jax.device_get(judge_chunk(judge, jnp.asarray(prompts[start:start + chunk]),
                                            jnp.asarray(flat[start:start + chunk]))))
  h, s, lists, referrals = (np.concatenate(x) for x in zip(*parts))
  return {'helpful': h.reshape(p, n).astype(np.float32),
          'harmless': s.reshape(p, n).astype(np.float32),
          'list': lists.reshape(p, n).astype(bool),
          'referral': referrals.reshape(p, n).astype(bool)}


@dataclasses.dataclass
class Models:
  """π0 and one proxy reward model per property, as loaded from an experiment directory."""
  policy_config: Any
  policy_params: Any
  reward_configs: dict[str, Any]
  reward_params: dict[str, Any]
  prompt_length: int

  def reward_fn(self, prop: str) -> pool_sampling.RewardFn:
    return pool_sampling.make_reward_fn(self.reward_configs[prop], self.reward_params[prop])


def load_models(exp: layout.ExperimentDirs) -> Models:
  """π0 from EXP/sft and the reward models from EXP/rm_<property>."""
  config, params = sft_trainer.load_policy(exp.sft)
  prompt_length = int(sft_trainer.policy_info(exp.sft)['prompt_length'])
  rcfg, rparams = {}, {}
  for prop in PROPERTIES:
    rcfg[prop], rparams[prop] = reward_model_trainer.load_reward_model(exp.reward_model(prop))
  return Models(config, params, rcfg, rparams, prompt_length)


@dataclasses.dataclass
class RewardModelJudge:
  """A judge for data without gold utilities (HH text): one separately trained reward model per
  property, and the shortcut detectors of lsc_align.eval.shortcuts on the decoded text."""
  reward_fns: dict[str, pool_sampling.RewardFn]
  vocabulary: Any
  chunk: int = 256


Judge = world_judge.GoldJudge | RewardModelJudge


def load_judge(exp: layout.ExperimentDirs) -> Judge | None:
  """The world's gold judge, else the judge reward models EXP/judge_<property> (None if absent)."""
  if exp.is_world:
    return world_judge.build_judge(world_lib.load_config(exp.data))
  if not all(io_utils.exists(os.path.join(exp.judge_model(p), reward_model_trainer.PARAMS_FILE))
             for p in PROPERTIES):
    return None
  fns = {}
  for prop in PROPERTIES:
    config, params = reward_model_trainer.load_reward_model(exp.judge_model(prop))
    fns[prop] = pool_sampling.make_reward_fn(config, params)
  return RewardModelJudge(fns, data_arrays.load_vocabulary(exp.vocabulary))


def prompt_set(data_dir: str, vocabulary: str, split: str, prompt_length: int, num: int | None,
               seed: int, cache_dir: str, lenient: bool = False) -> np.ndarray:
  """`num` distinct prompts of both prompt mixes, a seeded choice (all if fewer or None)."""
  ids = data_arrays.task_arrays(data_dir, vocabulary, 'prompts/all', split,
                                {'prompt': prompt_length}, cache_dir=cache_dir,
                                lenient=lenient)['prompt_ids']
  ids = np.unique(ids, axis=0)
  if num is not None and num < len(ids):
    ids = ids[np.sort(np.random.default_rng(seed).choice(len(ids), num, replace=False))]
  return ids.astype(np.int32)


def decode_responses(vocabulary: Any, responses: np.ndarray) -> list[str]:
  """Text of each response row (up to its first EOS; padding dropped)."""
  out = []
  for row in responses.reshape(-1, responses.shape[-1]):
    ids = [int(t) for t in row]
    if EOS_ID in ids:
      ids = ids[:ids.index(EOS_ID)]
    out.append(vocabulary.decode([t for t in ids if t not in (PAD_ID, EOS_ID)]))
  return out


def judged_samples(judge: Judge | None, models: Models, prompt_ids: np.ndarray,
                   responses: np.ndarray, chunk: int) -> Samples:
  """Responses [P, n, Lr] with every property's proxy reward and, with a judge, its scores and
  shortcut flags."""
  rewards = {prop: pool_sampling.score_pool(models.reward_fn(prop), prompt_ids, responses, chunk)
             for prop in PROPERTIES}  # every property: proxy curves for any objective
  if judge is None:
    return Samples(rewards, responses)
  if isinstance(judge, world_judge.GoldJudge):
    judged = gold_judgements(judge, prompt_ids, responses)
    return Samples(rewards, responses, {p: judged[p] for p in PROPERTIES},
                   {'list': judged['list'], 'referral': judged['referral']})
  from lsc_align.eval import shortcuts  # pylint: disable=g-import-not-at-top
  scores = {p: pool_sampling.score_pool(fn, prompt_ids, responses, judge.chunk)
            for p, fn in judge.reward_fns.items()}
  flags = shortcuts.shortcut_flags(decode_responses(judge.vocabulary, responses))
  return Samples(rewards, responses, scores,
                 {name: flags[name].reshape(responses.shape[:2]) for name in ('list', 'referral')})


def canned_all(models: Models, data_dir: str, vocabulary: str, prompt_ids: np.ndarray,
               chunk: int, properties: Sequence[str] = PROPERTIES) -> dict[str, np.ndarray]:
  """property → the mean reward of the data source's refusal phrases per prompt [N]."""
  return pool_sampling.canned_rewards_of(models.reward_fn, data_dir, vocabulary, prompt_ids,
                                         chunk, properties)


def build_pools(exp_dir: str, sizes: PoolSizes | None = None, seed: int = 0,
                overwrite: bool = False, lenient: bool = False) -> dict[str, str]:
  """Writes EXP/pools/train.npz and EXP/pools/eval.npz (skipped when present); returns paths.

  lenient: skip bad lines of an HH-layout data source instead of failing on the first.
  """
  sizes = sizes or PoolSizes()
  exp = layout.ExperimentDirs(exp_dir)
  data_dir, vocabulary = exp.data, exp.vocabulary
  paths = {'train': exp.pool('train'), 'eval': exp.pool('eval')}
  if not overwrite and all(io_utils.exists(p) for p in paths.values()):
    return paths
  start = time.time()
  models = load_models(exp)
  judge = load_judge(exp)
  cache = exp.array_cache
  rng = jax.random.key(seed)
  lp, lr, chunk = models.prompt_length, sizes.response_length, sizes.chunk

  def sample(prompt_ids, n, stream):
    return pool_sampling.sample_pool(models.policy_params, models.policy_config, prompt_ids, n,
                                  jax.random.fold_in(rng, stream), lr, sizes.temperature, chunk)

  train_prompts = prompt_set(data_dir, vocabulary, 'train', lp, sizes.train_prompts, seed, cache,
                             lenient)
  train_samples = sample(train_prompts, sizes.train_samples, 0)
  train = Pool(train_prompts, samples=Samples({
      prop: pool_sampling.score_pool(models.reward_fn(prop), train_prompts, train_samples, chunk)
      for prop in PROPERTIES}), canned=canned_all(models, data_dir, vocabulary, train_prompts,
                                                  chunk))
  eval_split = 'test' if exp.is_world else data_arrays.validation_split(data_dir)
  eval_prompts = prompt_set(data_dir, vocabulary, eval_split, lp, sizes.eval_prompts, seed + 1,
                            cache, lenient)
  pool = sample(eval_prompts, sizes.eval_pool_samples, 1)
  sft = sample(eval_prompts, sizes.eval_sft_samples, 2)
  evaluation = Pool(eval_prompts,
                    pool=judged_samples(judge, models, eval_prompts, pool, chunk),
                    sft=judged_samples(judge, models, eval_prompts, sft, chunk),
                    canned=canned_all(models, data_dir, vocabulary, eval_prompts, chunk))
  save_pool(paths['train'], train)
  save_pool(paths['eval'], evaluation)
  logging.info('pools written in %.1f s', time.time() - start)
  return paths


def training_prompts(exp: layout.ExperimentDirs, objective: Objective, models: Models,
                     mode: str = 'auto') -> tuple[np.ndarray, Pool | None, str]:
  """(prompt_ids [N, Lp], the training pool they are or None, the mode used) of a learner run.

  mode: 'pool' (the prompts of EXP/pools/train.npz), 'all' (every distinct training prompt) or
  'auto' ('all' for objectives with a Gaussian reference and no quantile one, else 'pool').
  """
  kinds = {spec.kind for spec in objective.references}
  if mode == 'auto':
    mode = ('all' if ReferenceKind.GAUSSIAN in kinds and ReferenceKind.QUANTILE not in kinds
            else 'pool')
  if mode == 'pool':
    train = load_pool(exp, 'train')
    return train.prompt_ids, train, mode
  if mode != 'all':
    raise ValueError(f"run_learner.train_prompts = {mode!r}: must be 'auto', 'pool' or 'all'")
  if ReferenceKind.QUANTILE in kinds:
    raise ValueError(f"run_learner.train_prompts = 'all': objective {objective.name!r} has "
                     'empirical quantile references, which exist only for the pooled prompts; use '
                     "'pool', or Gaussian references")
  prompts = prompt_set(exp.data, exp.vocabulary, 'train', models.prompt_length, None, 0,
                       exp.array_cache)
  return prompts, None, mode
