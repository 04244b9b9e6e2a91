"""Tests for lsc_align.models.pretrained: Hugging Face checkpoints in and out, against goldens.

The checkpoints and golden outputs in tests/data/pretrained/ were written by transformers
(see its README); these tests need neither torch nor transformers.
"""
import dataclasses
import functools
import json
import os
import pathlib
import shutil
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from gcs_paths_test import bucket  # pylint: disable=unused-import (the gs:// stand-in fixture)
from lsc_align import conventions
from lsc_align.models import hf_families
from lsc_align.models import policy
from lsc_align.models import pretrained
from lsc_align.models import safetensors_io
from lsc_align.models import sampling

DATA = pathlib.Path(__file__).resolve().parent / 'data' / 'pretrained'
CASES = ['llama3_gqa_rope_scaling', 'llama2_tied_bf16_sharded', 'qwen2_bias', 'qwen3_qknorm',
         'gemma2_softcap', 'gemma3_text']
WORLD = policy.PolicyConfig(vocab_size=384, emb_dim=64, num_heads=4, head_dim=16, mlp_dim=192,
                            num_layers=2, max_len=96, value_hidden_dim=64)


@functools.lru_cache(maxsize=None)
def _model(case):
  return pretrained.load(str(DATA / case))


def _golden(case):
  return np.load(DATA / case / 'golden.npz')


def _flat(params):
  return traverse_util.flatten_dict(jax.device_get(params), sep='/')


@pytest.mark.parametrize('case', CASES)
def test_logits_and_greedy_match_transformers(case):
  model, golden = _model(case), _golden(case)
  logits = np.asarray(pretrained.logits(model, golden['input_ids']))
  assert logits.dtype == np.float32 and logits.shape == golden['logits'].shape
  np.testing.assert_allclose(logits, golden['logits'], rtol=0, atol=1e-4)
  greedy = pretrained.generate(model, golden['prompt_ids'], 8, eos_id=None)
  np.testing.assert_array_equal(greedy, golden['greedy_ids'])


@pytest.mark.parametrize('case', ['llama3_gqa_rope_scaling', 'gemma2_softcap', 'gemma3_text'])
def test_cached_decode_equals_full_forward(case):
  """Prefill 3 tokens, then decode one at a time past every sliding window (4)."""
  model, tokens = _model(case), _golden(case)['input_ids']
  full = np.asarray(pretrained.logits(model, tokens))
  params, config = model.params, model.config
  prefix, _, cache = jax.jit(policy.prefill, static_argnums=(1, 3))(params, config,
                                                                    tokens[:, :3], 12)
  np.testing.assert_allclose(prefix, full[:, :3], atol=1e-5)
  step = jax.jit(policy.decode_step, static_argnums=1)
  for t in range(3, 12):
    logits, _, cache = step(params, config, tokens[:, t], jnp.full((2,), t, jnp.int32), cache)
    np.testing.assert_allclose(logits, full[:, t], atol=1e-5)
  assert cache[0][0].shape == (2, config.kv_heads, 12, config.head_dim)


def test_generate_stops_at_eos_and_pads_after():
  model, golden = _model('qwen3_qknorm'), _golden('qwen3_qknorm')
  first = int(golden['greedy_ids'][0, 1])
  ids = np.asarray(pretrained.generate(model, golden['prompt_ids'], 8, eos_id=first))
  row = list(golden['greedy_ids'][0])
  stop = row.index(first) + 1
  np.testing.assert_array_equal(ids[0, :stop], row[:stop])
  assert np.all(ids[0, stop:] == -1)


def test_tokenizer_and_config_attached():
  model = _model('qwen2_bias')
  assert model.family == 'qwen2' and model.config.qkv_bias and not model.config.out_bias
  assert model.tokenizer is not None and model.eos_id == model.tokenizer.eos_id
  assert model.config.vocab_size == 384 and model.tokenizer.vocab_size <= 384
  assert model.config.max_len == model.hf_config['max_position_embeddings']
  gemma3 = _model('gemma3_text').config
  assert gemma3.layer_types == ('sliding_attention', 'sliding_attention', 'full_attention')
  assert (gemma3.rope_scaling, gemma3.rope_scaling_factor) == ('linear', 8.0)
  assert (gemma3.rope_max_wavelength, gemma3.local_rope_max_wavelength) == (1e6, 1e4)
  assert pretrained.load(str(DATA / 'gemma3_text'), max_len=16).config.max_len == 16


