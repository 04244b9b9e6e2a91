"""Hugging Face T5 checkpoints (T5EncoderModel, T5ForConditionalGeneration) -> our T5 encoder.

A checkpoint directory holds `config.json`, `model.safetensors` (or shards named by
`model.safetensors.index.json`) and a tokenizer (`spiece.model` or `tokenizer.json`). Its encoder
becomes the T5X-named tree of `t5_encoder.T5Encoder` (and of the reward models' encoder) through
one table, `HF_T5_ENCODER_TABLE`; the decoder, `lm_head` and anything else outside `encoder.` are
not read. The math is the same as transformers' on every real (non-pad) position: RMS norm,
pre-norm blocks, unscaled attention logits, one relative position bias shared by the layers (HF
stores it in block 0), ReLU (original T5) or gated tanh-GELU (v1.1, `gelu_new`) MLPs.

    config, params, tokenizer = hf_t5.load_hf_t5_encoder('/ckpt/flan-t5-base', mesh=mesh)
    encodings = t5_encoder.T5Encoder(config).apply({'params': params}, tokens)

Architecture (sizes, activation, buckets, epsilon) comes from config.json; the run's numerics
(activation dtype, dropout, float32 attention logits) from a `base` T5EncoderConfig, so a gin
model config keeps deciding those.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

from lsc_align import io_utils
from lsc_align import partitioning
from lsc_align.models import checkpoint_tokenizer
from lsc_align.models import reward_model
from lsc_align.models import safetensors_io
from lsc_align.models import t5_encoder
from lsc_align.models import t5x_checkpoint

CONFIG_FILE = 'config.json'
KEEP, TRANSPOSE = 'keep', 'transpose'

# Hugging Face tensor -> our parameter ({i}: layer), and how the HF tensor becomes ours.
# HF Linear weights are [out, in]; our kernels are [in, out]. Heads are the major half of the
# joined axis in both ([heads * head_dim]), so a transpose is all attention needs.
HF_T5_ENCODER_TABLE: tuple[tuple[str, str, str], ...] = (
    # [vocab, d_model] -> [vocab, emb]
    ('shared.weight', 'token_embedder/embedding', KEEP),
    # [buckets, heads] -> [heads, buckets]; only block 0 has it, every layer uses it
    ('encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight',
     'encoder/relpos_bias/rel_embedding', TRANSPOSE),
    # [d_model] -> [emb]
    ('encoder.block.{i}.layer.0.layer_norm.weight',
     'encoder/layers_{i}/pre_attention_layer_norm/scale', KEEP),
    # [heads * d_kv, d_model] -> [emb, heads * head_dim]
    ('encoder.block.{i}.layer.0.SelfAttention.q.weight',
     'encoder/layers_{i}/attention/query/kernel', TRANSPOSE),
    ('encoder.block.{i}.layer.0.SelfAttention.k.weight',
     'encoder/layers_{i}/attention/key/kernel', TRANSPOSE),
    ('encoder.block.{i}.layer.0.SelfAttention.v.weight',
     'encoder/layers_{i}/attention/value/kernel', TRANSPOSE),
    # [d_model, heads * d_kv] -> [heads * head_dim, emb]
    ('encoder.block.{i}.layer.0.SelfAttention.o.weight',
     'encoder/layers_{i}/attention/out/kernel', TRANSPOSE),
    # [d_model] -> [emb]
    ('encoder.block.{i}.layer.1.layer_norm.weight',
     'encoder/layers_{i}/pre_mlp_layer_norm/scale', KEEP),
    # [d_ff, d_model] -> [emb, mlp]: wi (relu), or wi_0 (gelu branch) and wi_1 (linear branch)
    ('encoder.block.{i}.layer.1.DenseReluDense.wi.weight',
     'encoder/layers_{i}/mlp/wi/kernel', TRANSPOSE),
    ('encoder.block.{i}.layer.1.DenseReluDense.wi_0.weight',
     'encoder/layers_{i}/mlp/wi_0/kernel', TRANSPOSE),
    ('encoder.block.{i}.layer.1.DenseReluDense.wi_1.weight',
     'encoder/layers_{i}/mlp/wi_1/kernel', TRANSPOSE),
    # [d_model, d_ff] -> [mlp, emb]
    ('encoder.block.{i}.layer.1.DenseReluDense.wo.weight',
     'encoder/layers_{i}/mlp/wo/kernel', TRANSPOSE),
    # [d_model] -> [emb]
    ('encoder.final_layer_norm.weight', 'encoder/encoder_norm/scale', KEEP),
)
# T5EncoderModel ties encoder.embed_tokens to shared; a file may keep either name.
EMBEDDING_ALIAS = 'encoder.embed_tokens.weight'
_TRANSFORMS = {KEEP: lambda x: x, TRANSPOSE: lambda x: x.T}

# feed_forward_proj -> our MLP activations (transformers maps 'gated-gelu' to gelu_new, the tanh
# GELU that flax's nn.gelu computes).
FEED_FORWARD_PROJ = {'relu': ('relu',), 'gated-gelu': ('gelu', 'linear')}
_DENSE_ACT_FN = {'relu': ('relu', False), 'gated-gelu': ('gelu_new', True)}
MODEL_TYPES = ('t5', 'mt5')  # mT5 is T5 v1.1's architecture under another name
# transformers' T5Config defaults, used for keys a (hand-written) config.json leaves out.
HF_T5_DEFAULTS = {'vocab_size': 32128, 'd_model': 512, 'd_kv': 64, 'd_ff': 2048,
                  'num_layers': 6, 'num_heads': 8, 'relative_attention_num_buckets': 32,
                  'relative_attention_max_distance': 128, 'layer_norm_epsilon': 1e-6,
                  'feed_forward_proj': 'relu'}
# config.json key -> T5EncoderConfig field
_SIZES = (('vocab_size', 'vocab_size'), ('d_model', 'emb_dim'), ('num_heads', 'num_heads'),
          ('d_kv', 'head_dim'), ('d_ff', 'mlp_dim'), ('num_layers', 'num_layers'),
          ('relative_attention_num_buckets', 'relpos_num_buckets'),
          ('relative_attention_max_distance', 'relpos_max_distance'))


def encoder_config_from_hf(hf_config: Mapping[str, Any], *, source: str = CONFIG_FILE,
                           base: t5_encoder.T5EncoderConfig | None = None
                           ) -> t5_encoder.T5EncoderConfig:
  """The T5EncoderConfig of a transformers T5 config (4.x or 5.x config.json).

  Sizes, activation, buckets and epsilon come from `hf_config`; dtype, dropout_rate and
  float32_attention_logits from `base` (default T5EncoderConfig()).

  Raises:
    ValueError: naming `source` and the key, for another model_type, a size that is not a
      positive integer, or an unsupported feed_forward_proj.
  """
  model_type = hf_config.get('model_type')
  if model_type not in MODEL_TYPES:
    raise ValueError(f'{source}: model_type {model_type!r} is not a T5 ({MODEL_TYPES})')
  values = {**HF_T5_DEFAULTS, **{k: hf_config[k] for k in HF_T5_DEFAULTS if k in hf_config}}
  fields: dict[str, Any] = {}
  for key, field in _SIZES:
    value = values[key]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
      raise ValueError(f'{source}: {key} must be a positive integer, got {value!r}')
    fields[field] = value
  proj = values['feed_forward_proj']
  if proj not in FEED_FORWARD_PROJ:
    raise ValueError(f'{source}: feed_forward_proj {proj!r} is not supported '
                     f'(one of {sorted(FEED_FORWARD_PROJ)})')
  act_fn, gated = _DENSE_ACT_FN[proj]
  for key, want in (('dense_act_fn', act_fn), ('is_gated_act', gated)):
    if key in hf_config and hf_config[key] != want:
      raise ValueError(f'{source}: {key} {hf_config[key]!r} contradicts feed_forward_proj '
                       f'{proj!r} (which gives {want!r})')
  epsilon = values['layer_norm_epsilon']
  if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or epsilon <= 0:
    raise ValueError(f'{source}: layer_norm_epsilon must be a positive number, got {epsilon!r}')
  return dataclasses.replace(base or t5_encoder.T5EncoderConfig(), **fields,
                             mlp_activations=FEED_FORWARD_PROJ[proj],
                             layer_norm_epsilon=float(epsilon))


def _checkpoint_dir(path: str | os.PathLike[str]) -> str:
  directory = io_utils.abspath(path)
  if not io_utils.isdir(directory):
    raise FileNotFoundError(f'{directory}: no such checkpoint directory')
  return directory


def read_encoder_config(path: str | os.PathLike[str], *,
                        base: t5_encoder.T5EncoderConfig | None = None
                        ) -> t5_encoder.T5EncoderConfig:
  """`encoder_config_from_hf` of a checkpoint directory's config.json."""
  source = os.path.join(_checkpoint_dir(path), CONFIG_FILE)
  if not io_utils.exists(source):
    raise FileNotFoundError(f'{source}: no such file (a Hugging Face checkpoint has one)')
  try:
    hf_config = json.loads(io_utils.read_text(source))
  except json.JSONDecodeError as e:
    raise ValueError(f'{source}: not valid JSON ({e})') from e
  if not isinstance(hf_config, dict):
    raise ValueError(f'{source}: expected a JSON object')
  return encoder_config_from_hf(hf_config, source=source, base=base)


