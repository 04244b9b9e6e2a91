"""Stage: alignment runs on an experiment's pools, each evaluated against the gold judge.

* `run_best_of_k`: for each k, per evaluation prompt the highest-utility of the first k pooled
  π0 samples (one pool reused across k); KL log k − (k−1)/k (docs/DESIGN.md §1).
* `run_optimum`: the closed-form KL-regularised optimum on the same pool, weights ∝ exp(u/γ).
* `run_learner`: a policy learner (PPO or RLOO, lsc_align.align.learners) with checkpoints,
  exact resume, metrics and periodic samples; then fresh samples of the final π on the evaluation prompts, judged.

Every run writes EXP/runs/<name>/eval_results.json(l), read by `lsc-align report`. Utilities on
evaluation prompts use references from that prompt's own SFT samples and canned responses, so
the reference never sees the samples it ranks.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Mapping, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np

from lsc_align import checkpointing
from lsc_align import io_utils
from lsc_align import partitioning
from lsc_align.conventions import EOS_ID, PAD_ID, PROPERTIES
from lsc_align.eval import evaluate as evaluate_lib
from lsc_align.eval import results as results_lib
from lsc_align.models import sampling
from lsc_align.pipeline import pools_stage
from lsc_align.pipeline import reference_tables
from lsc_align.pipeline.pool import Pool, Samples, load_pool
from lsc_align.rewards import aggregate
from lsc_align.rewards.objectives import Objective
from lsc_align.align import best_of_k, optimum, ppo, ppo_math, ppo_step, scoring_step
from lsc_align.pipeline import layout
from lsc_align.train import loop
from lsc_align.align import convergence as convergence_lib
from lsc_align.align import critic, learners, optimum_checks, pool_sampling
from lsc_align.train import trainer
from lsc_align.train import trainer_utils

RESULTS_FILE = 'eval_results.json'
SAMPLES_FILE = 'samples.jsonl'


def eval_utilities(exp: layout.ExperimentDirs | None, objective: Objective,
                   evaluation: Pool) -> np.ndarray:
  """u of every sample of the evaluation pool [P, N], against the evaluation prompts' references
  (their SFT samples' quantiles, canned responses or predictors)."""
  refs = reference_tables.references_for(exp, objective, evaluation.prompt_ids, evaluation)
  return aggregate.pool_utilities(objective, evaluation.pool.rewards, refs)


def _judged(samples: Samples) -> dict[str, Any]:
  """Gold scores, shortcut flags and proxy rewards of judged samples, keyed for `evaluate`."""
  if not samples.judged:
    raise ValueError('evaluation needs a judge: the pools were built without the world\'s gold '
                     'utilities or judge reward models (EXP/judge_<property>; prepare trains '
                     'them for data without gold)')
  return {'judge': {p: samples.judge[p] for p in PROPERTIES}, 'flags': dict(samples.flags),
          'proxy': dict(samples.rewards)}


def _write_results(run_dir: str, results: Sequence[results_lib.RunResult]) -> str:
  path = os.path.join(run_dir, RESULTS_FILE + ('l' if len(results) > 1 else ''))
  if len(results) == 1:
    io_utils.atomic_write_json(path, results[0].to_json())
  else:
    io_utils.atomic_write_text(path, ''.join(json.dumps(r.to_json()) + '\n' for r in results))
  return path


def _take(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
  return x[np.arange(x.shape[0]), idx][:, None]


@gin.configurable
def run_best_of_k(exp_dir: str, objective: Objective = gin.REQUIRED,
                  ks: Sequence[int] = (1, 2, 4, 8, 16, 32, 64), seed: int = 0,
                  name: str | None = None) -> list[results_lib.RunResult]:
  """Best-of-k for each k on the evaluation pool; writes EXP/runs/bok_<objective>/."""
  exp = layout.ExperimentDirs(exp_dir)
  evaluation = load_pool(exp, 'eval')
  n = evaluation.pool.responses.shape[1]
  if max(ks) > n or min(ks) < 1:
    raise ValueError(f'run_best_of_k.ks = {list(ks)}: each k must be in [1, {n}] (pool size)')
  u = eval_utilities(exp, objective, evaluation)
  judged = _judged(evaluation.pool)
  run = name or f'bok_{objective.name}'
  out = []
  for row in best_of_k.best_of_k_sweep(u, ks):
    idx = row['selected']
    pick = lambda d, idx=idx: {key: _take(v, idx) for key, v in d.items()}
    out.append(evaluate_lib.evaluate(
        run=f'{run}_k{row["k"]}', method='bok', objective=objective.name,
        transform=objective.transform.value, seed=seed, k=int(row['k']),
        policy_judge=pick(judged['judge']), sft_judge=_judged(evaluation.sft)['judge'],
        kl_per_prompt=np.full(u.shape[0], row['kl']), shortcut_flags=pick(judged['flags']),
        proxy_rewards=pick(judged['proxy']),
        extra={'utility': float(np.mean(_take(u, idx)))}))
  _write_results(exp.run(run), out)
  return out


@gin.configurable
def run_optimum(exp_dir: str, objective: Objective = gin.REQUIRED,
                kl_coefs: Sequence[float] = (0.03, 0.1, 0.3, 1.0), seed: int = 0,
                name: str | None = None) -> list[results_lib.RunResult]:
  """The closed-form optimum at each γ on the evaluation pool; writes EXP/runs/optimum_<obj>/."""
  exp = layout.ExperimentDirs(exp_dir)
  evaluation = load_pool(exp, 'eval')
  u = eval_utilities(exp, objective, evaluation)
  judged = _judged(evaluation.pool)
  run = name or f'optimum_{objective.name}'
  out = []
  for kl_coef in kl_coefs:
    w = np.asarray(optimum.optimal_weights(u, kl_coef), np.float64)
    objective_value = float(np.mean(optimum.optimum_objective(u, kl_coef)))
    out.append(evaluate_lib.evaluate(
        run=f'{run}_g{kl_coef:g}', method='optimum', objective=objective.name,
        transform=objective.transform.value, seed=seed, gamma=float(kl_coef),
        policy_judge=judged['judge'], sft_judge=_judged(evaluation.sft)['judge'],
        kl_per_prompt=np.asarray(optimum.optimum_kl(u, kl_coef)),
        shortcut_flags=judged['flags'],
        proxy_rewards=judged['proxy'], sample_weights=w,
        extra={'objective_value': objective_value, 'utility': float(np.sum(w * u, 1).mean())}))
  _write_results(exp.run(run), out)
  return out


@gin.configurable
@dataclasses.dataclass(frozen=True)
class PPOEval:
  """Evaluation of a trained π on the evaluation prompts."""
  samples_per_prompt: int = 4
  batch_size: int = 256


def kl_per_prompt(params: Any, ref_params: Any, config: Any, prompts: np.ndarray,
                   responses: np.ndarray, temperature: float, chunk: int) -> np.ndarray:
  """Mean over a prompt's samples of Σ_t log π − log π0: [P] (a sample estimate of the KL)."""
  p, n, length = responses.shape
  tiled, flat = np.repeat(prompts, n, axis=0), responses.reshape(p * n, length)

  @jax.jit
  def seq_kl(x, y):
    pi = sampling.response_logprobs(params, config, x, y, temperature)
    pi0 = sampling.response_logprobs(ref_params, config, x, y, temperature)
    return jnp.sum((pi.logprobs - pi0.logprobs) * pi.response_mask, axis=-1)

  out = [np.asarray(seq_kl(jnp.asarray(pool_sampling.pad_rows(tiled[s:e], chunk)),
                           jnp.asarray(pool_sampling.pad_rows(flat[s:e], chunk))))[:e - s]
         for s, e in pool_sampling.chunks(p * n, chunk)]
  return np.concatenate(out).reshape(p, n).mean(axis=1)


def _text(vocab: Any, ids: np.ndarray) -> str:
  """The words of a row of token ids (padding and EOS dropped)."""
  return vocab.decode([int(i) for i in ids if i not in (PAD_ID, EOS_ID)])


def learner_run_name(objective: Objective, kl_coef: float, seed: int,
                     learner: str = 'ppo') -> str:
  return f'{learner}_{objective.name}_g{kl_coef:g}_s{seed}'


@gin.configurable
def run_learner(exp_dir: str, objective: Objective = gin.REQUIRED, kl_coef: float | None = None,
            alpha: float | None = None, steps: int = 100, batch_size: int = 32,
            hp: ppo_step.PPOHyperparams | None = None, seed: int = 0,
            resume: bool = False, checkpoint_every: int = 25, log_every: int = 10,
            sample_every: int = 25, mesh_shape: Sequence[int] = (-1, 1),
            evaluation: PPOEval | None = None, run_dir: str | None = None,
            learner: str = 'ppo', convergence: convergence_lib.PlateauRule | None = None,
            train_prompts: str = 'auto') -> results_lib.RunResult | None:
  """A policy learner on the objective at γ = kl_coef (or α = γ/(1+γ)); writes and evaluates
  EXP/runs/<learner>_<objective>_g<γ>_s<seed>/.

  hp and evaluation default to PPOHyperparams() and PPOEval() (as bound by gin). learner 'ppo'
  (critic started as hp.value_init says) or 'rloo' (no critic; hp.samples_per_prompt ≥ 2
  responses per prompt); both use the same scoring step. With `convergence` (a PlateauRule) the
  run holds out its last training prompts for validation and stops when J on them plateaus
  (steps is then ignored; the history is in RUN/convergence.json). train_prompts: 'pool' (the
  prompts of EXP/pools/train.npz, the only ones with empirical quantile references), 'all'
  (every distinct training prompt; references from predictors, canned responses or constants)
  or 'auto' ('all' for objectives with a Gaussian reference and no quantile one, else 'pool').
  Returns the RunResult, or None when the run was preempted (resume with resume=True).
  """
  hp = hp or ppo_step.PPOHyperparams()
  evaluation = evaluation or PPOEval()
  if (kl_coef is None) == (alpha is None):
    raise ValueError('run_learner: give exactly one of kl_coef (γ) and alpha (γ/(1+γ))')
  kl_coef = float(kl_coef) if kl_coef is not None else ppo_math.kl_coef_from_alpha(alpha)
  start_time = time.time()
  exp = layout.ExperimentDirs(exp_dir)
  run_dir = (io_utils.abspath(run_dir) if run_dir  # exp.run is absolute already
             else exp.run(learner_run_name(objective, kl_coef, seed, learner)))
  iteration = learners.iteration_fn(learner)
  trainer_utils.check_run_dir(run_dir, resume, RESULTS_FILE)
  evaluation_pool = load_pool(exp, 'eval')
  pool_length = evaluation_pool.response_length
  if hp.max_response_length != pool_length:  # the SFT baseline must get the same budget
    raise ValueError(f'PPOHyperparams.max_response_length = {hp.max_response_length} but the '
                     f'pools hold responses of {pool_length} tokens (PoolSizes.response_length)')
  models = pools_stage.load_models(exp)
  prompt_ids, train_pool, train_prompts = pools_stage.training_prompts(exp, objective, models,
                                                                     train_prompts)
  table = reference_tables.references_for(exp, objective, prompt_ids, train_pool, models)
  properties = objective.properties
  scorer = scoring_step.Scorer(objective,
                               tuple(models.reward_configs[prop] for prop in properties),
                               models.policy_config, hp.temperature)
  mesh = partitioning.create_mesh(tuple(mesh_shape))
  if convergence is not None:  # the last prompts validate, the rest train
    held = convergence.validation_prompts
    validation = (prompt_ids[-held:], table[-held:])
    prompt_ids, table = prompt_ids[:-held], table[:-held]
    steps, checkpoint_every = convergence.max_steps, convergence.check_every
  setup = ppo.PPOSetup(scorer=scorer, hp=hp, kl_coef=kl_coef,
                       reward_params=tuple(models.reward_params[prop] for prop in properties),
                       ref_policy_params=models.policy_params, prompt_ids=prompt_ids,
                       table_refs=table, batch_size=batch_size, seed=seed, mesh=mesh)
  # Replicated on the mesh (the batch is what is split over 'data'); a restored checkpoint
  # takes the template's placement, so a resumed run lives on the same devices.
  # (Built under jit: device_put cannot target non-addressable devices on a multi-host mesh.)
  state = jax.jit(lambda params0: ppo.init_state(params0, hp, seed),
                  out_shardings=partitioning.replicated(mesh))(models.policy_params)
  vocab = None

  def train_step(state_, batch):
    state_, metrics = iteration(setup, state_, batch)
    return state_, {**metrics, **{f'time/{k}': v for k, v in setup.timings.items()}}

  def step_callback(step: int, state_: ppo.PPOState, _: Any) -> None:
    nonlocal vocab
    if not sample_every or step % sample_every:
      return
    from lsc_align.data import arrays as data_arrays  # pylint: disable=g-import-not-at-top
    vocab = vocab or data_arrays.load_vocabulary(exp.vocabulary)
    prompts = setup.batch(step)['prompt_ids'][:4]
    out = sampling.sample(state_.policy.params, models.policy_config, jnp.asarray(prompts),
                          jax.random.fold_in(jax.random.key(seed + 1), step),
                          max_response_length=hp.max_response_length,
                          temperature=hp.temperature)
    for prompt, response in zip(prompts, np.asarray(out.response_ids)):
      io_utils.append_jsonl(os.path.join(run_dir, SAMPLES_FILE), {
          'step': step, 'prompt': _text(vocab, prompt), 'response': _text(vocab, response)})

  info = {'exp_dir': exp.root, 'objective': objective.to_dict(), 'kl_coef': kl_coef,
          'alpha': ppo_math.alpha_from_kl_coef(kl_coef), 'seed': seed, 'steps': steps,
          'batch_size': batch_size, 'hp': dataclasses.asdict(hp), 'learner': learner,
          'convergence': convergence and dataclasses.asdict(convergence),
          'train_prompts': train_prompts, 'num_train_prompts': int(prompt_ids.shape[0])}
  _check_same_run(run_dir, info)
  io_utils.atomic_write_json(os.path.join(run_dir, 'run.json'), info)
  with trainer.session(run_dir, mesh, checkpoint_every) as live:
    if learner == 'ppo' and live.checkpointer.latest_step() is None:  # resumed: has its critic
      state, critic_stats = critic.init_critic(setup, state)
      if critic_stats:
        state = jax.jit(lambda s: s, out_shardings=partitioning.replicated(mesh))(state)
        io_utils.atomic_write_json(os.path.join(run_dir, 'critic_init.json'), critic_stats)
    def run_chunk(state_: ppo.PPOState, total: int, resume_: bool) -> loop.TrainResult:
      return live.train(state_, train_step, setup.batch, total, schedule=setup.schedule,
                        log_every=log_every, resume=resume_, progress_keys=('utility', 'kl'),
                        step_callback=step_callback)
    if convergence is None:
      result = run_chunk(state, steps, resume)
    else:
      result, _ = convergence_lib.run_until_plateau(
          state, run_chunk, lambda s: convergence_lib.validation_objective(
              setup, s.policy.params, *validation, convergence.samples),
          convergence, os.path.join(run_dir, 'convergence.json'), resume)
  if result.status is not loop.TrainStatus.COMPLETED:
    return None
  evaluated = evaluate_learner(exp, objective, kl_coef, seed, result.state.policy.params, models,
                               hp, evaluation, evaluation_pool,
                               run=os.path.basename(run_dir.rstrip('/')),
                               train_seconds=time.time() - start_time,
                               last_metrics=result.last_metrics, learner=learner)
  _write_results(run_dir, [evaluated])
  return evaluated


def evaluate_learner(exp: layout.ExperimentDirs, objective: Objective, kl_coef: float,
                     seed: int, params: Any, models: pools_stage.Models,
                     hp: ppo_step.PPOHyperparams, evaluation: PPOEval, evaluation_pool: Pool,
                     run: str, train_seconds: float, last_metrics: dict[str, Any],
                     learner: str = 'ppo') -> results_lib.RunResult:
  """Samples the final π on the evaluation prompts; judged, with KL and the optimum's share."""
  prompts = evaluation_pool.prompt_ids
  responses = pool_sampling.sample_pool(params, models.policy_config, prompts,
                                        evaluation.samples_per_prompt,
                                        jax.random.key(10_000 + seed), hp.max_response_length,
                                        hp.temperature, evaluation.batch_size)
  kl = kl_per_prompt(params, models.policy_params, models.policy_config, prompts, responses,
                      hp.temperature, evaluation.batch_size)
  samples = pools_stage.judged_samples(pools_stage.load_judge(exp), models, prompts, responses,
                                       evaluation.batch_size)
  refs = reference_tables.references_for(exp, objective, prompts, evaluation_pool)
  u = aggregate.pool_utilities(objective, samples.rewards, refs)
  u_pool = aggregate.pool_utilities(objective, evaluation_pool.pool.rewards, refs)
  reached = float(u.mean() - kl_coef * kl.mean())
  best = float(np.mean(optimum.optimum_objective(u_pool, kl_coef)))
  baseline = float(u_pool.mean())
  try:
    fraction = optimum.objective_fraction(reached, best, baseline)
    share = optimum_checks.share_interval(
        u.mean(axis=1) - kl_coef * kl,
        np.asarray(optimum.optimum_objective(u_pool, kl_coef)),
        u_pool.mean(axis=1), seed=seed)
  except ValueError:
    fraction = share = None
  judged = _judged(samples)
  extra = {'utility': float(u.mean()), 'objective_value': reached,
           'optimum_objective_value': best, 'pi0_objective_value': baseline,
           'objective_fraction_of_optimum': fraction, 'train_seconds': round(train_seconds, 1),
           'alpha': ppo_math.alpha_from_kl_coef(kl_coef),
           'objective_fraction_interval': share,
           'optimum_pool_checks': optimum_checks.pool_checks(u_pool, kl_coef),
           'final_train_metrics': dict(last_metrics)}
  return evaluate_lib.evaluate(
      run=run, method=learner, objective=objective.name, transform=objective.transform.value,
      seed=seed, gamma=kl_coef, policy_judge=judged['judge'],
      sft_judge=_judged(evaluation_pool.sft)['judge'],
      kl_per_prompt=kl, shortcut_flags=judged['flags'], proxy_rewards=judged['proxy'],
      extra=extra)


def _check_same_run(run_dir: str, info: Mapping[str, Any]) -> None:
  """A resumed run must be the run in the directory: ValueError naming what differs."""
  path = os.path.join(run_dir, 'run.json')
  if not io_utils.exists(path):
    return
  saved = json.loads(io_utils.read_text(path))
  new = json.loads(json.dumps(info))  # tuples as lists, as they were saved
  differ = sorted(k for k in new if k != 'exp_dir' and k in saved and saved[k] != new[k])
  if differ:
    raise ValueError(f'{run_dir} holds a PPO run of another config (differs in: '
                     f'{", ".join(differ)}); choose a new --run_dir')


def evaluate_run(run_dir: str, step: int | None = None) -> results_lib.RunResult:
  """Re-evaluates a PPO run directory from its checkpoint (default: the latest); writes results.

  The run's own run.json gives the experiment, objective, γ, seed and PPO settings, so this
  needs no gin; evaluation settings (PPOEval) come from gin when bound.
  """
  run_dir = io_utils.abspath(run_dir)
  info_path = os.path.join(run_dir, 'run.json')
  if not io_utils.exists(info_path):
    raise FileNotFoundError(f'{info_path} not found: only PPO run directories are evaluated '
                            'from checkpoints (best-of-k and optimum runs are evaluated when made)')
  info = json.loads(io_utils.read_text(info_path))
  exp = layout.ExperimentDirs(info['exp_dir'])
  objective = Objective.from_dict(info['objective'])
  hp = ppo_step.PPOHyperparams(**info['hp'])
  models = pools_stage.load_models(exp)
  template = ppo.init_state(models.policy_params, hp, info['seed'])
  with checkpointing.TrainCheckpointer(layout.checkpoints(run_dir)) as checkpointer:
    step = checkpointer.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'{run_dir}/checkpoints holds no checkpoint')
    state, _ = checkpointer.restore(template, step)
  result = evaluate_learner(exp, objective, float(info['kl_coef']), int(info['seed']),
                        state.policy.params, models, hp, PPOEval(), load_pool(exp, 'eval'),
                        run=os.path.basename(run_dir.rstrip('/')), train_seconds=0.0,
                        last_metrics={'checkpoint_step': step},
                        learner=info.get('learner', 'ppo'))
  _write_results(run_dir, [result])
  return result
