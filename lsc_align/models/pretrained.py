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
from lsc_align.models import hf_t5
from lsc_align.models import policy
from lsc_align.models import reward_model
from lsc_align.models import safetensors_io
from lsc_align.models import sampling
from lsc_align.models import t5_encoder

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
  hf = read_config(path)
  family = hf_families.family_of(hf, os.path.join(path, CONFIG_FILE))
  config = hf_families.policy_config(hf, max_len=max_len, compute_dtype=compute_dtype,
                                     where=os.path.join(path, CONFIG_FILE))
  mesh = mesh or _single_device_mesh()
  param_dtype = np.dtype(jnp.dtype(dtype or 'float32'))
  flat, dtypes, _ = read_tensors(path, config, family, mesh, param_dtype)
  params = traverse_util.unflatten_dict(flat, sep='/')
  params['value_head'] = _fresh_value_head(config, mesh, value_head_seed, param_dtype)
  return PretrainedModel(config=config, params=params, family=family, hf_config=hf, mesh=mesh,
                         tokenizer=load_tokenizer_if_any(path, config.vocab_size), source=path,
                         tensor_dtypes=dtypes)


def read_config(path: str) -> dict[str, Any]:
  """config.json of a checkpoint directory (FileNotFoundError: none)."""
  config_path = os.path.join(path, CONFIG_FILE)
  if not io_utils.exists(config_path):
    raise FileNotFoundError(f'{path}: no {CONFIG_FILE} (not a Hugging Face checkpoint)')
  return json.loads(io_utils.read_text(config_path))


def load_tokenizer_if_any(path: str, vocab_size: int) -> Any:
  """The checkpoint's tokenizer (checked to fit the embedding), None without tokenizer files."""
  if not any(n in io_utils.listdir(path) for n in ('tokenizer.json', 'tokenizer.model')):
    return None
  tokenizer = checkpoint_tokenizer.load_tokenizer(path)
  tokenizer.check_fits(vocab_size)
  return tokenizer


def read_tensors(path: str, config: policy.PolicyConfig, family: str, mesh: jax.sharding.Mesh,
                 param_dtype: np.dtype, extra: Sequence[str] = ()
                 ) -> tuple[dict[str, jax.Array], dict[str, str], safetensors_io.CheckpointReader]:
  """The decoder's parameters ('a/b' -> array on `mesh`), the tensors' dtypes, the reader.

  Every checkpoint tensor must be the table's for `config` or one of `extra` (read by the
  caller through the returned reader).
  """
  reader = safetensors_io.CheckpointReader(path)
  plan = tensor_plan(config, family)
  found = {n for n in reader.names() if not n.endswith(hf_families.IGNORED_SUFFIXES)}
  if config.tie_embeddings:
    found.discard('lm_head.weight')  # a tied checkpoint may store the embedding twice
  wanted = {t.checkpoint for t in plan} | set(extra)
  for name in sorted(wanted - found):
    raise ValueError(f'{path}: tensor {name} is missing')
  for name in sorted(found - wanted):
    raise ValueError(f'{path}: unexpected tensor {name} (not in the {family} table for this '
                     f'config)')
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
  return flat, dtypes, reader


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
           max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
           extra_tensors: dict[str, tuple[Any, str]] | None = None) -> list[str]:
  """Writes `model` as a checkpoint directory of its family's layout; returns the file names.

  extra_tensors: checkpoint name -> (array in the checkpoint's layout, dtype such as 'BF16'),
    written after the table's tensors (a sequence classifier's score.weight).

  Raises:
    FileExistsError: `path` exists.
  """
  extra_tensors = extra_tensors or {}
  path = io_utils.abspath(path)
  if io_utils.exists(path):
    raise FileExistsError(f'{path} exists; export writes a new directory')
  plan = tensor_plan(model.config, model.family)
  flat = traverse_util.flatten_dict(model.params, sep='/')
  by_name = {t.checkpoint: t for t in plan}

  def fetch(name: str) -> np.ndarray:
    if name in extra_tensors:
      array, dtype_name = extra_tensors[name]
      return _host_array(array).astype(safetensors_io.DTYPES[dtype_name])
    tensor = by_name[name]
    array = tensor.to_checkpoint(_host_array(flat[tensor.param]))
    return array.astype(safetensors_io.DTYPES[model.tensor_dtypes.get(name, 'F32')])

  tensors = [(t.checkpoint, t.checkpoint_shape, model.tensor_dtypes.get(t.checkpoint, 'F32'))
             for t in plan]
  tensors += [(name, tuple(np.shape(array)), dtype_name)
              for name, (array, dtype_name) in extra_tensors.items()]
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