def reward_model_config(path: str | os.PathLike[str],
                        base: reward_model.RewardModelConfig | None = None
                        ) -> reward_model.RewardModelConfig:
  """`base` (pooling, head, encoder numerics) with the checkpoint's encoder architecture."""
  base = base or reward_model.RewardModelConfig()
  return dataclasses.replace(base, encoder=read_encoder_config(path, base=base.encoder))


def tensor_names(config: t5_encoder.T5EncoderConfig) -> dict[str, tuple[str, str]]:
  """Our parameter name -> (Hugging Face tensor name, transform) for every encoder param."""
  expected = t5x_checkpoint.expected_encoder_shapes(config)
  table = {}
  for hf, ours, transform in HF_T5_ENCODER_TABLE:
    for i in range(config.num_layers) if '{i}' in ours else [None]:
      name = ours.format(i=i)
      if name in expected:
        table[name] = (hf.format(i=i), transform)
  missing = sorted(set(expected) - set(table))
  if missing:  # the table must cover every parameter the encoder has
    raise ValueError(f'no Hugging Face T5 tensor maps to encoder param {missing[0]}')
  return table


def load_hf_t5_encoder(path: str | os.PathLike[str], *, mesh: jax.sharding.Mesh | None = None,
                       base: t5_encoder.T5EncoderConfig | None = None
                       ) -> tuple[t5_encoder.T5EncoderConfig, dict[str, Any],
                                  checkpoint_tokenizer.CheckpointTokenizer]:
  """(encoder config, encoder params, tokenizer) of a Hugging Face T5 checkpoint directory.

  Args:
    path: a T5EncoderModel or T5ForConditionalGeneration directory (the decoder is not read).
    mesh: if given, each tensor goes onto it as it is read, sharded by the logical-axis rules;
      else params are float32 numpy.
    base: the run's numerics (dtype, dropout, float32 logits); see encoder_config_from_hf.

  Returns:
    The T5EncoderConfig, the {'token_embedder': ..., 'encoder': ...} params (float32) and the
    checkpoint's tokenizer (pad id 0, every id inside the embedding table).

  Raises:
    FileNotFoundError: no such directory, no config.json, weights or tokenizer file.
    ValueError: one line naming the file and the tensor or key: no encoder tensors, a missing
      or unknown encoder tensor, a shape config.json does not give, an unsupported config.
  """
  directory = _checkpoint_dir(path)
  config = read_encoder_config(directory, base=base)
  tensors = safetensors_io.CheckpointReader(directory)
  present = tensors.names()
  if not any(name.startswith('encoder.') for name in present):
    raise ValueError(f'{directory}: has no T5 encoder (no encoder.* tensor among '
                     f'{len(present)} tensors)')
  table = tensor_names(config)
  if table['token_embedder/embedding'][0] not in present and EMBEDDING_ALIAS in present:
    table['token_embedder/embedding'] = (EMBEDDING_ALIAS, KEEP)
  known = {hf for hf, _ in table.values()} | {EMBEDDING_ALIAS}
  unknown = [n for n in present if n.startswith('encoder.') and n not in known]
  if unknown:  # an encoder tensor we would silently drop means a different model
    raise ValueError(f'{os.path.join(directory, tensors.file(unknown[0]))}: encoder tensor {unknown[0]} is not a T5 '
                     f'encoder tensor of config.json\'s architecture')
  tokenizer = checkpoint_tokenizer.load_tokenizer(directory)
  if tokenizer.pad_id != 0:  # the encoder treats id 0, and only id 0, as padding
    raise ValueError(f'{directory}: the tokenizer pads with id {tokenizer.pad_id}; the T5 '
                     'encoder needs pad id 0')
  tokenizer.check_fits(config.vocab_size)
  expected = t5x_checkpoint.expected_encoder_shapes(config)
  shardings = {}
  if mesh is not None:
    boxed = jax.eval_shape(t5_encoder.T5Encoder(config).init, jax.random.key(0),
                           jnp.ones((1, 1), jnp.int32))['params']
    shardings = t5x_checkpoint.flat_names(partitioning.logical_shardings(boxed, mesh))
  flat = {}
  for name, (hf, transform) in sorted(table.items()):
    if hf not in present:
      raise ValueError(f'{directory}: tensor {hf} (encoder param {name}) is missing')
    want = expected[name] if transform == KEEP else expected[name][::-1]
    if tensors.shape(hf) != want:
      raise ValueError(f'{tensors.file(hf)}: tensor {hf} has shape {tensors.shape(hf)}, '
                       f'config.json gives {want}')
    value = np.ascontiguousarray(_TRANSFORMS[transform](tensors.read(hf).astype(np.float32)))
    if mesh is None:
      flat[name] = value
    else:
      flat[name] = jax.make_array_from_callback(value.shape, shardings[name],
                                                lambda index, v=value: v[index])
  ignored = len(present) - len({hf for hf, _ in table.values()})
  logging.info('%s: %d T5 encoder tensors loaded, %d others (decoder, lm_head) not read',
               directory, len(flat), ignored)
  return config, traverse_util.unflatten_dict(flat, sep='/'), tokenizer


