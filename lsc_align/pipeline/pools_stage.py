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
from typing import Any, Callable, Mapping, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np

from lsc_align import io_utils
from lsc_align.world import dataset as world_lib
from lsc_align.world import judge as world_judge
from lsc_align.data import arrays as data_arrays
from lsc_align.models import policy
from lsc_align.rewards.objectives import DEFAULT_REFUSALS, Objective, ReferenceKind
from lsc_align.pipeline import layout
from lsc_align.align import references
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


def canned_response_texts(data_dir: str) -> tuple[str, ...]:
  """The data source's refusal phrases: the world's own, or the HH defaults."""
  from lsc_align.world import supervision  # pylint: disable=g-import-not-at-top
  return supervision.refusal_phrases(data_dir) or DEFAULT_REFUSALS


def encode_canned(texts: Sequence[str], encode: Any, eos_id: int = policy.EOS_ID,
                  unk_id: int = 2) -> list[np.ndarray]:
  """Token ids of canned responses (with EOS); a text the vocabulary cannot spell is an error."""
  out = []
  for text in texts:
    ids = list(encode(text))
    if not ids or unk_id in ids:
      raise ValueError(f'canned response {text!r} has words outside the vocabulary; give '
                       'canned responses in the data source\'s own words')
    out.append(np.asarray(ids + [eos_id], np.int32))
  return out


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

  def reward_fn(self, prop: str) -> references.RewardFn:
    return references.make_reward_fn(self.reward_configs[prop], self.reward_params[prop])


def load_models(exp: layout.ExperimentDirs) -> Models:
  """π0 from EXP/sft and the reward models from EXP/rm_<property>."""
  config, params = sft_trainer.load_policy(exp.sft)
  prompt_length = int(sft_trainer.policy_info(exp.sft)['prompt_length'])
  rcfg, rparams = {}, {}
  for prop in layout.PROPERTIES:
    rcfg[prop], rparams[prop] = reward_model_trainer.load_reward_model(exp.reward_model(prop))
  return Models(config, params, rcfg, rparams, prompt_length)


@dataclasses.dataclass
class RewardModelJudge:
  """A judge for data without gold utilities (HH text): one separately trained reward model per
  property, and the shortcut detectors of lsc_align.eval.shortcuts on the decoded text."""
  reward_fns: dict[str, references.RewardFn]
  vocabulary: Any
  chunk: int = 256


Judge = world_judge.GoldJudge | RewardModelJudge


def load_judge(exp: layout.ExperimentDirs) -> Judge | None:
  """The world's gold judge, else the judge reward models EXP/judge_<property> (None if absent)."""
  if exp.is_world:
    return world_judge.build_judge(world_lib.load_config(exp.data))
  if not all(io_utils.exists(os.path.join(exp.judge_model(p), reward_model_trainer.PARAMS_FILE))
             for p in layout.PROPERTIES):
    return None
  fns = {}
  for prop in layout.PROPERTIES:
    config, params = reward_model_trainer.load_reward_model(exp.judge_model(prop))
    fns[prop] = references.make_reward_fn(config, params)
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
    if 1 in ids:
      ids = ids[:ids.index(1)]
    out.append(vocabulary.decode([t for t in ids if t > 1]))
  return out


def judge_pool(judge: Judge | None, prompt_ids: np.ndarray,
               responses: np.ndarray) -> dict[str, np.ndarray]:
  """gold_<property> (judge scores) and shortcut flags [P, n] ({} without a judge)."""
  if judge is None:
    return {}
  if isinstance(judge, world_judge.GoldJudge):
    judged = gold_judgements(judge, prompt_ids, responses)
    return {'gold_helpful': judged['helpful'], 'gold_harmless': judged['harmless'],
            'flag_list': judged['list'], 'flag_referral': judged['referral']}
  from lsc_align.eval import shortcuts  # pylint: disable=g-import-not-at-top
  out = {f'gold_{p}': references.score_pool(fn, prompt_ids, responses, judge.chunk)
         for p, fn in judge.reward_fns.items()}
  flags = shortcuts.shortcut_flags(decode_responses(judge.vocabulary, responses))
  for name in ('list', 'referral'):
    out[f'flag_{name}'] = flags[name].reshape(responses.shape[:2])
  return out


def _score_all(models: Models, prompt_ids: np.ndarray, responses: np.ndarray,
               chunk: int) -> dict[str, np.ndarray]:
  return {f'reward_{prop}': references.score_pool(models.reward_fn(prop), prompt_ids, responses,
                                                  chunk)
          for prop in layout.PROPERTIES}


