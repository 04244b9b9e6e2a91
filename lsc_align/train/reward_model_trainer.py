"""Bradley-Terry reward-model training: `lsc-align train-rm --run_dir DIR [--resume]`.

Trains r(x, y) (T5 encoder + pooled scalar head, lsc_align.models.reward_model) on the train-split
pairs of one property by minimising the BT loss −log σ(r(x, y+) − r(x, y−)) (docs/DESIGN.md §1),
sharded on a ('data', 'model') mesh. Validation pairs: the world's test split, or the split
derived from HH test (lsc_align.data.arrays.validation_split); pairwise accuracy with a 95% Wilson
interval, mean BT loss and, for the world, agreement with the gold preference.

The run directory gets: config.gin (operative gin config), checkpoints/ (orbax: params, optimizer
state, step, RNG key, data position), metrics.jsonl and TensorBoard events (train metrics every
step, 'eval/...' every eval_every steps), arrays/ (tokenised data cache), and at the end
rm_final.msgpack (params), reward_model.json (model config and how to pack inputs) and eval.json.
`load_reward_model(run_dir)` returns (RewardModelConfig, params) for later stages.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
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
from lsc_align import stats
from lsc_align.data import arrays as data_arrays
from lsc_align.models import hf_t5
from lsc_align.models import reward_model
from lsc_align.models import t5_encoder
from lsc_align.models import t5x_checkpoint
from lsc_align.train import loop
from lsc_align.train import settings as settings_lib
from lsc_align.train import trainer
from lsc_align.train import trainer_utils
from lsc_align.world import supervision

PARAMS_FILE = 'rm_final.msgpack'
INFO_FILE = 'reward_model.json'
EVAL_FILE = 'eval.json'
WORLD_LABELS = supervision.WORLD_LABELS


def pack_pairs(arrays: Mapping[str, np.ndarray], max_length: int,
               max_response_length: int | None = None) -> dict[str, np.ndarray]:
  """{'chosen', 'rejected'}: x ++ y+ and x ++ y− packed into int32 [N, max_length] rows."""
  prompts = data_arrays.strip_padding(arrays['prompt_ids'])
  packed = {}
  for side in ('chosen', 'rejected'):
    packed[side] = reward_model.pack_prompt_response(
        prompts, data_arrays.strip_padding(arrays[f'{side}_ids']), max_length,
        max_response_length)['tokens']
  return packed


def make_train_step(model: reward_model.RewardModel, learning_rate: optax.Schedule
                    ) -> Callable[[loop.TrainState, Mapping[str, jax.Array]],
                                  tuple[loop.TrainState, dict[str, jax.Array]]]:
  """(state, {'chosen', 'rejected'} [B, L], optional 'p_chosen' [B]) -> (state, metrics).

  One BT update; with 'p_chosen' the loss is the BT cross-entropy against that probability.

  Dropout keys are fold_in(state.rng, step), so a resumed run draws the same masks.
  """

  def train_step(state: loop.TrainState, batch: Mapping[str, jax.Array]):
    dropout_key = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
      chosen, rejected = reward_model.pair_rewards(
          model, {'params': params}, batch['chosen'], batch['rejected'], deterministic=False,
          rngs={'dropout': dropout_key})
      if 'p_chosen' in batch:  # gold targets (world_labels); absent for the drawn labels
        loss = reward_model.soft_bradley_terry_loss(chosen, rejected, batch['p_chosen'])
      else:
        loss = reward_model.bradley_terry_loss(chosen, rejected)
      return jnp.mean(loss), (chosen, rejected)

    (loss, (chosen, rejected)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics = {'loss': loss, 'accuracy': reward_model.pairwise_accuracy(chosen, rejected),
               'reward_margin': jnp.mean(chosen - rejected),
               'reward_mean': jnp.mean(jnp.concatenate([chosen, rejected])),
               'grad_norm': optax.global_norm(grads),
               'learning_rate': jnp.asarray(learning_rate(state.step), jnp.float32)}
    return state.apply_gradients(grads), metrics

  return train_step


def make_pair_reward_fn(model: reward_model.RewardModel
                        ) -> Callable[[Any, Mapping[str, jax.Array]], dict[str, jax.Array]]:
  """(params, {'chosen', 'rejected'}) -> {'chosen', 'rejected'} rewards [B], deterministic."""

  def rewards(params: Any, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    chosen, rejected = reward_model.pair_rewards(model, {'params': params}, batch['chosen'],
                                                 batch['rejected'])
    return {'chosen': chosen, 'rejected': rejected}

  return rewards


def pair_metrics(chosen: np.ndarray, rejected: np.ndarray) -> dict[str, Any]:
  """Pairwise accuracy (ties 1/2) with its 95% Wilson interval, BT loss, margins."""
  margin = chosen.astype(np.float64) - rejected.astype(np.float64)
  correct = np.where(margin > 0, 1.0, np.where(margin == 0, 0.5, 0.0))
  low, high = stats.wilson_interval(float(correct.sum()), len(correct))
  return {'pairs': int(len(margin)), 'accuracy': float(correct.mean()),
          'accuracy_ci95': [low, high], 'loss': float(np.mean(np.logaddexp(0.0, -margin))),
          'reward_margin_mean': float(margin.mean()),
          'reward_std': float(np.std(np.concatenate([chosen, rejected])))}


def reward_model_info(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
  """reward_model.json: model config, vocabulary, property, packing lengths, final step."""
  return json.loads(io_utils.read_text(os.path.join(os.fspath(run_dir), INFO_FILE)))


def config_from_dict(config: Mapping[str, Any]) -> reward_model.RewardModelConfig:
  """A RewardModelConfig from dataclasses.asdict output (every field explicit, so gin is inert)."""
  fields = dict(config)
  fields['encoder'] = t5_encoder.T5EncoderConfig(**fields['encoder'])
  return reward_model.RewardModelConfig(**fields)


def load_reward_model(run_dir: str | os.PathLike[str]) -> tuple[Any, dict[str, Any]]:
  """(config, params as numpy) of a finished train-rm run; apply with RewardModel(config).

  A decoder run (init_hf_checkpoint; reward_model.json kind 'decoder') gives its PolicyConfig;
  decoder_reward_trainer.load_run makes it a pretrained.PretrainedRewardModel.
  """
  run_dir = os.fspath(run_dir)
  path = os.path.join(run_dir, PARAMS_FILE)
  if not io_utils.exists(path):
    raise FileNotFoundError(f'{path}: no final reward model (did the run finish?)')
  info = reward_model_info(run_dir)
  if info.get('kind') == 'decoder':
    from lsc_align.models import policy  # pylint: disable=g-import-not-at-top
    return policy.PolicyConfig(**info['config']), trainer_utils.load_params(path)
  return config_from_dict(info['config']), trainer_utils.load_params(path)


# This trainer's TrainerSettings where gin binds none (train_reward_model/TrainerSettings.*).
DEFAULT_SETTINGS: Mapping[str, Any] = {}
_SCOPE = 'train_reward_model'
_PRINTED = ('property', 'split', 'step', 'pairs', 'accuracy', 'accuracy_ci95', 'loss', 'seconds',
            'gold_label_agreement', 'model_gold_agreement')


def configured_settings(**overrides: Any) -> settings_lib.TrainerSettings:
  """This trainer's TrainerSettings: gin's train_reward_model/TrainerSettings.*, then
  DEFAULT_SETTINGS, with `overrides` over both."""
  return settings_lib.configured(_SCOPE, DEFAULT_SETTINGS, **overrides)


def _check_arguments(property_name: str, world_labels: str, init_t5x_checkpoint: str | None,
                     init_hf_t5_checkpoint: str | None = None) -> None:
  """Refuses bad arguments before any data is read or tokenised."""
  if init_t5x_checkpoint and init_hf_t5_checkpoint:
    raise ValueError('train_reward_model: init_t5x_checkpoint and init_hf_t5_checkpoint are '
                     'both set; give one')
  if init_hf_t5_checkpoint is not None and not io_utils.isdir(init_hf_t5_checkpoint):
    raise ValueError(f'train_reward_model.init_hf_t5_checkpoint {init_hf_t5_checkpoint}: no '
                     'such directory')
  if world_labels not in WORLD_LABELS:
    raise ValueError(f'train_reward_model.world_labels {world_labels!r} must be one of '
                     f'{WORLD_LABELS}')
  if property_name not in data_arrays.PROPERTY_SUBSETS:
    raise ValueError(f'train_reward_model.property_name {property_name!r} must be one of '
                     f'{sorted(data_arrays.PROPERTY_SUBSETS)}')
  if init_t5x_checkpoint is not None and not io_utils.exists(init_t5x_checkpoint):
    raise ValueError(f'train_reward_model.init_t5x_checkpoint {init_t5x_checkpoint}: no such '
                     'file or directory')


def _model_config(model: reward_model.RewardModelConfig | None, vocabulary: str,
                  init_hf_t5_checkpoint: str | None = None) -> reward_model.RewardModelConfig:
  """The model's config (default: as gin binds it; the encoder's architecture from a Hugging
  Face T5 checkpoint when one is given), checked to cover the vocabulary."""
  config = model or reward_model.RewardModelConfig()
  if init_hf_t5_checkpoint is not None:  # architecture from config.json, numerics from gin
    config = hf_t5.reward_model_config(init_hf_t5_checkpoint, config)
  num_ids = data_arrays.vocabulary_size(vocabulary)
  if config.encoder.vocab_size < num_ids:
    raise ValueError(f'T5EncoderConfig.vocab_size = {config.encoder.vocab_size} is smaller than '
                     f'the vocabulary {vocabulary} ({num_ids} ids)')
  return config


def _pairs(data_dir: str, vocabulary: str, property_name: str, eval_split: str, cache_dir: str,
           lengths: Mapping[str, int], max_length: int, max_train_pairs: int | None,
           world_labels: str, lenient: bool
           ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, int]]:
  """(train pairs with 'p_chosen' for gold labels, validation pairs, truncation counts)."""
  raw = {split: data_arrays.pair_arrays(data_dir, vocabulary, property_name, split,
                                        cache_dir=cache_dir, lenient=lenient, **lengths)
         for split in ('train', eval_split)}
  targets = None
  if world_labels != 'drawn':
    logging.warning('train_reward_model.world_labels = %r: this model learns from the gold, '
                    'a diagnostic, not a proxy reward', world_labels)
    targets = supervision.gold_label_targets(data_dir, property_name, 'train',
                                             len(raw['train']['prompt_ids']), world_labels)
  if max_train_pairs is not None:
    raw['train'] = {k: v[:max_train_pairs] for k, v in raw['train'].items()}
  response_length = lengths['response_length']
  train_pairs = pack_pairs(raw['train'], max_length, response_length)
  if targets is not None:
    train_pairs['p_chosen'] = targets[:len(train_pairs['chosen'])]
  eval_pairs = pack_pairs(raw[eval_split], max_length, response_length)
  truncation = {f'{split}_{name}_full_rows': data_arrays.full_rows(ids)
                for split, arrays in raw.items() for name, ids in arrays.items()}
  return train_pairs, eval_pairs, truncation


def _evaluate_fn(net: reward_model.RewardModel, eval_pairs: Mapping[str, np.ndarray],
                 batch_size: int, source: tuple[str, str, str]
                 ) -> Callable[[Any, Any], dict[str, Any]]:
  """(params, mesh) -> validation metrics: pair_metrics, and on the world the agreement with
  the gold of the pairs' source (data_dir, property, split)."""
  reward_fn = jax.jit(make_pair_reward_fn(net))
  gold_diff = supervision.gold_pair_differences(*source, len(eval_pairs['chosen']))

  def evaluate(params: Any, mesh: Any) -> dict[str, Any]:
    rewards = trainer_utils.batched_apply(lambda batch: reward_fn(params, batch), eval_pairs,
                                          batch_size, mesh)
    result = pair_metrics(rewards['chosen'], rewards['rejected'])
    if gold_diff is not None:
      result.update(supervision.gold_agreement(rewards['chosen'] - rewards['rejected'],
                                               gold_diff))
    return result

  return evaluate


