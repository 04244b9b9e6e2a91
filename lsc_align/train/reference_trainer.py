"""The reference-reward predictor: `lsc-align train-reference --run_dir DIR [--resume]`.

Trains (r_mean(x), r_std(x)) (lsc_align.models.reward_model.GaussianReferenceModel: a T5 encoder
on the prompt alone, two pooled heads) for one property, on the per-prompt mean and standard
deviation of the rewards of m π0 samples (m = 64 by default, as in the paper) scored by that
property's reward model. Then r_ref(x) = r_mean(x) + Φ⁻¹(q)·r_std(x) is a reference at any
quantile q, for any prompt, at the cost of one forward pass (docs/DESIGN.md §1).

Input: a pool file (npz) with `prompt_ids` [N, Lp] and `reward_<property>` [N, ≥ m], as written
by the pipeline's reference stage (lsc_align.pipeline.reference_stage). Its last
`validation_prompts` prompts are held out: their samples measure calibration during training.

The encoder starts from the property's reward model (same sizes), the heads' biases from the
training targets' averages; the loss is the squared error of both moments
(`gaussian_regression_loss`). Same skeleton as every trainer (lsc_align.train.trainer): sharded,
resumable, metrics. The run directory gets checkpoints/, metrics.jsonl, config.gin and at the end
ref_final.msgpack, reference_model.json (model config, property, the reward model it was trained
for and the SHA-256 of its parameters) and eval.json (calibration on the held-out prompts, and
the same for a constant predictor, the baseline to beat).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable, Mapping

from flax import linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lsc_align import io_utils
from lsc_align.conventions import PROPERTIES
from lsc_align.models import reward_model
from lsc_align.rewards import reference
from lsc_align.train import loop
from lsc_align.train import reward_model_trainer
from lsc_align.train import settings as settings_lib
from lsc_align.train import trainer
from lsc_align.train import trainer_utils

PARAMS_FILE = 'ref_final.msgpack'
INFO_FILE = 'reference_model.json'
EVAL_FILE = 'eval.json'


def pool_targets(pool_file: str, property_name: str, samples_per_prompt: int
                 ) -> tuple[np.ndarray, np.ndarray]:
  """(prompt_ids [N, Lp] int32, rewards [N, m] float32) of a pool file, checked.

  Raises:
    ValueError: a missing array, wrong shapes, too few samples, or a non-finite reward (named by
      file, array, prompt row and sample).
  """
  if not io_utils.exists(pool_file):
    raise FileNotFoundError(f'{pool_file}: no such pool file (build it with lsc-align '
                            'references --exp_dir EXP)')
  arrays = io_utils.load_npz(pool_file)
  key = f'reward_{property_name}'
  for name in ('prompt_ids', key):
    if name not in arrays:
      raise ValueError(f'{pool_file}: no array {name!r} (has {sorted(arrays)})')
  prompts, rewards = arrays['prompt_ids'], arrays[key]
  if prompts.ndim != 2 or rewards.ndim != 2 or prompts.shape[0] != rewards.shape[0]:
    raise ValueError(f'{pool_file}: prompt_ids {prompts.shape} and {key} {rewards.shape} must be '
                     '[N, Lp] and [N, m]')
  if samples_per_prompt < 2 or rewards.shape[1] < samples_per_prompt:
    raise ValueError(f'train_reference.samples_per_prompt = {samples_per_prompt}: must be >= 2 '
                     f'and at most the pool\'s {rewards.shape[1]} samples per prompt '
                     f'({pool_file})')
  rewards = rewards[:, :samples_per_prompt].astype(np.float32)
  if not np.all(np.isfinite(rewards)):
    i, j = np.argwhere(~np.isfinite(rewards))[0]
    raise ValueError(f'{pool_file}: {key}[{i}, {j}] is {rewards[i, j]} (rewards must be finite)')
  return prompts.astype(np.int32), rewards


def make_train_step(model: reward_model.GaussianReferenceModel, learning_rate: optax.Schedule
                    ) -> Callable[[loop.TrainState, Mapping[str, jax.Array]],
                                  tuple[loop.TrainState, dict[str, jax.Array]]]:
  """(state, {'prompt_ids' [B, Lp], 'mean' [B], 'std' [B]}) -> (state, metrics)."""

  def train_step(state: loop.TrainState, batch: Mapping[str, jax.Array]):
    dropout_key = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
      mean, std = model.apply({'params': params}, batch['prompt_ids'], deterministic=False,
                              rngs={'dropout': dropout_key})
      loss = reward_model.gaussian_regression_loss(mean, std, batch['mean'], batch['std'])
      return jnp.mean(loss), (mean, std)

    (loss, (mean, std)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics = {'loss': loss,
               'mean_rmse': jnp.sqrt(jnp.mean(jnp.square(mean - batch['mean']))),
               'std_rmse': jnp.sqrt(jnp.mean(jnp.square(std - batch['std']))),
               'grad_norm': optax.global_norm(grads),
               'learning_rate': jnp.asarray(learning_rate(state.step), jnp.float32)}
    return state.apply_gradients(grads), metrics

  return train_step


@functools.partial(jax.jit, static_argnums=0)
def _moments(config: reward_model.RewardModelConfig, params: Any,
             prompt_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
  return reward_model.GaussianReferenceModel(config).apply({'params': params}, prompt_ids)


def predict_moments(config: reward_model.RewardModelConfig, params: Any, prompt_ids: np.ndarray,
                    batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
  """(r_mean, r_std) per prompt as float64 numpy [N], in fixed-size jitted batches, checked.

  Raises:
    ValueError: a predicted mean that is not finite or a std that is not > 0 (naming the row).
  """
  prompt_ids = np.asarray(prompt_ids, np.int32)
  means, stds = [], []
  for start in range(0, prompt_ids.shape[0], batch_size):
    rows = prompt_ids[start:start + batch_size]
    padded = np.concatenate([rows, np.repeat(rows[:1], batch_size - len(rows), axis=0)])
    mean, std = jax.device_get(_moments(config, params, jnp.asarray(padded)))
    means.append(mean[:len(rows)])
    stds.append(std[:len(rows)])
  return reference.check_moments(np.concatenate(means), np.concatenate(stds),
                                 'reference predictor')


def reference_model_info(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
  """reference_model.json of a finished train-reference run."""
  return json.loads(io_utils.read_text(os.path.join(os.fspath(run_dir), INFO_FILE)))


def load_reference_model(run_dir: str | os.PathLike[str], property_name: str | None = None,
                         reward_model_dir: str | None = None
                         ) -> tuple[reward_model.RewardModelConfig, Any, dict[str, Any]]:
  """(config, params, info) of a finished predictor, checked against its intended use.

  Args:
    run_dir: the train-reference run directory.
    property_name: if given, the property the predictor must have been trained for.
    reward_model_dir: if given, the reward model whose rewards it must have been trained on
      (compared by the SHA-256 of the parameters, so a retrained model in the same directory
      counts as another model).

  Raises:
    FileNotFoundError: no finished predictor in run_dir.
    ValueError: a predictor for another property or another reward model.
  """
  run_dir = os.fspath(run_dir)
  path = os.path.join(run_dir, PARAMS_FILE)
  if not io_utils.exists(path):
    raise FileNotFoundError(f'{path}: no trained reference predictor (train one with lsc-align '
                            'train-reference, or for an experiment lsc-align references)')
  info = reference_model_info(run_dir)
  if property_name is not None and info['property'] != property_name:
    raise ValueError(f'{run_dir}: the predictor was trained for {info["property"]!r}, not for '
                     f'{property_name!r}')
  if reward_model_dir is not None:
    digest = io_utils.file_digest(os.path.join(reward_model_dir,
                                               reward_model_trainer.PARAMS_FILE))
    if digest != info['reward_model_digest']:
      raise ValueError(f'{run_dir}: the predictor was trained on the rewards of another reward '
                       f'model ({info["reward_model_dir"]}, sha256 '
                       f'{info["reward_model_digest"][:12]}…) than {reward_model_dir} (sha256 '
                       f'{digest[:12]}…); train it again for this reward model')
  config = reward_model_trainer.config_from_dict(info['config'])
  return config, trainer_utils.load_params(path), info


def _softplus_inverse(x: float) -> float:
  return float(x + np.log(-np.expm1(-x)))


# This trainer's TrainerSettings where gin binds none (train_reference/TrainerSettings.*).
DEFAULT_SETTINGS: Mapping[str, Any] = {
    'steps': 500, 'batch_size': 64, 'learning_rate': 3e-4, 'warmup_steps': 50,
    'schedule': 'cosine', 'eval_every': 250, 'checkpoint_every': 250}
_SCOPE = 'train_reference'
_PRINTED = ('property', 'step', 'mean_rmse', 'std_rmse', 'coverage_q0.5', 'coverage_q0.85',
            'seconds')


def configured_settings(**overrides: Any) -> settings_lib.TrainerSettings:
  """This trainer's TrainerSettings: gin's train_reference/TrainerSettings.*, then
  DEFAULT_SETTINGS, with `overrides` over both."""
  return settings_lib.configured(_SCOPE, DEFAULT_SETTINGS, **overrides)


def _reward_model(reward_model_dir: str, property_name: str,
                  model: reward_model.RewardModelConfig | None, init_from_reward_model: bool
                  ) -> tuple[reward_model.RewardModelConfig, Any]:
  """(the predictor's config, the reward model's params), checked against each other."""
  if property_name not in PROPERTIES:
    raise ValueError(f'train_reference.property_name {property_name!r} must be one of '
                     f'{PROPERTIES}')
  rm_config, rm_params = reward_model_trainer.load_reward_model(reward_model_dir)
  rm_info = reward_model_trainer.reward_model_info(reward_model_dir)
  if rm_info['property'] != property_name:
    raise ValueError(f'train_reference.reward_model_dir {reward_model_dir} is the '
                     f'{rm_info["property"]!r} reward model, not {property_name!r}')
  config = model or rm_config
  if init_from_reward_model and config.encoder != rm_config.encoder:
    raise ValueError('train_reference.init_from_reward_model needs the reward model\'s encoder '
                     'sizes; bind train_reference.model to match, or set '
                     'init_from_reward_model = False')
  return config, rm_params


def _evaluate_fn(config: reward_model.RewardModelConfig, prompts: np.ndarray,
                 rewards: np.ndarray, batch_size: int) -> Callable[[Any, Any], dict[str, Any]]:
  """(params, mesh) -> calibration on the held-out prompts, with its scalars flattened."""

  def evaluate(params: Any, mesh: Any) -> dict[str, Any]:
    del mesh  # small: one host-side pass over the held-out prompts
    mean, std = predict_moments(config, params, prompts, batch_size)
    result = reference.calibration(mean, std, rewards)
    scalars = {'mean_rmse': result['mean_rmse'], 'std_rmse': result['std_rmse']}
    for row in result['quantiles']:
      scalars[f'coverage_q{row["q"]:g}'] = row['coverage']
      scalars[f'quantile_mae_q{row["q"]:g}'] = row['quantile_error_mae']
    return {**scalars, 'calibration': result}

  return evaluate


def _constant_baseline_fn(rewards: np.ndarray, mean: float, std: float
                          ) -> Callable[[Any, Any], dict[str, Any]]:
  """(params, mesh) -> the calibration of the constant predictor (mean, std): the baseline."""

  def constant_baseline(params: Any, mesh: Any) -> dict[str, Any]:
    del params, mesh
    n = rewards.shape[0]
    return {'constant_baseline': reference.calibration(np.full(n, mean), np.full(n, std),
                                                       rewards)}

  return constant_baseline


def _init_heads_fn(config: reward_model.RewardModelConfig, rm_params: Any | None, mean: float,
                   std: float) -> Callable[[loop.TrainState, loop.TrainState], loop.TrainState]:
  """(state, shardings) -> state with the reward model's encoder (unless rm_params is None)
  and head biases that start at the training targets' averages."""

  def init_heads(state: loop.TrainState, shardings: loop.TrainState) -> loop.TrainState:
    params = trainer_utils.to_host(state.params)
    if rm_params is not None:
      for name in ('token_embedder', 'encoder'):
        params[name] = rm_params[name]
    params['mean_head']['bias'] = np.full((1,), mean, np.float32)
    params['std_head']['bias'] = np.full(
        (1,), _softplus_inverse(max(std - config.min_std, 1e-6)), np.float32)
    return state.replace(params=trainer_utils.place_params(params, shardings.params))

  return init_heads


