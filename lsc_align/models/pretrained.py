"""Pretrained decoders in the Hugging Face layout, into the policy and back out.

    model = pretrained.load('/ckpt/Qwen2.5-0.5B', mesh=mesh)      # config.json + safetensors
    logits_BxLxV = pretrained.logits(model, token_ids_BxL)        # float32
    ids_BxN = pretrained.generate(model, prompt_ids_BxLp, 32)     # KV-cache sampler, greedy
    pretrained.export(model, '/out/aligned')                      # the same layout and dtypes

Loading reads config.json (hf_families: the family, the PolicyConfig), then each parameter's
checkpoint tensor in turn through its family's table, and puts it on the mesh with the sharding
the logical-axis rules give, each device receiving its own slice
(`jax.make_array_from_callback`): a host holds one full tensor at a time beyond its shards.
The value head (not in the checkpoint) starts fresh from its own seed. Parameters are held in
`dtype` (float32 by default: the project trains float32 master weights); the computation runs
in `compute_dtype`.

Export reads the table backwards: each parameter is fetched to the host in turn, laid out as
the checkpoint's tensor and cast to the dtype that tensor had in the source. The directory
(config.json, generation_config.json, safetensors, the source's tokenizer files) is written
under a temporary name and renamed into place, so a failure leaves nothing half-written.
The value head is not exported (the layout has no place for it).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import shutil
import tempfile
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

from lsc_align import io_utils
from lsc_align import partitioning
from lsc_align.models import checkpoint_tokenizer
from lsc_align.models import hf_families
from lsc_align.models import policy
from lsc_align.models import safetensors_io
from lsc_align.models import sampling

CONFIG_FILE = 'config.json'
GENERATION_CONFIG_FILE = 'generation_config.json'
_NOT_TOKENIZER = (CONFIG_FILE, GENERATION_CONFIG_FILE, safetensors_io.INDEX_FILE)
DEFAULT_MAX_SHARD_BYTES = 5 * 2 ** 30
_FLOAT_DTYPES = ('F32', 'F16', 'BF16')


@dataclasses.dataclass
class PretrainedModel:
  """A decoder checkpoint as the policy: config, params on the mesh, and what export needs."""
  config: policy.PolicyConfig
  params: policy.Params
  family: str  # the model_type: llama, qwen2, qwen3, gemma2, gemma3_text
  hf_config: dict[str, Any]  # the checkpoint's own config.json
  mesh: jax.sharding.Mesh
  tokenizer: Any = None
  source: str | None = None  # the directory loaded from (its tokenizer files are exported)
  tensor_dtypes: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> 'BF16', ...
  # Files export writes beside the weights when there is no source (e.g. a tokenizer.json).
  extra_files: dict[str, str] = dataclasses.field(default_factory=dict)

  @property
  def eos_id(self) -> int | None:
    """The tokenizer's primary eos, else config.json's first eos_token_id (None: none)."""
    if self.tokenizer is not None:
      return self.tokenizer.eos_id
    eos = self.hf_config.get('eos_token_id')
    return eos[0] if isinstance(eos, list) and eos else eos if isinstance(eos, int) else None


@dataclasses.dataclass(frozen=True)
class _Tensor:
  param: str  # 'layers_0/attention/query/kernel'
  checkpoint: str  # 'model.layers.0.self_attn.q_proj.weight'
  layout: str
  shape: tuple[int, ...]  # the parameter's

  @property
  def checkpoint_shape(self) -> tuple[int, ...]:
    if self.layout == hf_families.SAME:
      return self.shape
    if self.layout == hf_families.FLAT:
      return (math.prod(self.shape),)
    num_in = int(self.layout[len('linear'):])
    return (math.prod(self.shape[num_in:]), math.prod(self.shape[:num_in]))

  def to_param(self, array: np.ndarray) -> np.ndarray:
    if self.layout.startswith('linear'):
      array = array.T
    return array.reshape(self.shape)

  def to_checkpoint(self, array: np.ndarray) -> np.ndarray:
    if self.layout.startswith('linear'):
      return array.reshape(self.checkpoint_shape[::-1]).T
    return array.reshape(self.checkpoint_shape)


def _param_shapes(config: policy.PolicyConfig) -> dict[str, tuple[int, ...]]:
  """'a/b/c' -> shape of every parameter but the value head's."""
  abstract = nn.unbox(policy.abstract_params(config))
  flat = traverse_util.flatten_dict(abstract, sep='/')
  return {k: tuple(v.shape) for k, v in flat.items() if not k.startswith('value_head/')}


