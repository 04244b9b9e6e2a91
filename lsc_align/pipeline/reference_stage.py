"""Stage: the reference-reward predictors of an experiment (`lsc-align references`).

For objectives with ('gaussian', q) references, r_ref(x) = r_mean(x) + Φ⁻¹(q)·r_std(x) comes from a
predictor trained once per property (lsc_align.train.reference_trainer), so every training
prompt has a reference at the cost of one forward pass. This stage

1. samples a pool on training prompts: `ReferencePoolSizes.samples` π0 samples (64, as in the
   paper) for each of `ReferencePoolSizes.prompts` prompts, scored by every property's reward
   model → EXP/pools/reference.npz;
2. trains the predictor of each property on it → EXP/ref_<property>/ (skipped if done, resumed if
   started);
3. measures its calibration on the evaluation prompts (test split, never seen by the predictor)
   against the fresh π0 samples of EXP/pools/eval.npz → EXP/ref_<property>/calibration.json,
   beside the same numbers for the empirical quantile of the prompt's SFT samples (what a
   quantile table would use there) and for a constant predictor.

The alignment runs read the predictors through lsc_align.pipeline.reference_tables.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import gin
import jax
import numpy as np

from lsc_align import checkpointing
from lsc_align import io_utils
from lsc_align.conventions import PROPERTIES
from lsc_align.pipeline import layout
from lsc_align.align import pool_sampling
from lsc_align.pipeline import pools_stage
from lsc_align.pipeline import reference_tables
from lsc_align.pipeline.pool import Pool, Samples, load_pool, save_pool
from lsc_align.rewards import reference
from lsc_align.train import loop
from lsc_align.train import reference_trainer

CALIBRATION_FILE = 'calibration.json'
POOL_NAME = 'reference'


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ReferencePoolSizes:
  """The pool the predictors learn from (responses as long as PoolSizes.response_length)."""
  prompts: int = 1024   # training prompts (a seeded choice; all of them if fewer)
  samples: int = 64     # π0 samples per prompt, whose reward mean and std are the targets


def build_reference_pool(exp_dir: str, sizes: ReferencePoolSizes | None = None,
                         seed: int = 0) -> str:
  """Writes EXP/pools/reference.npz (skipped when present): prompt_ids, reward_<property>."""
  sizes = sizes or ReferencePoolSizes()
  exp = layout.ExperimentDirs(exp_dir)
  path = exp.pool(POOL_NAME)
  if io_utils.exists(path):
    return path
  pool_sizes = pools_stage.PoolSizes()
  models = pools_stage.load_models(exp)
  prompts = pools_stage.prompt_set(exp.data, exp.vocabulary, 'train', models.prompt_length,
                                   sizes.prompts, seed + 2, exp.array_cache)
  # Stream 3: the experiment's other pools use streams 0-2 of the same seed.
  responses = pool_sampling.sample_pool(
      models.policy_params, models.policy_config, prompts, sizes.samples,
      jax.random.fold_in(jax.random.key(seed), 3), pool_sizes.response_length,
      pool_sizes.temperature, pool_sizes.chunk)
  save_pool(path, Pool(prompts, samples=Samples({
      prop: pool_sampling.score_pool(models.reward_fn(prop), prompts, responses, pool_sizes.chunk)
      for prop in PROPERTIES})))
  return path


def calibrate(exp: layout.ExperimentDirs, prop: str) -> dict[str, Any]:
  """Calibration of EXP/ref_<prop> on the evaluation prompts; written to calibration.json.

  Fresh samples: the evaluation pool's N π0 samples per prompt. Compared with the empirical
  quantile of the prompt's m SFT samples (another draw from π0; what a reference table built
  with m samples would give) and a constant predictor (the training targets' averages, as the
  trainer's own constant baseline).
  """
  config, params = reference_tables.load_predictor(exp, prop)
  evaluation = load_pool(exp, 'eval')
  samples, sft = evaluation.pool.rewards[prop], evaluation.sft.rewards[prop]
  mean, std = reference_trainer.predict_moments(config, params, evaluation.prompt_ids)
  info = reference_trainer.reference_model_info(exp.reference_model(prop))
  _, pooled = reference_trainer.pool_targets(info['pool_file'], prop, info['samples_per_prompt'])
  train = pooled[:-info['validation_prompts']]  # the rows the predictor was trained on
  result = {
      'property': prop, 'predictor': exp.reference_model(prop),
      'fresh_samples_per_prompt': int(samples.shape[1]),
      'gaussian': reference.calibration(mean, std, samples),
      'empirical': {'samples_per_prompt': int(sft.shape[1]), 'quantiles': [
          reference.quantile_calibration(np.quantile(sft, q, axis=1), q, samples)
          for q in reference.CALIBRATION_QUANTILES]},
      'constant': reference.calibration(np.full_like(mean, train.mean(axis=1).mean()),
                                        np.full_like(std, train.std(axis=1, ddof=1).mean()),
                                        samples),
  }
  io_utils.atomic_write_json(os.path.join(exp.reference_model(prop), CALIBRATION_FILE), result)
  return result


@gin.configurable
def prepare_references(exp_dir: str, properties: Sequence[str] = PROPERTIES,
                       sizes: ReferencePoolSizes | None = None, seed: int = 0,
                       log: Any = print) -> dict[str, dict[str, Any]]:
  """The stage (module docstring) for `properties`; returns property -> calibration."""
  exp = layout.ExperimentDirs(exp_dir)
  unknown = sorted(set(properties) - set(PROPERTIES))
  if unknown:
    raise ValueError(f'prepare_references.properties: unknown {unknown} (known: '
                     f'{list(PROPERTIES)})')
  if not all(io_utils.exists(exp.pool(s)) for s in ('train', 'eval')):
    raise FileNotFoundError(f'{exp.root} has no pools yet: run lsc-align pools --exp_dir '
                            f'{exp.root} first')
  path = exp.pool(POOL_NAME)
  if not io_utils.exists(path):
    log(f'reference pool -> {path}')
  build_reference_pool(exp.root, sizes, seed)
  out = {}
  for prop in properties:
    run_dir = exp.reference_model(prop)
    if not io_utils.exists(os.path.join(run_dir, reference_trainer.PARAMS_FILE)):
      log(f'reference predictor {prop} -> {run_dir}')
      loop.check_completed(reference_trainer.train_reference(
          run_dir=run_dir, pool_file=path, reward_model_dir=exp.reward_model(prop),
          property_name=prop, settings=reference_trainer.configured_settings(seed=seed),
          resume=io_utils.isdir(checkpointing.checkpoint_dir(run_dir))), run_dir)
    calibration_path = os.path.join(run_dir, CALIBRATION_FILE)
    out[prop] = (json.loads(io_utils.read_text(calibration_path))
                 if io_utils.exists(calibration_path) else calibrate(exp, prop))
  return out


def load_calibrations(exp_dir: str) -> list[dict[str, Any]]:
  """The calibration.json of every predictor of an experiment (for the report)."""
  exp = layout.ExperimentDirs(exp_dir)
  out = []
  for prop in PROPERTIES:
    path = os.path.join(exp.reference_model(prop), CALIBRATION_FILE)
    if io_utils.exists(path):
      out.append(json.loads(io_utils.read_text(path)))
  return out
