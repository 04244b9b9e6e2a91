"""Supervised fine-tuning of π0: `lsc-align sft --run_dir DIR [--resume]`.

Trains the decoder policy (lsc_align.models.policy) on the SFT task: prompt x → chosen response
y+ of the helpful set, minimising the mean next-token cross-entropy of the response tokens (EOS
included; lm_losses.sft_loss), sharded on a ('data', 'model') mesh. Validation (the world's test
split or HH's derived validation split): per-token NLL (= the loss), per-response NLL (summed
over a response's tokens, averaged over responses), perplexity and next-token accuracy.

For the embedded world it also reports, on the validation prompts, the data-collection policy's
entropy per token (an upper bound, lsc_align.world.policy_entropy) and π0's NLL per token
on fresh samples of that policy: cross-entropy = entropy + KL, so the two are directly
comparable. (The validation loss itself is on chosen responses, which are a BT-selected subset
of the policy's samples, so it sits near, not exactly at, the policy's entropy.)

Run directory: as the reward-model trainer (config.gin, checkpoints/, metrics.jsonl, TensorBoard,
arrays/), plus policy_final.msgpack, policy.json and eval.json. `load_policy(run_dir)` returns
(PolicyConfig, params).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from typing import Any, Callable, Mapping

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lsc_align import io_utils
from lsc_align.data import arrays as data_arrays
from lsc_align.models import lm_losses
from lsc_align.models import policy
from lsc_align.train import loop
from lsc_align.train import settings as settings_lib
from lsc_align.train import trainer
from lsc_align.train import trainer_utils
from lsc_align.world import supervision

PARAMS_FILE = 'policy_final.msgpack'
INFO_FILE = 'policy.json'
EVAL_FILE = 'eval.json'


def make_train_step(config: policy.PolicyConfig, learning_rate: optax.Schedule
                    ) -> Callable[[loop.TrainState, Mapping[str, jax.Array]],
                                  tuple[loop.TrainState, dict[str, jax.Array]]]:
  """(state, {'prompt_ids', 'response_ids'}) -> (state, metrics): one SFT update."""

  def train_step(state: loop.TrainState, batch: Mapping[str, jax.Array]):
    def loss_fn(params):
      return lm_losses.sft_loss(params, config, batch['prompt_ids'], batch['response_ids'])

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics = {**metrics, 'grad_norm': optax.global_norm(grads),
               'learning_rate': jnp.asarray(learning_rate(state.step), jnp.float32)}
    return state.apply_gradients(grads), metrics

  return train_step


def make_row_nll_fn(config: policy.PolicyConfig
                    ) -> Callable[[Any, Mapping[str, jax.Array]], dict[str, jax.Array]]:
  """(params, batch) -> per response: summed NLL, token count, correct argmax count [B].

  The same cross-entropy as lm_losses.sft_loss (full softmax), kept per row.
  """

  def row_nll(params: Any, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    response_ids = batch['response_ids']
    tokens, positions = policy.pack_prompt_response(batch['prompt_ids'], response_ids)
    logits, _ = policy.forward(params, config, tokens)
    logits = policy.gather_positions(logits, positions)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                          response_ids)
    weights = (response_ids != policy.PAD_ID).astype(jnp.float32)
    correct = (jnp.argmax(logits, axis=-1) == response_ids).astype(jnp.float32)
    return {'nll': jnp.sum(nll * weights, axis=1), 'tokens': jnp.sum(weights, axis=1),
            'correct': jnp.sum(correct * weights, axis=1)}

  return row_nll


def nll_metrics(rows: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """Per-token and per-response NLL, perplexity, next-token accuracy over all rows."""
  tokens = float(rows['tokens'].sum())
  per_token = float(rows['nll'].sum()) / max(tokens, 1.0)
  per_response = rows['nll'].astype(np.float64)
  half = 1.959963984540054 * per_response.std(ddof=1) / math.sqrt(len(per_response)) if len(
      per_response) > 1 else math.nan
  return {'responses': int(len(per_response)), 'tokens': int(tokens),
          'loss': per_token, 'nll_per_token': per_token,
          'nll_per_response': float(per_response.mean()), 'nll_per_response_ci95_half': half,
          'perplexity': float(np.exp(per_token)),
          'token_accuracy': float(rows['correct'].sum()) / max(tokens, 1.0),
          'tokens_per_response': tokens / max(len(per_response), 1)}


def policy_info(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
  """policy.json: PolicyConfig, vocabulary, prompt/response lengths, final step."""
  return json.loads(io_utils.read_text(os.path.join(os.fspath(run_dir), INFO_FILE)))


def load_policy(run_dir: str | os.PathLike[str]) -> tuple[policy.PolicyConfig, dict[str, Any]]:
  """(config, params as numpy) of a finished SFT run: π0 for sampling, PPO and references."""
  run_dir = os.fspath(run_dir)
  path = os.path.join(run_dir, PARAMS_FILE)
  if not io_utils.exists(path):
    raise FileNotFoundError(f'{path}: no final policy (did the run finish?)')
  config = policy.PolicyConfig(**policy_info(run_dir)['config'])
  return config, trainer_utils.load_params(path)


# This trainer's TrainerSettings where gin binds none (train_sft/TrainerSettings.*).
DEFAULT_SETTINGS: Mapping[str, Any] = {'steps': 2000, 'schedule': 'cosine'}
_SCOPE = 'train_sft'


def configured_settings(**overrides: Any) -> settings_lib.TrainerSettings:
  """This trainer's TrainerSettings: gin's train_sft/TrainerSettings.*, then DEFAULT_SETTINGS,
  with `overrides` over both."""
  return settings_lib.configured(_SCOPE, DEFAULT_SETTINGS, **overrides)


def _model_config(model: policy.PolicyConfig | None, vocabulary: str, length: int
                  ) -> policy.PolicyConfig:
  """The policy's config (default: as gin binds it), checked to cover the vocabulary and a
  prompt and response of `length` tokens."""
  config = model or policy.PolicyConfig()
  num_ids = data_arrays.vocabulary_size(vocabulary)
  if config.vocab_size < num_ids:
    raise ValueError(f'PolicyConfig.vocab_size = {config.vocab_size} is smaller than the '
                     f'vocabulary {vocabulary} ({num_ids} ids)')
  if length > config.max_len:
    raise ValueError(f'train_sft.prompt_length + response_length = {length} exceeds '
                     f'PolicyConfig.max_len = {config.max_len}')
  return config


def _score_fn(config: policy.PolicyConfig, batch_size: int
              ) -> Callable[[Any, Mapping[str, np.ndarray], Any], dict[str, Any]]:
  """(params, rows, mesh) -> nll_metrics of the rows."""
  row_nll = jax.jit(make_row_nll_fn(config))

  def score(params: Any, rows: Mapping[str, np.ndarray], mesh: Any) -> dict[str, Any]:
    return nll_metrics(trainer_utils.batched_apply(lambda b: row_nll(params, b), rows,
                                                   batch_size, mesh))

  return score


def _world_extras_fn(score: Callable[[Any, Mapping[str, np.ndarray], Any], dict[str, Any]],
                     data_dir: str, vocabulary: str, eval_split: str, samples_per_prompt: int,
                     seed: int, lengths: Mapping[str, int]
                     ) -> Callable[[Any, Any], dict[str, Any]]:
  """(params, mesh) -> {'world': π0 against the world's collection policy} ({} off the world)."""

  def world_extras(params: Any, mesh: Any) -> dict[str, Any]:
    if samples_per_prompt <= 0:
      return {}
    world = supervision.collection_policy_comparison(
        data_dir, vocabulary, eval_split, lambda rows: score(params, rows, mesh),
        samples_per_prompt=samples_per_prompt, seed=seed, **lengths)
    return {} if world is None else {'world': world}

  return world_extras


def _printed(summary: Mapping[str, Any]) -> dict[str, Any]:
  """The line a finished run prints: validation NLL, accuracy and the world comparison."""
  printed = {k: summary[k] for k in ('split', 'step', 'nll_per_token', 'nll_per_response',
                                     'token_accuracy', 'seconds')}
  if 'world' in summary:
    printed['policy_entropy_per_token_upper_bound'] = summary['world']['collection_policy'][
        'entropy_per_token_upper_bound']
    printed['sft_nll_per_token_on_policy_samples'] = summary['world'][
        'sft_nll_per_token_on_policy_samples']
  return printed


@gin.configurable
def train_sft(
    run_dir: str,
    data_dir: str = gin.REQUIRED,
    vocabulary: str = gin.REQUIRED,
    model: policy.PolicyConfig | None = None,
    settings: settings_lib.TrainerSettings | None = None,
    prompt_length: int = 32,
    response_length: int = 48,
    resume: bool = False,
    cache_dir: str | None = None,
    max_train_examples: int | None = None,
    world_samples_per_prompt: int = 2,
    lenient: bool = False,
) -> loop.TrainResult:
  """Trains π0 on the SFT task; writes the run directory (module docstring).

  Args:
    run_dir: output directory.
    data_dir: HH-layout root (real HH or a world).
    vocabulary: world vocab.txt or SentencePiece .model; PolicyConfig.vocab_size must be at
      least its size.
    model: default PolicyConfig() as bound by configs/models/policy_*.gin.
    settings: steps, batch size, AdamW ('constant' or 'cosine' after warm-up), intervals, seed
      (init, data order, world samples), mesh; default `configured_settings()` (gin:
      train_sft/TrainerSettings.*).
    prompt_length, response_length: token budgets (prompt keeps its end, response its start);
      their sum must not exceed PolicyConfig.max_len.
    resume: continue from the latest checkpoint.
    cache_dir: tokenised-array cache; default <run_dir>/arrays.
    max_train_examples: use only the first this many training examples.
    world_samples_per_prompt: fresh collection-policy samples per validation prompt for the
      world comparison (0 skips it).
    lenient: skip bad data lines (listed in run_dir/skipped_lines.json) instead of stopping at
      the first with an error that names its file and line.

  Returns:
    The loop's TrainResult (exit_code 75 after a preemption save).
  """
  start_time = time.time()
  # Paths as given may be relative to the working directory; what is stored is absolute.
  run_dir, data_dir, vocabulary = (io_utils.abspath(p) for p in (run_dir, data_dir, vocabulary))
  cache_dir = io_utils.optional_abspath(cache_dir)
  settings = settings or configured_settings()
  config = _model_config(model, vocabulary, prompt_length + response_length)
  eval_split = data_arrays.validation_split(data_dir)
  mesh = trainer.prepare_run_dir(settings, run_dir, PARAMS_FILE, data_dir, ['sft'], eval_split,
                                 resume=resume, lenient=lenient)
  cache_dir = cache_dir or os.path.join(run_dir, 'arrays')
  lengths = {'prompt_length': prompt_length, 'response_length': response_length}
  data = {split: data_arrays.sft_arrays(data_dir, vocabulary, split, cache_dir=cache_dir,
                                        lenient=lenient, **lengths)
          for split in ('train', eval_split)}
  if max_train_examples is not None:
    data['train'] = {k: v[:max_train_examples] for k, v in data['train'].items()}
  truncation = {f'{split}_{name}_full_rows': data_arrays.full_rows(ids)
                for split, arrays in data.items() for name, ids in arrays.items()}
  score = _score_fn(config, settings.eval_batch_size)
  spec = trainer.TrainerSpec(
      init_params=lambda key: policy.init_params(config, key),
      boxed_params=policy.abstract_params(config),
      make_train_step=lambda lr: make_train_step(config, lr), train_arrays=data['train'],
      evaluate=lambda params, mesh_: score(params, data[eval_split], mesh_),
      params_file=PARAMS_FILE, info_file=INFO_FILE, summary_file=EVAL_FILE,
      final_extras=_world_extras_fn(score, data_dir, vocabulary, eval_split,
                                    world_samples_per_prompt, settings.seed, lengths))
  info = {'config': dataclasses.asdict(config), 'vocabulary': vocabulary, 'data_dir': data_dir,
          **lengths}
  summary = {'split': eval_split, 'train_examples': len(data['train']['prompt_ids']),
             'truncation': truncation}
  result, summary = trainer.run(spec, settings, run_dir, mesh, info, summary, start_time,
                                resume=resume)
  if summary is not None:
    print(json.dumps(_printed(summary)), flush=True)
  return result


def main(args: argparse.Namespace) -> int:
  """`lsc-align sft --run_dir DIR [--resume]`."""
  kwargs: dict[str, Any] = {'run_dir': args.run_dir}
  if getattr(args, 'resume', False):
    kwargs['resume'] = True
  if getattr(args, 'lenient', None):  # the flag overrides the gin binding
    kwargs['lenient'] = True
  return train_sft(**kwargs).exit_code