def tensor_plan(config: policy.PolicyConfig, family: str) -> list[_Tensor]:
  """Every parameter (value head aside) with its checkpoint tensor, in table order."""
  shapes = _param_shapes(config)
  plan = []
  for entry in hf_families.TABLES[family]:
    layers = range(config.num_layers) if '{i}' in entry.param else [None]
    for i in layers:
      param = entry.param.replace('{i}', str(i))
      if param in shapes:
        plan.append(_Tensor(param, entry.checkpoint.replace('{i}', str(i)), entry.layout,
                            shapes[param]))
  missing = set(shapes) - {t.param for t in plan}
  if missing:
    raise ValueError(f'family {family} has no checkpoint name for {sorted(missing)[0]}')
  return plan


def _single_device_mesh() -> jax.sharding.Mesh:
  return partitioning.create_mesh((1, 1), devices=jax.devices()[:1])


def _place(array: np.ndarray, sharding: jax.sharding.NamedSharding) -> jax.Array:
  return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def _fresh_value_head(config: policy.PolicyConfig, mesh: jax.sharding.Mesh, seed: int,
                      param_dtype: np.dtype) -> Any:
  features = jnp.zeros((1, 1, config.emb_dim), jnp.float32)
  init = lambda rng: policy.ValueHead(config).init(rng, features)['params']
  boxed = jax.eval_shape(init, jax.random.key(0))
  shardings = partitioning.logical_shardings(boxed, mesh)
  fresh = jax.jit(lambda rng: nn.unbox(init(rng)), out_shardings=shardings)(jax.random.key(seed))
  return jax.tree.map(lambda x: x.astype(param_dtype), fresh)


def load(path: str, *, mesh: jax.sharding.Mesh | None = None, dtype: Any = None,
         compute_dtype: str = 'float32', max_len: int | None = None,
         value_head_seed: int = 0) -> PretrainedModel:
  """A Hugging Face decoder checkpoint directory (local or gs://) as the policy, on `mesh`.

  Args:
    path: directory with config.json and model.safetensors (or shards and their index).
    mesh: where the parameters go (partitioning.create_mesh); default one device.
    dtype: the parameters' dtype (default float32).
    compute_dtype: PolicyConfig.dtype, the matmul and activation dtype.
    max_len: the longest sequence accepted (default max_position_embeddings).
    value_head_seed: the seed of the fresh value head.

  Raises:
    FileNotFoundError: no config.json, no weights, or a shard the index names is missing.
    ValueError: an unsupported config (naming the key), a tensor missing, unexpected, or of the
      wrong shape or dtype (naming it).
  """
  path = io_utils.abspath(path)
  config_path = os.path.join(path, CONFIG_FILE)
  if not io_utils.exists(config_path):
    raise FileNotFoundError(f'{path}: no {CONFIG_FILE} (not a Hugging Face checkpoint)')
  hf = json.loads(io_utils.read_text(config_path))
  family = hf_families.family_of(hf, config_path)
  config = hf_families.policy_config(hf, max_len=max_len, compute_dtype=compute_dtype,
                                     where=config_path)
  reader = safetensors_io.CheckpointReader(path)
  plan = tensor_plan(config, family)
  found = {n for n in reader.names() if not n.endswith(hf_families.IGNORED_SUFFIXES)}
  if config.tie_embeddings:
    found.discard('lm_head.weight')  # a tied checkpoint may store the embedding twice
  wanted = {t.checkpoint for t in plan}
  for name in sorted(wanted - found):
    raise ValueError(f'{path}: tensor {name} is missing')
  for name in sorted(found - wanted):
    raise ValueError(f'{path}: unexpected tensor {name} (not in the {family} table for this '
                     f'config)')
  mesh = mesh or _single_device_mesh()
  param_dtype = np.dtype(jnp.dtype(dtype or 'float32'))
  shardings = traverse_util.flatten_dict(
      partitioning.logical_shardings(policy.abstract_params(config), mesh), sep='/')
  flat, dtypes = {}, {}
  for tensor in plan:
    dtypes[tensor.checkpoint] = reader.dtype(tensor.checkpoint)
    if dtypes[tensor.checkpoint] not in _FLOAT_DTYPES:
      raise ValueError(f'{path}: tensor {tensor.checkpoint} has dtype '
                       f'{dtypes[tensor.checkpoint]}, not one of {_FLOAT_DTYPES}')
    if reader.shape(tensor.checkpoint) != tensor.checkpoint_shape:
      raise ValueError(f'{path}: tensor {tensor.checkpoint} has shape '
                       f'{reader.shape(tensor.checkpoint)}, config.json implies '
                       f'{tensor.checkpoint_shape}')
    array = tensor.to_param(reader.read(tensor.checkpoint)).astype(param_dtype)
    flat[tensor.param] = _place(array, shardings[tensor.param])
    del array
  params = traverse_util.unflatten_dict(flat, sep='/')
  params['value_head'] = _fresh_value_head(config, mesh, value_head_seed, param_dtype)
  tokenizer = None
  if any(n in io_utils.listdir(path) for n in ('tokenizer.json', 'tokenizer.model')):
    tokenizer = checkpoint_tokenizer.load_tokenizer(path)
    tokenizer.check_fits(config.vocab_size)
  return PretrainedModel(config=config, params=params, family=family, hf_config=hf, mesh=mesh,
                         tokenizer=tokenizer, source=path, tensor_dtypes=dtypes)