def _load_t5x_fn(checkpoint: str, config: reward_model.RewardModelConfig
                 ) -> Callable[[loop.TrainState, loop.TrainState], loop.TrainState]:
  """(state, shardings) -> state with the encoder from a T5X checkpoint."""

  def load_t5x(state: loop.TrainState, shardings: loop.TrainState) -> loop.TrainState:
    encoder_params, report = t5x_checkpoint.load_encoder_params(checkpoint, config.encoder)
    logging.info('%s', report.summary())
    merged = t5x_checkpoint.insert_encoder_params(trainer_utils.to_host(state.params),
                                                  encoder_params)
    return state.replace(params=trainer_utils.place_params(merged, shardings.params))

  return load_t5x


def _load_hf_t5_fn(checkpoint: str, config: reward_model.RewardModelConfig, mesh: Any
                   ) -> Callable[[loop.TrainState, loop.TrainState], loop.TrainState]:
  """(state, shardings) -> state with the encoder from a Hugging Face T5 checkpoint."""

  def load_hf_t5(state: loop.TrainState, shardings: loop.TrainState) -> loop.TrainState:
    del shardings  # the loader places each tensor by the same logical-axis rules
    _, encoder_params, _ = hf_t5.load_hf_t5_encoder(checkpoint, mesh=mesh, base=config.encoder)
    return state.replace(params={**state.params, **encoder_params})

  return load_hf_t5