def load_hf_t5_reward_model(path: str | os.PathLike[str], rng: jax.Array, *,
                            base: reward_model.RewardModelConfig | None = None,
                            mesh: jax.sharding.Mesh | None = None
                            ) -> tuple[reward_model.RewardModelConfig, dict[str, Any],
                                       checkpoint_tokenizer.CheckpointTokenizer]:
  """(config, params, tokenizer) of a RewardModel whose encoder is the checkpoint's.

  The head is fresh: exactly what `RewardModel(config).init(rng, ...)` gives it (the rest of
  that init is dead code under jit, so the random encoder is never materialised). `base` sets
  pooling, head_bias and the encoder's numerics; `mesh` as for load_hf_t5_encoder.
  """
  base = base or reward_model.RewardModelConfig()
  encoder_config, params, tokenizer = load_hf_t5_encoder(path, mesh=mesh, base=base.encoder)
  config = dataclasses.replace(base, encoder=encoder_config)
  net = reward_model.RewardModel(config)
  dummy = jnp.ones((1, 1), jnp.int32)
  head = lambda key: nn.unbox(net.init(key, dummy)['params'])['reward_head']
  out_shardings = None
  if mesh is not None:
    boxed = jax.eval_shape(net.init, rng, dummy)['params']
    out_shardings = partitioning.logical_shardings(boxed, mesh)['reward_head']
  reward_head = jax.jit(head, out_shardings=out_shardings)(rng)
  if mesh is None:
    reward_head = jax.tree.map(np.asarray, reward_head)
  return config, {**params, 'reward_head': reward_head}, tokenizer
