"""The reference table of any prompts: the one call (`references_for`) that every learner,
best-of-k, the closed-form optimum and the evaluation make for their [P, K] references.

Each column follows its property's ReferenceSpec (the math is lsc_align.rewards.reference):

* quantile: of the pool's samples for the prompt (the evaluation pool: its SFT samples, so the
  reference never sees the samples it ranks); only pooled prompts have them;
* canned: the pool's canned-refusal rewards, or, for prompts outside the pools, the refusals
  scored by the experiment's reward models;
* Gaussian: the experiment's predictor (EXP/ref_<property>, lsc_align.train.reference_trainer)
  on the prompts, refused when trained for another property or another reward model;
* constant / none: the spec's value.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from lsc_align.align import pool_sampling
from lsc_align.pipeline import layout
from lsc_align.pipeline import pools_stage
from lsc_align.pipeline.pool import Pool
from lsc_align.rewards import reference
from lsc_align.rewards.objectives import Objective, ReferenceKind
from lsc_align.train import reference_trainer


def load_predictor(exp: layout.ExperimentDirs, prop: str) -> tuple[Any, Any]:
  """(config, params) of EXP/ref_<prop>, checked to be this experiment's reward model's."""
  run_dir = exp.reference_model(prop)
  try:
    config, params, _ = reference_trainer.load_reference_model(run_dir, prop,
                                                               exp.reward_model(prop))
  except FileNotFoundError as e:
    raise FileNotFoundError(f'a Gaussian reference for {prop!r} needs a trained predictor, and '
                            f'{run_dir} holds none: run lsc-align references --exp_dir '
                            f'{exp.root}') from e
  return config, params


def references_for(exp: layout.ExperimentDirs | None, objective: Objective,
                   prompt_ids: np.ndarray, pool: Pool | None = None,
                   models: pools_stage.Models | None = None) -> np.ndarray:
  """[P, K] references of `prompt_ids` for the objective, one column per property.

  Args:
    exp: the experiment (its predictors and reward models); None when no column needs them.
    objective: which reference each property uses.
    prompt_ids: [P, Lp] the prompts.
    pool: the pool these prompts are (the training pool, or the evaluation pool, whose SFT
      samples give the quantiles); None for prompts outside the pools (no quantile references).
    models: the experiment's loaded models, for canned references outside the pools (loaded
      when needed and not given).
  """
  prompt_ids = np.asarray(prompt_ids)
  kinds = {spec.kind for spec in objective.references}
  if pool is not None and not np.array_equal(pool.prompt_ids, prompt_ids):
    raise ValueError(f'objective {objective.name!r}: the prompts are not the pool\'s '
                     f'({prompt_ids.shape[0]} vs {pool.prompt_ids.shape[0]} prompts)')
  if pool is None and ReferenceKind.QUANTILE in kinds:
    raise ValueError(f'objective {objective.name!r} has empirical quantile references, which '
                     'exist only for the pooled prompts; use the pool\'s prompts, or Gaussian '
                     'references')
  canned_outside = pool is None and ReferenceKind.CANNED in kinds
  if (ReferenceKind.GAUSSIAN in kinds or canned_outside) and exp is None:
    raise ValueError(f'objective {objective.name!r}: its Gaussian or canned references need '
                     'the experiment\'s predictors and reward models (pass exp)')
  samples = pool.reference_samples if pool is not None else None
  sample_rewards = dict(samples.rewards) if samples is not None else {}
  canned = dict(pool.canned) if pool is not None else {}
  if canned_outside:  # the refusals scored on these prompts
    models = models or pools_stage.load_models(exp)
    canned = pool_sampling.canned_rewards_of(
        models.reward_fn, exp.data, exp.vocabulary, prompt_ids, pools_stage.PoolSizes().chunk,
        [p for p, s in zip(objective.properties, objective.references)
         if s.kind == ReferenceKind.CANNED])
  moments = {prop: reference_trainer.predict_moments(*load_predictor(exp, prop), prompt_ids)
             for prop, spec in zip(objective.properties, objective.references)
             if spec.kind == ReferenceKind.GAUSSIAN}
  return reference.reference_table(objective, sample_rewards, canned,
                                   num_prompts=prompt_ids.shape[0], gaussian=moments)