@gin.configurable
def train_reward_model(
    run_dir: str,
    data_dir: str = gin.REQUIRED,
    vocabulary: str = gin.REQUIRED,
    property_name: str = 'helpful',
    model: reward_model.RewardModelConfig | None = None,
    settings: settings_lib.TrainerSettings | None = None,
    prompt_length: int = 32,
    response_length: int = 48,
    max_length: int = 80,
    resume: bool = False,
    init_t5x_checkpoint: str | None = None,
    init_hf_t5_checkpoint: str | None = None,
    init_hf_checkpoint: str | None = None,
    cache_dir: str | None = None,
    max_train_pairs: int | None = None,
    world_labels: str = 'drawn',
    lenient: bool = False,
) -> loop.TrainResult:
  """Trains a BT reward model for one property; writes the run directory (module docstring).

  Args:
    run_dir: output directory (local or gs://).
    data_dir: HH-layout root (real HH, or a world from `lsc-align world`).
    vocabulary: world vocab.txt or SentencePiece .model; T5EncoderConfig.vocab_size must be
      at least its size.
    property_name: 'helpful' or 'harmless'.
    model: default RewardModelConfig() as bound by configs/models/t5_*.gin.
    settings: steps, batch size (pairs), AdamW, intervals, seed, mesh; default
      `configured_settings()` (gin: train_reward_model/TrainerSettings.*).
    prompt_length, response_length: token budgets of the seqio features.
    max_length: packed encoder length of x ++ y.
    resume: continue from the latest checkpoint in run_dir.
    init_t5x_checkpoint: start the encoder from a T5X checkpoint of the same sizes.
    init_hf_t5_checkpoint: start the encoder from a Hugging Face T5 checkpoint directory
      (T5EncoderModel or T5ForConditionalGeneration; its config.json gives the architecture,
      `model` the numerics); `vocabulary` should be its spiece.model. Excludes
      init_t5x_checkpoint.
    init_hf_checkpoint: train a decoder reward model instead (train/decoder_reward_trainer.py)
      from a Hugging Face Llama / Qwen2 / Qwen3 / Gemma 2 / 3 checkpoint directory: a
      *ForCausalLM (fresh score head) or a *ForSequenceClassification (its head). `vocabulary`
      must then be that directory (its tokenizer tokenises the pairs, x ++ y in max_length
      tokens); `model`, prompt_length, response_length and cache_dir are not used.
    cache_dir: tokenised-array cache; default <run_dir>/arrays.
    max_train_pairs: use only the first this many training pairs (small runs, tests).
    world_labels: 'drawn' (default), or on the embedded world 'gold_probability' / 'gold_sign'
      (`gold_targets`): a diagnostic of label noise; such a model is no proxy reward, since it
      has seen the gold.
    lenient: skip bad data lines (listed in run_dir/skipped_lines.json) instead of stopping at
      the first with an error that names its file and line.

  Returns:
    The loop's TrainResult (exit_code 75 after a preemption save).
  """
  start_time = time.time()
  # Paths as given may be relative to the working directory; what is stored is absolute.
  run_dir, data_dir, vocabulary = (io_utils.abspath(p) for p in (run_dir, data_dir, vocabulary))
  init_t5x_checkpoint = io_utils.optional_abspath(init_t5x_checkpoint)
  init_hf_t5_checkpoint = io_utils.optional_abspath(init_hf_t5_checkpoint)
  cache_dir = io_utils.optional_abspath(cache_dir)
  _check_arguments(property_name, world_labels, init_t5x_checkpoint, init_hf_t5_checkpoint)
  settings = settings or configured_settings()
  if init_hf_checkpoint is not None:
    return _train_decoder(run_dir, data_dir, vocabulary, io_utils.abspath(init_hf_checkpoint),
                          property_name, settings, max_length, resume, max_train_pairs,
                          world_labels, lenient, init_t5x_checkpoint or init_hf_t5_checkpoint)
  config = _model_config(model, vocabulary, init_hf_t5_checkpoint)
  eval_split = data_arrays.validation_split(data_dir, data_arrays.PROPERTY_SUBSETS[property_name])
  mesh = trainer.prepare_run_dir(settings, run_dir, PARAMS_FILE, data_dir,
                                 [f'pairs/{property_name}'], eval_split, resume=resume,
                                 lenient=lenient)
  cache_dir = cache_dir or os.path.join(run_dir, 'arrays')
  lengths = {'prompt_length': prompt_length, 'response_length': response_length}
  train_pairs, eval_pairs, truncation = _pairs(data_dir, vocabulary, property_name, eval_split,
                                               cache_dir, lengths, max_length, max_train_pairs,
                                               world_labels, lenient)
  net = reward_model.RewardModel(config)
  dummy = jnp.ones((1, max_length), jnp.int32)
  adjust = (_load_t5x_fn(init_t5x_checkpoint, config) if init_t5x_checkpoint else
            _load_hf_t5_fn(init_hf_t5_checkpoint, config, mesh) if init_hf_t5_checkpoint else None)
  spec = trainer.TrainerSpec(
      init_params=lambda key: nn.unbox(net.init(key, dummy)['params']),
      boxed_params=jax.eval_shape(net.init, jax.random.key(0), dummy)['params'],
      make_train_step=lambda lr: make_train_step(net, lr), train_arrays=train_pairs,
      evaluate=_evaluate_fn(net, eval_pairs, settings.eval_batch_size,
                            (data_dir, property_name, eval_split)),
      params_file=PARAMS_FILE, info_file=INFO_FILE, summary_file=EVAL_FILE,
      adjust_state=adjust)
  info = {'config': dataclasses.asdict(config), 'vocabulary': vocabulary, 'data_dir': data_dir,
          'property': property_name, 'max_length': max_length, **lengths,
          'world_labels': world_labels, 'init_hf_t5_checkpoint': init_hf_t5_checkpoint}
  summary = {'property': property_name, 'split': eval_split, 'world_labels': world_labels,
             'train_pairs': len(train_pairs['chosen']), 'truncation': truncation}
  result, summary = trainer.run(spec, settings, run_dir, mesh, info, summary, start_time,
                                resume=resume)
  if summary is not None:
    print(json.dumps({k: summary[k] for k in _PRINTED if k in summary}), flush=True)
  return result