# Reward models: a T5 encoder with a fresh head, or a decoder sequence classifier with its own.

T5_KIND, DECODER_KIND = 't5', 'decoder'
SEQCLS_SUFFIX = 'ForSequenceClassification'
SCORE_TENSOR = 'score.weight'
_TRANSFORMERS_DEFAULT_NUM_LABELS = 2  # PretrainedConfig's when config.json gives none


@dataclasses.dataclass
class PretrainedRewardModel:
  """A reward model from a checkpoint: `kind` T5_KIND or DECODER_KIND.

  T5: config is a RewardModelConfig, params RewardModel's tree (encoder from the checkpoint,
  a fresh reward_head). Decoder: config is the backbone's PolicyConfig (tie_embeddings set, as
  no output projection is used), params the backbone's tree plus 'score' {'kernel': [D]}
  (the checkpoint's score.weight row), and `pad_id` is what the reward position skips.
  """
  kind: str
  config: Any
  params: Any
  tokenizer: Any
  mesh: jax.sharding.Mesh
  source: str | None = None
  family: str | None = None  # decoder: the model_type
  hf_config: dict[str, Any] = dataclasses.field(default_factory=dict)
  tensor_dtypes: dict[str, str] = dataclasses.field(default_factory=dict)
  pad_id: int | None = None

  @property
  def max_length(self) -> int | None:
    """The longest sequence the model takes (decoder: max_len; T5: no bound)."""
    return self.config.max_len if self.kind == DECODER_KIND else None


def num_labels(hf: dict[str, Any]) -> int:
  """Labels of a sequence classifier's config.json as transformers counts them."""
  if isinstance(hf.get('id2label'), dict):
    return len(hf['id2label'])
  return int(hf.get('num_labels', _TRANSFORMERS_DEFAULT_NUM_LABELS))


