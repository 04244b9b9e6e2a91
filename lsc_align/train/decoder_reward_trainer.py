"""Bradley-Terry training of a decoder reward model started from a Hugging Face checkpoint.

`train_reward_model.init_hf_checkpoint` selects this path: the backbone (Llama, Qwen2/3,
Gemma 2/3) comes from a `*ForCausalLM` checkpoint with a fresh score head, or from a
`*ForSequenceClassification` one with its own head (models/pretrained.py). The pairs are
tokenised with the checkpoint's tokenizer (data.arrays.checkpoint_pair_arrays); the reward is
read where pretrained.reward_scores reads it. The run directory is a train-rm one:
rm_final.msgpack (the backbone's tree plus 'score'), reward_model.json (kind 'decoder', the
PolicyConfig, the checkpoint path, the pad id) and eval.json; `load_run` gives back a
PretrainedRewardModel.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Mapping

from flax import linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lsc_align import io_utils
from lsc_align.data import arrays as data_arrays
from lsc_align.models import checkpoint_tokenizer
from lsc_align.models import hf_families
from lsc_align.models import policy
from lsc_align.models import pretrained
from lsc_align.models import reward_model
from lsc_align.train import loop
from lsc_align.train import settings as settings_lib
from lsc_align.train import trainer
from lsc_align.train import trainer_utils

KIND = pretrained.DECODER_KIND


def checkpoint_setup(path: str, max_length: int
                     ) -> tuple[dict[str, Any], str, policy.PolicyConfig, bool]:
  """(config.json, family, the backbone's PolicyConfig, is a sequence classifier)."""
  hf = pretrained.read_config(path)
  where = os.path.join(path, pretrained.CONFIG_FILE)
  family = hf_families.family_of(hf, where)
  seqcls = any(str(a).endswith(pretrained.SEQCLS_SUFFIX) for a in hf.get('architectures') or [])
  if seqcls and pretrained.num_labels(hf) != 1:
    raise ValueError(f'{where}: num_labels is {pretrained.num_labels(hf)}; a reward model has '
                     f'exactly 1')
  config = dataclasses.replace(hf_families.policy_config(hf, max_len=max_length, where=where),
                               tie_embeddings=True)
  return hf, family, config, seqcls


def _boxed_params(config: policy.PolicyConfig) -> Any:
  boxed = dict(policy.abstract_params(config))
  boxed.pop('value_head')
  score = jax.ShapeDtypeStruct((config.emb_dim,), jnp.float32)
  return {**boxed, 'score': {'kernel': nn.LogicallyPartitioned(score, ('embed',))}}


def _init_params(config: policy.PolicyConfig, key: jax.Array) -> Any:
  backbone_key, score_key = jax.random.split(key)
  params = dict(policy.init_params(config, backbone_key))
  params.pop('value_head')
  score = jax.random.normal(score_key, (config.emb_dim,), jnp.float32) * config.emb_dim ** -0.5
  return {**params, 'score': {'kernel': score}}


def _load_fn(path: str, family: str, config: policy.PolicyConfig, seqcls: bool, mesh: Any
             ) -> Callable[[loop.TrainState, loop.TrainState], loop.TrainState]:
  """(state, shardings) -> state with the checkpoint's backbone (and score head if it has one)."""

  def load(state: loop.TrainState, shardings: loop.TrainState) -> loop.TrainState:
    extra = (pretrained.SCORE_TENSOR,) if seqcls else ()
    flat, _, reader = pretrained.read_tensors(path, config, family, mesh, np.dtype('float32'),
                                              extra=extra)
    params = {**traverse_util.unflatten_dict(flat, sep='/'), 'score': state.params['score']}
    if seqcls:
      row = reader.read(pretrained.SCORE_TENSOR)[0].astype(np.float32)
      params['score'] = {'kernel': jax.device_put(row, shardings.params['score']['kernel'])}
    return state.replace(params=params)

  return load


def _rewards(params: Any, config: policy.PolicyConfig, ids: jax.Array, lengths: jax.Array,
             pad_id: int) -> jax.Array:
  mask = (jnp.arange(ids.shape[1])[None] < lengths[:, None]).astype(jnp.int32)
  return pretrained.decoder_rewards(params, config, ids, mask, pad_id)


def _pair_rewards(params: Any, config: policy.PolicyConfig, batch: Mapping[str, jax.Array],
                  pad_id: int) -> tuple[jax.Array, jax.Array]:
  ids = jnp.concatenate([batch['chosen'], batch['rejected']])
  lengths = jnp.concatenate([batch['chosen_lengths'], batch['rejected_lengths']])
  return tuple(jnp.split(_rewards(params, config, ids, lengths, pad_id), 2))


def make_train_step(config: policy.PolicyConfig, pad_id: int, learning_rate: optax.Schedule
                    ) -> Callable[[loop.TrainState, Mapping[str, jax.Array]],
                                  tuple[loop.TrainState, dict[str, jax.Array]]]:
  """(state, {'chosen', 'rejected' [B, L], '*_lengths' [B]}) -> (state, metrics): one BT step."""

  def train_step(state: loop.TrainState, batch: Mapping[str, jax.Array]):
    def loss_fn(params):
      chosen, rejected = _pair_rewards(params, config, batch, pad_id)
      return jnp.mean(reward_model.bradley_terry_loss(chosen, rejected)), (chosen, rejected)

    (loss, (chosen, rejected)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics = {'loss': loss, 'accuracy': reward_model.pairwise_accuracy(chosen, rejected),
               'reward_margin': jnp.mean(chosen - rejected), 'grad_norm': optax.global_norm(grads),
               'learning_rate': jnp.asarray(learning_rate(state.step), jnp.float32)}
    return state.apply_gradients(grads), metrics

  return train_step


def train(run_dir: str, *, data_dir: str, init_hf_checkpoint: str, property_name: str,
          settings: settings_lib.TrainerSettings, max_length: int, resume: bool,
          max_train_pairs: int | None, lenient: bool,
          pair_metrics: Callable[[np.ndarray, np.ndarray], dict[str, Any]],
          params_file: str, info_file: str, summary_file: str) -> loop.TrainResult:
  """The decoder path of train_reward_model (its arguments, already checked and absolute)."""
  start_time = time.time()
  hf, family, config, seqcls = checkpoint_setup(init_hf_checkpoint, max_length)
  tokenizer = checkpoint_tokenizer.load_tokenizer(init_hf_checkpoint)
  tokenizer.check_fits(config.vocab_size)
  pad_id = hf.get('pad_token_id') if seqcls and hf.get('pad_token_id') is not None else \
      tokenizer.pad_id
  eval_split = data_arrays.validation_split(data_dir, data_arrays.PROPERTY_SUBSETS[property_name])
  mesh = trainer.prepare_run_dir(settings, run_dir, params_file, data_dir,
                                 [f'pairs/{property_name}'], eval_split, resume=resume,
                                 lenient=lenient)
  pairs, truncated = {}, {}
  for split, limit in (('train', max_train_pairs), (eval_split, None)):
    pairs[split], truncated[split] = data_arrays.checkpoint_pair_arrays(
        data_dir, tokenizer, property_name, split, max_length=max_length, lenient=lenient,
        max_pairs=limit)
  reward_fn = jax.jit(lambda params, batch: dict(zip(
      ('chosen', 'rejected'), _pair_rewards(params, config, batch, pad_id))))

  def evaluate(params: Any, mesh_: Any) -> dict[str, Any]:
    rewards = trainer_utils.batched_apply(lambda batch: reward_fn(params, batch),
                                          pairs[eval_split], settings.eval_batch_size, mesh_)
    return pair_metrics(rewards['chosen'], rewards['rejected'])

  spec = trainer.TrainerSpec(
      init_params=lambda key: _init_params(config, key), boxed_params=_boxed_params(config),
      make_train_step=lambda lr: make_train_step(config, pad_id, lr),
      train_arrays=pairs['train'], evaluate=evaluate, params_file=params_file,
      info_file=info_file, summary_file=summary_file,
      adjust_state=_load_fn(init_hf_checkpoint, family, config, seqcls, mesh))
  info = {'kind': KIND, 'config': dataclasses.asdict(config), 'family': family,
          'init_hf_checkpoint': init_hf_checkpoint, 'pad_id': pad_id, 'data_dir': data_dir,
          'property': property_name, 'max_length': max_length,
          'tokenizer_fingerprint': tokenizer.fingerprint}
  summary = {'property': property_name, 'split': eval_split, 'kind': KIND,
             'train_pairs': len(pairs['train']['chosen']),
             'truncation': {f'{split}_truncated_rows': n for split, n in truncated.items()}}
  result, _ = trainer.run(spec, settings, run_dir, mesh, info, summary, start_time,
                          resume=resume)
  return result


def load_run(run_dir: str, info: Mapping[str, Any], params: Any, *,
             mesh: Any = None) -> pretrained.PretrainedRewardModel:
  """A finished decoder run as a PretrainedRewardModel (scores, export through pretrained)."""
  source = info['init_hf_checkpoint']
  hf = pretrained.read_config(source)
  hf_families.family_of(hf)
  reader_dtypes = {}
  names = {t.checkpoint for t in pretrained.tensor_plan(policy.PolicyConfig(**info['config']),
                                                        info['family'])}
  reader = pretrained.safetensors_io.CheckpointReader(source)
  for name in names:
    reader_dtypes[name] = reader.dtype(name)
  if pretrained.SCORE_TENSOR in reader.names():
    reader_dtypes[pretrained.SCORE_TENSOR] = reader.dtype(pretrained.SCORE_TENSOR)
  mesh = mesh or pretrained._single_device_mesh()  # pylint: disable=protected-access
  return pretrained.PretrainedRewardModel(
      kind=KIND, config=policy.PolicyConfig(**info['config']),
      params=jax.tree.map(jnp.asarray, params), mesh=mesh,
      tokenizer=checkpoint_tokenizer.load_tokenizer(source), source=source,
      family=info['family'], hf_config=hf, tensor_dtypes=reader_dtypes, pad_id=info['pad_id'])