def canned_all(models: Models, data_dir: str, vocabulary: str, prompt_ids: np.ndarray,
               chunk: int, properties: Sequence[str] = layout.PROPERTIES
               ) -> dict[str, np.ndarray]:
  """canned_<property>: the mean reward of the data source's refusal phrases per prompt [N]."""
  vocab = data_arrays.load_vocabulary(vocabulary)
  canned = encode_canned(canned_response_texts(data_dir), vocab.encode)
  return {f'canned_{prop}': references.canned_rewards(models.reward_fn(prop), prompt_ids,
                                                      canned, chunk)
          for prop in properties}


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
  cache = os.path.join(exp_dir, 'pools', 'arrays')
  rng = jax.random.key(seed)
  lp, lr, chunk = models.prompt_length, sizes.response_length, sizes.chunk

  def sample(prompt_ids, n, stream):
    return references.sample_pool(models.policy_params, models.policy_config, prompt_ids, n,
                                  jax.random.fold_in(rng, stream), lr, sizes.temperature, chunk)

  train_prompts = prompt_set(data_dir, vocabulary, 'train', lp, sizes.train_prompts, seed, cache,
                             lenient)
  train_samples = sample(train_prompts, sizes.train_samples, 0)
  train = {'prompt_ids': train_prompts,
           **_score_all(models, train_prompts, train_samples, chunk),
           **canned_all(models, data_dir, vocabulary, train_prompts, chunk)}
  eval_split = 'test' if exp.is_world else data_arrays.validation_split(data_dir)
  eval_prompts = prompt_set(data_dir, vocabulary, eval_split, lp, sizes.eval_prompts, seed + 1,
                            cache, lenient)
  pool = sample(eval_prompts, sizes.eval_pool_samples, 1)
  sft = sample(eval_prompts, sizes.eval_sft_samples, 2)
  evaluation = {'prompt_ids': eval_prompts, 'pool_responses': pool, 'sft_responses': sft}
  for prefix, responses in (('pool_', pool), ('sft_', sft)):
    evaluation.update({f'{prefix}{k}': v for k, v in _score_all(models, eval_prompts, responses,
                                                                chunk).items()})
    evaluation.update({f'{prefix}{k}': v for k, v in judge_pool(judge, eval_prompts,
                                                                responses).items()})
  evaluation.update(canned_all(models, data_dir, vocabulary, eval_prompts, chunk))
  io_utils.atomic_save_npz(paths['train'], train)
  io_utils.atomic_save_npz(paths['eval'], evaluation)
  logging.info('pools written in %.1f s', time.time() - start)
  return paths


def training_prompts(exp: layout.ExperimentDirs, objective: Objective, models: Models,
                     mode: str = 'auto',
                     gaussian_moments: Callable[[np.ndarray], Mapping[str, Any]] | None = None
                     ) -> tuple[np.ndarray, np.ndarray, str]:
  """(prompt_ids [N, Lp], reference table [N, P], the mode used) of a PPO run (run_ppo).

  gaussian_moments: prompt_ids -> property -> (r_mean, r_std), for the objective's Gaussian
  references (one predictor pass per prompt, once; the table then holds them).
  """
  kinds = {spec.kind for spec in objective.references}
  if mode == 'auto':
    mode = ('all' if ReferenceKind.GAUSSIAN in kinds and ReferenceKind.QUANTILE not in kinds
            else 'pool')
  if mode == 'pool':
    train = layout.load_npz(exp.pool('train'))
    moments = gaussian_moments(train['prompt_ids']) if gaussian_moments else None
    return train['prompt_ids'], references.reference_table(
        objective, sample_rewards(train, ''), canned(train), gaussian=moments), mode
  if mode != 'all':
    raise ValueError(f"run_ppo.train_prompts = {mode!r}: must be 'auto', 'pool' or 'all'")
  if ReferenceKind.QUANTILE in kinds:
    raise ValueError(f"run_ppo.train_prompts = 'all': objective {objective.name!r} has empirical "
                     'quantile references, which exist only for the pooled prompts; use '
                     "'pool', or Gaussian references")
  sizes = PoolSizes()
  prompts = prompt_set(exp.data, exp.vocabulary, 'train', models.prompt_length, None, 0,
                       os.path.join(exp.root, 'pools', 'arrays'))
  canned_props = [p for p, spec in zip(objective.properties, objective.references)
                  if spec.kind == ReferenceKind.CANNED]
  canned_refs = canned(canned_all(models, exp.data, exp.vocabulary, prompts, sizes.chunk,
                                  canned_props))
  moments = gaussian_moments(prompts) if gaussian_moments else None
  return prompts, references.reference_table(objective, canned=canned_refs,
                                             num_prompts=prompts.shape[0],
                                             gaussian=moments), mode


def sample_rewards(arrays: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
  """property -> [P, m] proxy rewards of the π0 samples stored under `prefix`reward_<prop>."""
  return {p: arrays[f'{prefix}reward_{p}'] for p in layout.PROPERTIES
          if f'{prefix}reward_{p}' in arrays}


def canned(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {p: arrays[f'canned_{p}'] for p in layout.PROPERTIES if f'canned_{p}' in arrays}