def load_reward_model(path: str, *, mesh: jax.sharding.Mesh | None = None,
                      head_seed: int = 0, max_len: int | None = None,
                      compute_dtype: str = 'float32') -> PretrainedRewardModel:
  """A reward model from a T5 checkpoint (its encoder, a fresh head from `head_seed`) or a
  `*ForSequenceClassification` decoder checkpoint (Llama, Qwen2/3, Gemma 2/3; its score head).

  The decoder's pad id is config.json's pad_token_id, else the tokenizer's (which falls back to
  eos, pad_source 'eos fallback', when the tokenizer names no pad).

  Raises:
    FileNotFoundError: no config.json or weights.
    ValueError: a T5 without an encoder, a decoder that is not a sequence classifier, num_labels
      other than 1, a bad tensor (naming it), an unsupported config key.
  """
  path = io_utils.abspath(path)
  hf = read_config(path)
  where = os.path.join(path, CONFIG_FILE)
  mesh = mesh or _single_device_mesh()
  if hf.get('model_type') in hf_t5.MODEL_TYPES:
    config, params, tokenizer = hf_t5.load_hf_t5_reward_model(
        path, jax.random.key(head_seed), mesh=mesh)
    return PretrainedRewardModel(kind=T5_KIND, config=config, params=params,
                                 tokenizer=tokenizer, mesh=mesh, source=path, hf_config=hf,
                                 pad_id=tokenizer.pad_id)
  architectures = hf.get('architectures') or []
  if not any(str(a).endswith(SEQCLS_SUFFIX) for a in architectures):
    raise ValueError(f'{where}: architectures {architectures} has no *{SEQCLS_SUFFIX}; a '
                     f'decoder reward model needs a score head (train one with train-rm)')
  labels = num_labels(hf)
  if labels != 1:
    raise ValueError(f'{where}: num_labels is {labels}; a reward model has exactly 1')
  family = hf_families.family_of(hf, where)
  config = dataclasses.replace(
      hf_families.policy_config(hf, max_len=max_len, compute_dtype=compute_dtype, where=where),
      tie_embeddings=True)
  flat, dtypes, reader = read_tensors(path, config, family, mesh, np.dtype('float32'),
                                      extra=(SCORE_TENSOR,))
  if reader.shape(SCORE_TENSOR) != (1, config.emb_dim):
    raise ValueError(f'{path}: tensor {SCORE_TENSOR} has shape {reader.shape(SCORE_TENSOR)}, '
                     f'expected (1, {config.emb_dim})')
  dtypes[SCORE_TENSOR] = reader.dtype(SCORE_TENSOR)
  params = traverse_util.unflatten_dict(flat, sep='/')
  params['score'] = {'kernel': jnp.asarray(reader.read(SCORE_TENSOR)[0].astype(np.float32))}
  tokenizer = load_tokenizer_if_any(path, config.vocab_size)
  pad = hf.get('pad_token_id')
  if pad is None and tokenizer is not None:
    pad = tokenizer.pad_id
  return PretrainedRewardModel(kind=DECODER_KIND, config=config, params=params,
                               tokenizer=tokenizer, mesh=mesh, source=path, family=family,
                               hf_config=hf, tensor_dtypes=dtypes, pad_id=pad)


def reward_positions(token_ids_BxL: jax.Array, attention_mask_BxL: jax.Array,
                     pad_id: int | None) -> jax.Array:
  """[B] the last masked-in position of each row whose id is not pad_id (as transformers'
  sequence classifiers read: the rightmost non-pad token; a pad == eos tail is skipped).

  A row with no such position reads position 0, as transformers does.
  """
  keep = attention_mask_BxL.astype(bool)
  if pad_id is not None:
    keep = keep & (token_ids_BxL != pad_id)
  columns = jnp.arange(token_ids_BxL.shape[1])[None, :]
  return jnp.argmax(jnp.where(keep, columns, -1), axis=1).astype(jnp.int32)


def decoder_rewards(params: Any, config: policy.PolicyConfig, token_ids: jax.Array,
                    attention_mask: jax.Array, pad_id: int | None) -> jax.Array:
  """[B] rewards of a decoder reward model's params (differentiable; reward_scores jits it)."""
  backbone = {k: v for k, v in params.items() if k != 'score'}
  hidden_BxLxD = policy.hidden_states(backbone, config, token_ids)
  last_B = reward_positions(token_ids, attention_mask, pad_id)
  h_BxD = jnp.take_along_axis(hidden_BxLxD, last_B[:, None, None], axis=1)[:, 0]
  return jnp.dot(h_BxD, params['score']['kernel'].astype(jnp.float32))


_decoder_rewards = jax.jit(decoder_rewards, static_argnums=(1, 4))


def _t5_tokens(token_ids: Any, attention_mask: Any) -> jax.Array:
  # The T5 encoder pads where the id is 0: masked-out positions become 0.
  return jnp.where(jnp.asarray(attention_mask, bool), jnp.asarray(token_ids, jnp.int32), 0)


def encode(rm: PretrainedRewardModel, token_ids_BxL: Any, attention_mask_BxL: Any) -> jax.Array:
  """[B, L, D] float32 hidden states of a T5 reward model's encoder (after its final norm).

  Raises:
    ValueError: `rm` is not a T5 reward model.
  """
  if rm.kind != T5_KIND:
    raise ValueError(f'encode takes a T5 reward model, got a {rm.kind} one ({rm.source})')
  encoder = t5_encoder.T5Encoder(rm.config.encoder)
  params = {k: rm.params[k] for k in ('token_embedder', 'encoder')}
  with partitioning.activate(rm.mesh):
    out = jax.jit(encoder.apply)({'params': params}, _t5_tokens(token_ids_BxL,
                                                                 attention_mask_BxL))
  return out.astype(jnp.float32)