def from_policy(params: policy.Params, config: policy.PolicyConfig, *,
                words: Sequence[str] | None = None) -> PretrainedModel:
  """A policy trained here (e.g. the world's) as a Llama-layout model, float32, for export.

  Its config.json is its own (untied, the project's pad 0 and eos 1). With `words` (a word
  vocabulary's list: ids 3, 4, ... after pad, eos and unk) the export also holds a
  `tokenizers` WordLevel tokenizer.json over them (whitespace split; decode joins with spaces).

  Raises:
    ValueError: the config uses a feature Llama does not have (hf_families.llama_config).
  """
  hf = hf_families.llama_config(config, torch_dtype='float32', eos_token_id=policy.EOS_ID,
                                pad_token_id=policy.PAD_ID)
  # The mesh the params already sit on (a sharded run), else one device.
  meshes = [leaf.sharding.mesh for leaf in jax.tree.leaves(params)
            if isinstance(getattr(leaf, 'sharding', None), jax.sharding.NamedSharding)]
  mesh = meshes[0] if meshes else _single_device_mesh()
  return PretrainedModel(config=config, params=params, family='llama', hf_config=hf, mesh=mesh,
                         tensor_dtypes={t.checkpoint: 'F32' for t in tensor_plan(config, 'llama')},
                         extra_files=(hf_families.word_level_tokenizer(words, config)
                                      if words else {}))


@functools.partial(jax.jit, static_argnums=1)
def _forward_logits(params: policy.Params, config: policy.PolicyConfig,
                    tokens: jax.Array) -> jax.Array:
  return policy.forward(params, config, tokens)[0]


def logits(model: PretrainedModel, token_ids_BxL: Any) -> jax.Array:
  """Next-token logits [B, L, V], float32, of whole sequences (no padding)."""
  with partitioning.activate(model.mesh):
    return _forward_logits(model.params, model.config, jnp.asarray(token_ids_BxL, jnp.int32))


def generate(model: PretrainedModel, prompt_ids_BxLp: Any, max_new_tokens: int, *,
             greedy: bool = True, temperature: float = 1.0, rng: jax.Array | None = None,
             eos_id: int | None | str = 'config') -> jax.Array:
  """[B, max_new_tokens] continuations of unpadded prompts [B, Lp] by the KV-cache sampler.

  Every token id may be emitted (no pad masked). A row stops at eos_id (config.json's by
  default; None never stops) and is padded with -1 after it; otherwise all max_new_tokens are
  produced. Greedy by default, else sampled at `temperature` with `rng`.
  """
  eos = model.eos_id if eos_id == 'config' else eos_id
  with partitioning.activate(model.mesh):
    out = sampling.sample(model.params, model.config, jnp.asarray(prompt_ids_BxLp, jnp.int32),
                          jax.random.key(0) if rng is None else rng,
                          max_response_length=max_new_tokens,
                          temperature=0.0 if greedy else temperature,
                          eos_id=-1 if eos is None else int(eos), pad_id=-1)
  return out.response_ids


def _host_array(value: jax.Array) -> np.ndarray:
  if jax.process_count() > 1 and not value.is_fully_addressable:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(value, tiled=True))
  return np.asarray(jax.device_get(value))


