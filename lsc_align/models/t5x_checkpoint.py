"""T5X legacy msgpack checkpoints <-> this project's T5 encoder parameter tree.

A legacy T5X checkpoint (`checkpoint_<step>`, one msgpack file) holds
`{'optimizer': {'target': params, 'state': {'step', 'param_states'}}, 'version': 3}`.
Our encoder uses T5X's names, so loading is a lookup of each expected path
(`token_embedder/...`, `encoder/...`) in `optimizer/target`: no renaming table exists to get
wrong. Loading checks every name and shape and reports what was used and what was not
(decoder, logits). Export writes a param tree back under `optimizer/target` atomically.

    params, report = t5x_checkpoint.load_encoder_params(path, TINY_CHECKPOINT_CONFIG)
    print(report.summary())
    variables = {'params': t5x_checkpoint.insert_encoder_params(variables['params'], params)}
"""
from __future__ import annotations

import copy
import dataclasses
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import serialization
from flax import traverse_util

from lsc_align import io_utils
from lsc_align.models import t5_encoder

LEGACY_VERSION = 3

# The test checkpoint at ../shared/data/t5x/test_t5_tiny.checkpoint_0 (T5 v1.1 layout).
TINY_CHECKPOINT_CONFIG = t5_encoder.T5EncoderConfig(
    vocab_size=32128, emb_dim=8, num_heads=4, head_dim=3, mlp_dim=16, num_layers=2,
    mlp_activations=('gelu', 'linear'), dropout_rate=0.0, relpos_num_buckets=32,
    relpos_max_distance=128)


@dataclasses.dataclass(frozen=True)
class EncoderLoadReport:
  """What a load did: every encoder param taken (with shape) and every checkpoint param left."""
  checkpoint: str
  used: dict[str, tuple[int, ...]]
  unused: tuple[str, ...]
  cast_to_float32: tuple[str, ...]

  def summary(self) -> str:
    unused_roots = sorted({name.split('/')[0] for name in self.unused})
    return (f'{self.checkpoint}: {len(self.used)} encoder params loaded, shapes match; '
            f'{len(self.unused)} checkpoint params unused (under {unused_roots}); '
            f'{len(self.cast_to_float32)} cast to float32')


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
  """The whole restored state dict of a legacy T5X checkpoint file.

  Raises:
    ValueError: the file is not msgpack or has no `optimizer/target`.
  """
  path = os.fspath(path)
  try:
    state = serialization.msgpack_restore(io_utils.read_bytes(path))
  except Exception as e:  # msgpack raises several types for a corrupt file
    raise ValueError(f'{path}: not a msgpack T5X checkpoint ({e})') from e
  if not isinstance(state, dict) or not isinstance(state.get('optimizer', {}).get('target'), dict):
    raise ValueError(f'{path}: no optimizer/target in checkpoint (legacy T5X layout expected)')
  return state


def flat_names(tree: Mapping[str, Any]) -> dict[str, Any]:
  """{'a/b/c': leaf} for a nested dict."""
  return traverse_util.flatten_dict(dict(tree), sep='/')


def expected_encoder_shapes(config: t5_encoder.T5EncoderConfig) -> dict[str, tuple[int, ...]]:
  """'/'-joined name -> shape of every parameter of `T5Encoder(config)` (no allocation)."""
  abstract = jax.eval_shape(t5_encoder.T5Encoder(config).init, jax.random.key(0),
                            jnp.ones((1, 1), jnp.int32))
  return {k: tuple(v.shape) for k, v in flat_names(nn.unbox(abstract['params'])).items()}


def infer_encoder_config(target: Mapping[str, Any], **overrides: Any) -> t5_encoder.T5EncoderConfig:
  """Encoder sizes read off a checkpoint's `optimizer/target` (activations etc. via overrides)."""
  flat = flat_names(target)
  try:
    vocab, emb = flat['token_embedder/embedding'].shape
    heads, buckets = flat['encoder/relpos_bias/rel_embedding'].shape
    joined = flat['encoder/layers_0/attention/query/kernel'].shape[1]
    mlp_names = sorted(k for k in flat if k.startswith('encoder/layers_0/mlp/wi'))
    mlp_dim = flat[mlp_names[0]].shape[1]
  except (KeyError, IndexError) as e:
    raise ValueError(f'checkpoint target lacks encoder param {e}') from e
  num_layers = len({k.split('/')[1] for k in flat if k.startswith('encoder/layers_')})
  sizes = dict(vocab_size=vocab, emb_dim=emb, num_heads=heads, head_dim=joined // heads,
               mlp_dim=mlp_dim, num_layers=num_layers, relpos_num_buckets=buckets)
  if len(mlp_names) == 1:
    sizes['mlp_activations'] = ('relu',)
  return t5_encoder.T5EncoderConfig(**{**sizes, **overrides})