def reward_scores(rm: PretrainedRewardModel, token_ids_BxL: Any,
                  attention_mask_BxL: Any) -> jax.Array:
  """[B] float32 rewards of right-padded rows (either kind)."""
  with partitioning.activate(rm.mesh):
    if rm.kind == T5_KIND:
      net = reward_model.RewardModel(rm.config)
      return jax.jit(net.apply)({'params': rm.params},
                                _t5_tokens(token_ids_BxL, attention_mask_BxL))
    return _decoder_rewards(rm.params, rm.config, jnp.asarray(token_ids_BxL, jnp.int32),
                            jnp.asarray(attention_mask_BxL, jnp.int32), rm.pad_id)


def tokenize_for_reward(rm: PretrainedRewardModel, texts: Sequence[str], *,
                        max_length: int | None = None
                        ) -> tuple[np.ndarray, np.ndarray, int]:
  """(token ids [N, L], attention mask [N, L], rows truncated) of texts, right-padded.

  Each text is encoded with the tokenizer's special tokens; one longer than `max_length` (default
  the model's; required for T5) keeps its first max_length tokens and is counted. L is the
  longest row. Padding holds the reward model's pad id.

  Raises:
    ValueError: no tokenizer, or no length for a T5 model.
  """
  if rm.tokenizer is None:
    raise ValueError(f'{rm.source}: the reward model has no tokenizer')
  max_length = max_length or rm.max_length
  if max_length is None:
    raise ValueError('tokenize_for_reward: give max_length for a T5 reward model')
  rows = [rm.tokenizer.encode(t) for t in texts]
  truncated = sum(len(r) > max_length for r in rows)
  rows = [r[:max_length] for r in rows]
  width = max([len(r) for r in rows] + [1])
  pad = rm.pad_id if rm.pad_id is not None else rm.tokenizer.pad_id
  ids = np.full((len(rows), width), pad, np.int32)
  mask = np.zeros((len(rows), width), np.int32)
  for i, r in enumerate(rows):
    ids[i, :len(r)], mask[i, :len(r)] = r, 1
  return ids, mask, truncated


def seqcls_config(rm: PretrainedRewardModel) -> dict[str, Any]:
  """config.json of a decoder reward model as a `*ForSequenceClassification` (num_labels 1)."""
  hf = dict(rm.hf_config)
  arch = hf_families.ARCHITECTURES[rm.family].replace('ForCausalLM', SEQCLS_SUFFIX)
  hf.update(architectures=[arch], num_labels=1, id2label={'0': 'LABEL_0'},
            label2id={'LABEL_0': 0}, pad_token_id=rm.pad_id)
  return hf


def export_reward_model(rm: PretrainedRewardModel, path: str, *,
                        max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> list[str]:
  """Writes a decoder reward model as a `*ForSequenceClassification` checkpoint directory
  (config.json, safetensors in the source's dtypes, the source's tokenizer files).

  Raises:
    ValueError: a T5 reward model (the layout has no place for its head).
    FileExistsError: `path` exists.
  """
  if rm.kind != DECODER_KIND:
    raise ValueError(f'export_reward_model writes decoder reward models, got a {rm.kind} one')
  model = PretrainedModel(config=rm.config, params=rm.params, family=rm.family,
                          hf_config=seqcls_config(rm), mesh=rm.mesh, tokenizer=rm.tokenizer,
                          source=rm.source, tensor_dtypes=rm.tensor_dtypes)
  score = rm.params['score']['kernel'][None, :]
  return export(model, path, max_shard_bytes=max_shard_bytes,
                extra_tensors={SCORE_TENSOR: (score, rm.tensor_dtypes.get(SCORE_TENSOR, 'F32'))})