def _train_decoder(run_dir: str, data_dir: str, vocabulary: str, checkpoint: str,
                   property_name: str, settings: settings_lib.TrainerSettings, max_length: int,
                   resume: bool, max_train_pairs: int | None, world_labels: str, lenient: bool,
                   encoder_checkpoint: str | None) -> loop.TrainResult:
  """train_reward_model's decoder path, after its own argument checks."""
  from lsc_align.train import decoder_reward_trainer  # pylint: disable=g-import-not-at-top
  if encoder_checkpoint:
    raise ValueError('train_reward_model: init_hf_checkpoint (a decoder) excludes the T5 '
                     'encoder checkpoints init_t5x_checkpoint / init_hf_t5_checkpoint')
  if not io_utils.isdir(checkpoint):
    raise ValueError(f'train_reward_model.init_hf_checkpoint {checkpoint}: no such directory')
  if vocabulary != checkpoint:
    raise ValueError(f'train_reward_model.vocabulary {vocabulary} must be the '
                     f'init_hf_checkpoint directory {checkpoint} (its tokenizer is used)')
  if world_labels != 'drawn':
    raise ValueError(f'train_reward_model.world_labels {world_labels!r}: only \'drawn\' with '
                     'init_hf_checkpoint')
  result = decoder_reward_trainer.train(
      run_dir, data_dir=data_dir, init_hf_checkpoint=checkpoint, property_name=property_name,
      settings=settings, max_length=max_length, resume=resume, max_train_pairs=max_train_pairs,
      lenient=lenient, pair_metrics=pair_metrics, params_file=PARAMS_FILE, info_file=INFO_FILE,
      summary_file=EVAL_FILE)
  return result


def main(args: argparse.Namespace) -> int:
  """`lsc-align train-rm --run_dir DIR [--resume] [--init_(hf_)t5(x)_checkpoint PATH]`."""
  kwargs: dict[str, Any] = {'run_dir': args.run_dir}
  if getattr(args, 'resume', False):
    kwargs['resume'] = True
  for flag in ('init_t5x_checkpoint', 'init_hf_t5_checkpoint'):
    if getattr(args, flag, None):
      kwargs[flag] = getattr(args, flag)
  if getattr(args, 'lenient', None):  # the flag overrides the gin binding
    kwargs['lenient'] = True
  return train_reward_model(**kwargs).exit_code