def load_encoder_params(path: str | os.PathLike[str], config: t5_encoder.T5EncoderConfig
                        ) -> tuple[dict[str, Any], EncoderLoadReport]:
  """Encoder params of `T5Encoder(config)` taken from a T5X checkpoint, as float32 numpy.

  Returns:
    (params, report): `params` is the nested {'token_embedder': ..., 'encoder': ...} tree
    (the content of the 'params' collection); the report lists used and unused names.

  Raises:
    ValueError: naming the first parameter that is missing or has another shape.
  """
  path = os.fspath(path)
  target = flat_names(read_checkpoint(path)['optimizer']['target'])
  expected = expected_encoder_shapes(config)
  loaded, cast = {}, []
  for name, shape in sorted(expected.items()):
    if name not in target:
      raise ValueError(f'{path}: encoder param {name} {shape} missing from optimizer/target')
    value = np.asarray(target[name])
    if tuple(value.shape) != shape:
      raise ValueError(f'{path}: param {name} has shape {tuple(value.shape)}, '
                       f'the encoder config expects {shape}')
    if value.dtype != np.float32:
      cast.append(name)
    loaded[name] = value.astype(np.float32)
  report = EncoderLoadReport(
      checkpoint=path, used={k: expected[k] for k in sorted(expected)},
      unused=tuple(sorted(set(target) - set(expected))), cast_to_float32=tuple(cast))
  return traverse_util.unflatten_dict(loaded, sep='/'), report


def insert_encoder_params(params: Mapping[str, Any], encoder_params: Mapping[str, Any]) -> dict:
  """`params` (e.g. a RewardModel's, boxed or not) with its encoder leaves replaced.

  Boxes (`nn.LogicallyPartitioned`) are kept, so sharding annotations survive the load.

  Raises:
    ValueError: an encoder param is absent from `params` or has another shape.
  """
  is_box = lambda x: isinstance(x, nn.LogicallyPartitioned)
  flat = flat_names(params)  # boxes are not dicts, so they stay whole as leaves
  for name, value in flat_names(encoder_params).items():
    if name not in flat:
      raise ValueError(f'encoder param {name} not in the model params')
    old = flat[name]
    old_shape = tuple((old.value if is_box(old) else old).shape)
    if tuple(np.shape(value)) != old_shape:
      raise ValueError(f'encoder param {name} has shape {np.shape(value)}, model has {old_shape}')
    new = jnp.asarray(value, jnp.float32)
    flat[name] = old.replace_boxed(new) if is_box(old) else new
  return traverse_util.unflatten_dict(flat, sep='/')


def export_checkpoint(path: str | os.PathLike[str], params: Mapping[str, Any], *,
                      base_checkpoint: str | os.PathLike[str] | None = None,
                      step: int | None = None) -> list[str]:
  """Writes `params` (all of them: encoder and any heads) to `optimizer/target`, atomically.

  With `base_checkpoint`, its whole state (decoder, optimizer state, version) is kept and only
  the given params are replaced, each checked against the base's shape; new names (a reward
  head) are added. Without it the file holds just the params and `state.step`. Arrays are
  gathered to the host (one process; with several, gather with process_allgather first).

  Returns:
    The '/'-joined names written.

  Raises:
    ValueError: a param replaces a base param of another shape.
  """
  host = flat_names(jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x)),
                                           nn.unbox(dict(params))))
  if base_checkpoint is not None:
    state = copy.deepcopy(read_checkpoint(base_checkpoint))
  else:
    state = {'optimizer': {'state': {'param_states': {}, 'step': np.asarray(0, np.int32)},
                           'target': {}},
             'version': LEGACY_VERSION}
  target = flat_names(state['optimizer']['target'])
  for name, value in host.items():
    if name in target and tuple(np.shape(target[name])) != value.shape:
      raise ValueError(f'param {name} has shape {value.shape}, base checkpoint '
                       f'{base_checkpoint} has {np.shape(target[name])}')
    target[name] = value
  state['optimizer']['target'] = traverse_util.unflatten_dict(target, sep='/')
  if step is not None:
    state['optimizer'].setdefault('state', {})['step'] = np.asarray(step, np.int32)
  io_utils.atomic_write_bytes(os.fspath(path), serialization.msgpack_serialize(state))
  return sorted(host)