def test_bfloat16_parameters_from_a_bfloat16_checkpoint():
  case = 'llama2_tied_bf16_sharded'
  model = pretrained.load(str(DATA / case), dtype='bfloat16')
  assert {x.dtype for x in jax.tree.leaves(model.params)} == {jnp.dtype(jnp.bfloat16)}
  embedding = safetensors_io.CheckpointReader(str(DATA / case)).read('model.embed_tokens.weight')
  np.testing.assert_array_equal(model.params['token_embedder']['embedding'], embedding)
  np.testing.assert_allclose(pretrained.logits(model, _golden(case)['input_ids']),
                             _golden(case)['logits'], rtol=0, atol=1e-4)


def test_policy_config_survives_json():
  config = _model('gemma3_text').config
  again = policy.PolicyConfig(**json.loads(json.dumps(dataclasses.asdict(config))))
  assert again == config and isinstance(again.layer_types, tuple) and hash(again) == hash(config)


def _export(model, tmp_path, name='out', **kwargs):
  path = str(tmp_path / name)
  pretrained.export(model, path, **kwargs)
  return path


@pytest.mark.parametrize('case', CASES)
def test_export_round_trip(case, tmp_path):
  model = _model(case)
  path = _export(model, tmp_path)
  source, exported = (safetensors_io.CheckpointReader(p) for p in (str(DATA / case), path))
  assert exported.names() == source.names()
  for name in source.names():
    assert (exported.shape(name), exported.dtype(name)) == (source.shape(name),
                                                            source.dtype(name)), name
    np.testing.assert_array_equal(exported.read(name), source.read(name))
  again = pretrained.load(path)
  assert again.config == model.config
  jax.tree.map(np.testing.assert_array_equal, _flat(again.params), _flat(model.params))
  tokens = _golden(case)['input_ids']
  np.testing.assert_array_equal(pretrained.logits(again, tokens), pretrained.logits(model, tokens))
  files = set(os.listdir(path))
  for name in ('tokenizer.json', 'tokenizer.model', 'tokenizer_config.json'):
    assert (name in files) == (DATA / case / name).exists()
  assert 'golden.npz' not in files and 'generation_config.json' in files
  assert json.loads((DATA / case / 'config.json').read_text()) == json.loads(
      pathlib.Path(path, 'config.json').read_text())


def test_sharded_export_writes_an_index(tmp_path):
  model = _model('qwen3_qknorm')
  path = _export(model, tmp_path, max_shard_bytes=40_000)
  index = json.loads(pathlib.Path(path, safetensors_io.INDEX_FILE).read_text())
  assert len(set(index['weight_map'].values())) > 2
  assert not (pathlib.Path(path) / safetensors_io.SINGLE_FILE).exists()
  tokens = _golden('qwen3_qknorm')['input_ids']
  np.testing.assert_array_equal(pretrained.logits(pretrained.load(path), tokens),
                                pretrained.logits(model, tokens))


def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
  def broken(*args, **kwargs):
    raise OSError('disk full')
  monkeypatch.setattr(safetensors_io, 'write_file', broken)
  with pytest.raises(OSError, match='disk full'):
    _export(_model('gemma2_softcap'), tmp_path)
  assert os.listdir(tmp_path) == []


def test_export_refuses_an_existing_directory(tmp_path):
  (tmp_path / 'out').mkdir()
  with pytest.raises(FileExistsError, match='exists'):
    _export(_model('gemma2_softcap'), tmp_path)