@gin.configurable
def train_reference(
    run_dir: str,
    pool_file: str = gin.REQUIRED,
    reward_model_dir: str = gin.REQUIRED,
    property_name: str = 'helpful',
    model: reward_model.RewardModelConfig | None = None,
    init_from_reward_model: bool = True,
    samples_per_prompt: int = 64,
    validation_prompts: int = 128,
    settings: settings_lib.TrainerSettings | None = None,
    resume: bool = False,
) -> loop.TrainResult:
  """Trains the mean/std reference predictor of one property; writes run_dir (module docstring).

  Args:
    run_dir: output directory (local or gs://).
    pool_file: npz with prompt_ids [N, Lp] and reward_<property> [N, ≥ samples_per_prompt].
    reward_model_dir: the train-rm run whose rewards the pool holds (initialisation, and the
      identity recorded so the predictor is never used with another reward model).
    property_name: 'helpful' or 'harmless'.
    model: default: the reward model's own config (so its encoder initialises this one).
    init_from_reward_model: start the encoder from the reward model's (needs the same sizes).
    samples_per_prompt: m, the pooled samples per prompt whose mean and std are the targets.
    validation_prompts: the pool's last prompts, held out for calibration.
    settings: steps, batch size (prompts), AdamW, intervals, seed, mesh; default
      `configured_settings()` (gin: train_reference/TrainerSettings.*).
    resume: continue from the latest checkpoint in run_dir.

  Returns:
    The loop's TrainResult (exit_code 75 after a preemption save).
  """
  start_time = time.time()
  run_dir, pool_file, reward_model_dir = (io_utils.abspath(p)
                                          for p in (run_dir, pool_file, reward_model_dir))
  config, rm_params = _reward_model(reward_model_dir, property_name, model,
                                    init_from_reward_model)
  settings = settings or configured_settings()
  prompts, rewards = pool_targets(pool_file, property_name, samples_per_prompt)
  if not 0 < validation_prompts < prompts.shape[0] - 1:
    raise ValueError(f'train_reference.validation_prompts = {validation_prompts}: must leave '
                     f'prompts to train on and to validate (the pool has {prompts.shape[0]})')
  if prompts.max() >= config.encoder.vocab_size:
    raise ValueError(f'{pool_file}: token id {prompts.max()} is outside the encoder\'s vocabulary '
                     f'(T5EncoderConfig.vocab_size = {config.encoder.vocab_size})')
  mesh = trainer.prepare_run_dir(settings, run_dir, PARAMS_FILE, None, resume=resume)
  train_rows, held = slice(0, -validation_prompts), slice(-validation_prompts, None)
  mean_t, std_t = (np.asarray(x, np.float32)
                   for x in reference.sample_statistics(rewards[train_rows]))
  init_mean, init_std = float(mean_t.mean()), float(std_t.mean())
  net = reward_model.GaussianReferenceModel(config)
  dummy = jnp.ones((1, prompts.shape[1]), jnp.int32)
  spec = trainer.TrainerSpec(
      init_params=lambda key: nn.unbox(net.init(key, dummy)['params']),
      boxed_params=jax.eval_shape(net.init, jax.random.key(0), dummy)['params'],
      make_train_step=lambda lr: make_train_step(net, lr),
      train_arrays={'prompt_ids': prompts[train_rows], 'mean': mean_t, 'std': std_t},
      evaluate=_evaluate_fn(config, prompts[held], rewards[held], settings.eval_batch_size),
      params_file=PARAMS_FILE, info_file=INFO_FILE, summary_file=EVAL_FILE,
      progress_keys=('loss', 'mean_rmse', 'std_rmse'),
      adjust_state=_init_heads_fn(config, rm_params if init_from_reward_model else None,
                                  init_mean, init_std),
      final_extras=_constant_baseline_fn(rewards[held], init_mean, init_std))
  info = {'config': dataclasses.asdict(config), 'property': property_name,
          'reward_model_dir': reward_model_dir,
          'reward_model_digest': io_utils.file_digest(
              os.path.join(reward_model_dir, reward_model_trainer.PARAMS_FILE)),
          'pool_file': pool_file, 'samples_per_prompt': samples_per_prompt,
          'prompt_length': int(prompts.shape[1]), 'train_prompts': int(len(mean_t)),
          'validation_prompts': validation_prompts,
          'init_from_reward_model': init_from_reward_model}
  summary = {'property': property_name, 'train_prompts': int(len(mean_t)),
             'validation_prompts': validation_prompts, 'samples_per_prompt': samples_per_prompt}
  result, summary = trainer.run(spec, settings, run_dir, mesh, info, summary, start_time,
                                resume=resume)
  if summary is not None:
    print(json.dumps({k: summary[k] for k in _PRINTED if k in summary}), flush=True)
  return result


def main(args: argparse.Namespace) -> int:
  """`lsc-align train-reference --run_dir DIR [--resume]` (pool and reward model from gin)."""
  kwargs: dict[str, Any] = {'run_dir': args.run_dir}
  if getattr(args, 'resume', False):
    kwargs['resume'] = True
  for flag in ('pool_file', 'reward_model_dir', 'property_name'):
    if getattr(args, flag, None):
      kwargs[flag] = getattr(args, flag)
  return train_reference(**kwargs).exit_code