def _generation_config(hf: dict[str, Any]) -> dict[str, Any]:
  keys = ('bos_token_id', 'eos_token_id', 'pad_token_id')
  return {k: hf[k] for k in keys if hf.get(k) is not None}


def export(model: PretrainedModel, path: str, *,
           max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> list[str]:
  """Writes `model` as a checkpoint directory of its family's layout; returns the file names.

  Raises:
    FileExistsError: `path` exists.
  """
  path = io_utils.abspath(path)
  if io_utils.exists(path):
    raise FileExistsError(f'{path} exists; export writes a new directory')
  plan = tensor_plan(model.config, model.family)
  flat = traverse_util.flatten_dict(model.params, sep='/')
  by_name = {t.checkpoint: t for t in plan}

  def fetch(name: str) -> np.ndarray:
    tensor = by_name[name]
    array = tensor.to_checkpoint(_host_array(flat[tensor.param]))
    return array.astype(safetensors_io.DTYPES[model.tensor_dtypes.get(name, 'F32')])

  tensors = [(t.checkpoint, t.checkpoint_shape, model.tensor_dtypes.get(t.checkpoint, 'F32'))
             for t in plan]
  if jax.process_index() != 0:  # every process joins the gathers; one writes
    for name, _, _ in tensors:
      fetch(name)
    return []
  local = not io_utils.is_url(path)
  parent = os.path.dirname(path) if local else None
  if local:
    os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f'.{os.path.basename(path)}.partial-', dir=parent)
  try:
    files = safetensors_io.write_checkpoint(staging, tensors, fetch, max_shard_bytes)
    _write_json(os.path.join(staging, CONFIG_FILE), model.hf_config)
    files.append(CONFIG_FILE)
    files += _copy_side_files(model, staging)
    if local:
      os.rename(staging, path)
    else:
      _upload(staging, path, files)
  finally:
    if os.path.isdir(staging):
      shutil.rmtree(staging)
  return sorted(files)


def _write_json(path: str, obj: Any) -> None:
  with open(path, 'w', encoding='utf-8') as f:
    f.write(json.dumps(obj, indent=2, sort_keys=True) + '\n')


def _copy_side_files(model: PretrainedModel, staging: str) -> list[str]:
  """generation_config.json (the source's, else from config.json) and the tokenizer files."""
  files = [GENERATION_CONFIG_FILE]
  source = model.source
  names = io_utils.listdir(source) if source else []
  if GENERATION_CONFIG_FILE in names:
    text = io_utils.read_text(os.path.join(source, GENERATION_CONFIG_FILE))
    with open(os.path.join(staging, GENERATION_CONFIG_FILE), 'w', encoding='utf-8') as f:
      f.write(text)
  else:
    _write_json(os.path.join(staging, GENERATION_CONFIG_FILE),
                _generation_config(model.hf_config))
  for name, text in model.extra_files.items():
    with open(os.path.join(staging, name), 'w', encoding='utf-8') as f:
      f.write(text)
    files.append(name)
  for name in names:
    full = os.path.join(source, name)
    if (name in _NOT_TOKENIZER or name.endswith('.safetensors') or name.startswith('.')
        or io_utils.isdir(full) or not _is_tokenizer_file(name)):
      continue
    with open(os.path.join(staging, name), 'wb') as f:
      f.write(io_utils.read_bytes(full))
    files.append(name)
  return files


_TOKENIZER_FILES = re.compile(r'^(tokenizer.*|special_tokens_map\.json|added_tokens\.json|'
                              r'vocab\..*|merges\.txt|chat_template\..*|.*\.model)$')


def _is_tokenizer_file(name: str) -> bool:
  return bool(_TOKENIZER_FILES.match(name))


def _upload(staging: str, path: str, files: list[str]) -> None:
  """Copies a staged export to a store URL; config.json last, so a partial copy is no model."""
  io_utils.makedirs(path)
  for name in sorted(files, key=lambda n: n == CONFIG_FILE):
    with open(os.path.join(staging, name), 'rb') as f:
      io_utils.atomic_write_bytes(os.path.join(path, name), f.read())


def param_count(model: PretrainedModel) -> int:
  """Parameters of the LM (the value head aside)."""
  return sum(math.prod(t.shape) for t in tensor_plan(model.config, model.family))