def test_world_policy_exports_as_llama(tmp_path):
  params = jax.jit(policy.init_params, static_argnums=0)(WORLD, jax.random.key(0, impl='rbg'))
  words = ['Human:', 'Assistant:', 'hello', 'world']
  path = _export(pretrained.from_policy(params, WORLD, words=words), tmp_path)
  hf = json.loads(pathlib.Path(path, 'config.json').read_text())
  assert hf['model_type'] == 'llama' and not hf['tie_word_embeddings']
  assert (hf['eos_token_id'], hf['pad_token_id']) == (policy.EOS_ID, policy.PAD_ID)
  model = pretrained.load(path)
  assert {t.checkpoint for t in pretrained.tensor_plan(WORLD, 'llama')} == set(
      safetensors_io.CheckpointReader(path).names())
  assert model.config == WORLD
  flat, again = _flat(params), _flat(model.params)
  for name, value in flat.items():
    if not name.startswith('value_head/'):
      np.testing.assert_array_equal(again[name], value)
  tokens = np.random.default_rng(0).integers(2, 384, (2, 12)).astype(np.int32)
  expected = pretrained.logits(pretrained.from_policy(params, WORLD), tokens)
  np.testing.assert_array_equal(pretrained.logits(model, tokens), expected)
  tokenizer = model.tokenizer  # the WordLevel tokenizer.json, read back by load_tokenizer
  assert tokenizer.encode('Human: hello  world\n', add_special_tokens=False) == [3, 5, 6]
  assert tokenizer.encode('Assistant: moon', add_special_tokens=False) == [4, conventions.UNK_ID]
  assert (tokenizer.pad_id, tokenizer.eos_id) == (policy.PAD_ID, policy.EOS_ID)


def test_ranged_reader_equals_safe_open():
  """The byte-range reader (the gs:// path) gives safe_open's tensors."""
  directory = str(DATA / 'llama2_tied_bf16_sharded')
  ranged = safetensors_io.CheckpointReader(directory, use_safe_open=False)
  local = safetensors_io.CheckpointReader(directory)
  for name in local.names():
    a, b = ranged.read(name), local.read(name)
    assert a.dtype == b.dtype == safetensors_io.DTYPES['BF16']
    np.testing.assert_array_equal(a, b)


def test_load_and_export_through_gs(bucket):  # pylint: disable=redefined-outer-name
  """gs:// checkpoints: headers and byte ranges through epath, export staged then uploaded."""
  case = 'gemma2_softcap'
  shutil.copytree(DATA / case, bucket.local('gs://b/ckpt'))
  model = pretrained.load('gs://b/ckpt')
  assert model.tokenizer is not None
  golden = _golden(case)
  np.testing.assert_allclose(pretrained.logits(model, golden['input_ids']), golden['logits'],
                             rtol=0, atol=1e-4)
  pretrained.export(model, 'gs://b/out')
  assert sorted(os.listdir(bucket.local('gs://b/out'))) == sorted(
      n for n in os.listdir(DATA / case) if n not in ('golden.npz', 'tokenization.json'))
  np.testing.assert_array_equal(pretrained.logits(pretrained.load('gs://b/out'),
                                                  golden['input_ids']),
                                pretrained.logits(model, golden['input_ids']))


def test_sampler_pad_and_eos_ids():
  logits = jnp.arange(6.0)[None]
  assert np.all(sampling.sampling_logits(logits, 1.0, pad_id=-1) == logits)
  masked = sampling.sampling_logits(logits, 1.0, pad_id=3)
  assert masked[0, 3] < -1e8 and masked[0, 0] == 0.0
  assert sampling.sampling_logits(logits, 1.0)[0, policy.PAD_ID] < -1e8  # default: pad 0


# --- errors: one-line messages naming the file, key or tensor ---


def _copy_case(tmp_path, case='qwen3_qknorm'):
  target = tmp_path / case
  shutil.copytree(DATA / case, target)
  return target


def _edit_config(directory, **changes):
  path = directory / 'config.json'
  config = json.loads(path.read_text())
  config.update(changes)
  path.write_text(json.dumps(config))


@pytest.mark.parametrize('changes,match', [
    ({'num_experts': 8}, 'num_experts'),
    ({'model_type': 'mamba'}, "model_type 'mamba'"),
    ({'vision_config': {'hidden_size': 8}}, 'vision_config'),
    ({'rope_parameters': {'rope_type': 'yarn', 'rope_theta': 1e4, 'factor': 2.0}},
     "rope_parameters.rope_type 'yarn'"),
    ({'mlp_bias': True}, 'mlp_bias'),
    ({'hidden_act': 'relu'}, "hidden_act 'relu'"),
    ({'hidden_size': None}, 'hidden_size is missing'),
    ({'rope_parameters': {'rope_type': 'default', 'rope_theta': 1e4,
                          'partial_rotary_factor': 0.5}}, 'partial_rotary_factor'),
])
def test_unsupported_configs_are_named(tmp_path, changes, match):
  directory = _copy_case(tmp_path)
  _edit_config(directory, **changes)
  with pytest.raises(ValueError, match=match):
    pretrained.load(str(directory))


def test_rope_scaling_4x_style_is_checked(tmp_path):
  directory = _copy_case(tmp_path, 'qwen2_bias')
  _edit_config(directory, rope_scaling={'type': 'dynamic', 'factor': 2.0})
  with pytest.raises(ValueError, match="rope_scaling.rope_type 'dynamic'"):
    pretrained.load(str(directory))


def test_missing_files(tmp_path):
  directory = _copy_case(tmp_path)
  (directory / 'config.json').rename(directory / 'other.json')
  with pytest.raises(FileNotFoundError, match='no config.json'):
    pretrained.load(str(directory))
  (directory / 'other.json').rename(directory / 'config.json')
  (directory / 'model.safetensors').unlink()
  with pytest.raises(FileNotFoundError, match='no model.safetensors'):
    pretrained.load(str(directory))
  sharded = _copy_case(tmp_path, 'llama2_tied_bf16_sharded')
  (sharded / 'model-00002-of-00003.safetensors').unlink()
  with pytest.raises(FileNotFoundError, match='shard model-00002-of-00003.safetensors'):
    pretrained.load(str(sharded))


def _rewrite_tensors(directory, change):
  """Rewrites model.safetensors with change(dict of arrays) applied."""
  reader = safetensors_io.CheckpointReader(str(directory))
  arrays = {n: reader.read(n) for n in reader.names()}
  change(arrays)
  tensors = [(n, a.shape, safetensors_io.dtype_name(a.dtype)) for n, a in sorted(arrays.items())]
  safetensors_io.write_file(str(directory / 'model.safetensors'), tensors, arrays.__getitem__)


@pytest.mark.parametrize('change,match', [
    (lambda a: a.pop('model.layers.1.self_attn.k_norm.weight'),
     'tensor model.layers.1.self_attn.k_norm.weight is missing'),
    (lambda a: a.update({'model.layers.0.extra.weight': np.ones(3, np.float32)}),
     'unexpected tensor model.layers.0.extra.weight'),
    (lambda a: a.update({'model.norm.weight': np.ones(31, np.float32)}),
     r'tensor model.norm.weight has shape \(31,\)'),
    (lambda a: a.update({'model.norm.weight': np.ones(32, np.int32)}),
     'tensor model.norm.weight has dtype I32'),
])
def test_bad_tensors_are_named(tmp_path, change, match):
  directory = _copy_case(tmp_path)
  _rewrite_tensors(directory, change)
  with pytest.raises(ValueError, match=match):
    pretrained.load(str(directory))


def test_written_file_is_valid_safetensors(tmp_path):
  path = str(tmp_path / 'x.safetensors')
  arrays = {'b': np.arange(6, dtype=np.float16).reshape(2, 3), 'a': np.ones(3, np.float32)}
  safetensors_io.write_file(path, [(n, a.shape, safetensors_io.dtype_name(a.dtype))
                                   for n, a in arrays.items()], arrays.__getitem__)
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  loaded = load_file(path)
  for name, value in arrays.items():
    np.testing.assert_array_equal(loaded[name], value)
  with open(path, 'rb') as f:
    assert struct.unpack('<Q', f.read(8))[0] % 8 == 0


@pytest.mark.parametrize('field,value', [
    ('num_kv_heads', 3), ('mlp_activation', 'relu'), ('rope_scaling', 'yarn'),
    ('layer_types', ('full_attention',)), ('layer_types', ('sliding_attention',) * 2),
    ('attn_logit_softcap', -1.0), ('norm_epsilon', 0.0), ('qk_norm', 'yes'),
    ('sliding_window', 0)])
def test_policy_config_rejects_bad_new_fields(field, value):
  with pytest.raises(ValueError, match=f'PolicyConfig.{field}|sliding_window'):
    policy.PolicyConfig(**{field: value})


def test_word_level_tokenizer_rejects_bad_words():
  with pytest.raises(ValueError, match="word '<unk>'"):
    hf_families.word_level_tokenizer(['a', '<unk>'], WORLD)
  with pytest.raises(ValueError, match='do not fit PolicyConfig.vocab_size'):
    hf_families.word_level_tokenizer([f'w{i}' for i in range(400)], WORLD)


def test_llama_config_refuses_what_llama_lacks():
  with pytest.raises(ValueError, match='PolicyConfig.norm_scale_plus_one = True'):
    hf_families.llama_config(_model('gemma2_softcap').config)
