"""Hugging Face decoder families: config.json -> PolicyConfig, and one name table per family.

A table maps each checkpoint tensor name (with `{i}` for the layer) to a parameter path of the
policy's tree, with the layout change beside it:
* SAME: identical shape;
* FLAT: the checkpoint holds the parameter flattened (a [heads * head_dim] bias);
* LINEAR(n): a torch Linear weight [out, in]: the parameter is its transpose reshaped to
  [*in, *out], its first n axes being the input features.
Loading reads each table entry forwards; export reads the same entry backwards. An entry is
used when the configuration has its parameter (biases, q/k norms, logits_dense when untied).

config.json is read in both Hub styles: transformers 4.x (`rope_theta`, `rope_scaling`,
`torch_dtype`) and 5.x (`rope_parameters`, per layer type for Gemma 3; `dtype`). Anything the
decoder does not implement is a one-line ValueError naming the config key.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, Sequence

from lsc_align import conventions
from lsc_align.models.policy import PolicyConfig

SAME, FLAT = 'same', 'flat'


def LINEAR(num_in: int) -> str:  # pylint: disable=invalid-name (reads as a layout constant)
  return f'linear{num_in}'


@dataclasses.dataclass(frozen=True)
class Entry:
  """One checkpoint tensor <-> one parameter (`{i}` = layer index in both names)."""
  checkpoint: str
  param: str
  layout: str


_EMBED_AND_HEAD = (
    Entry('model.embed_tokens.weight', 'token_embedder/embedding', SAME),
    Entry('model.norm.weight', 'decoder_norm/scale', SAME),
    Entry('lm_head.weight', 'logits_dense/kernel', LINEAR(1)),
)
_ATTENTION = (
    Entry('model.layers.{i}.input_layernorm.weight', 'layers_{i}/pre_attention_norm/scale', SAME),
    Entry('model.layers.{i}.self_attn.q_proj.weight', 'layers_{i}/attention/query/kernel',
          LINEAR(1)),
    Entry('model.layers.{i}.self_attn.k_proj.weight', 'layers_{i}/attention/key/kernel',
          LINEAR(1)),
    Entry('model.layers.{i}.self_attn.v_proj.weight', 'layers_{i}/attention/value/kernel',
          LINEAR(1)),
    Entry('model.layers.{i}.self_attn.o_proj.weight', 'layers_{i}/attention/out/kernel',
          LINEAR(2)),
    Entry('model.layers.{i}.self_attn.q_proj.bias', 'layers_{i}/attention/query/bias', FLAT),
    Entry('model.layers.{i}.self_attn.k_proj.bias', 'layers_{i}/attention/key/bias', FLAT),
    Entry('model.layers.{i}.self_attn.v_proj.bias', 'layers_{i}/attention/value/bias', FLAT),
    Entry('model.layers.{i}.self_attn.o_proj.bias', 'layers_{i}/attention/out/bias', SAME),
)
_QK_NORM = (
    Entry('model.layers.{i}.self_attn.q_norm.weight', 'layers_{i}/attention/query_norm/scale',
          SAME),
    Entry('model.layers.{i}.self_attn.k_norm.weight', 'layers_{i}/attention/key_norm/scale', SAME),
)
_MLP = (
    Entry('model.layers.{i}.mlp.gate_proj.weight', 'layers_{i}/mlp/wi_0/kernel', LINEAR(1)),
    Entry('model.layers.{i}.mlp.up_proj.weight', 'layers_{i}/mlp/wi_1/kernel', LINEAR(1)),
    Entry('model.layers.{i}.mlp.down_proj.weight', 'layers_{i}/mlp/wo/kernel', LINEAR(1)),
)
# Llama's "post_attention_layernorm" is the norm before the MLP.
_LLAMA_NORMS = (
    Entry('model.layers.{i}.post_attention_layernorm.weight', 'layers_{i}/pre_mlp_norm/scale',
          SAME),
)
# Gemma 2 / 3's sandwich: post_attention_layernorm norms the attention output.
_GEMMA_NORMS = (
    Entry('model.layers.{i}.post_attention_layernorm.weight',
          'layers_{i}/post_attention_norm/scale', SAME),
    Entry('model.layers.{i}.pre_feedforward_layernorm.weight', 'layers_{i}/pre_mlp_norm/scale',
          SAME),
    Entry('model.layers.{i}.post_feedforward_layernorm.weight', 'layers_{i}/post_mlp_norm/scale',
          SAME),
)

TABLES: dict[str, tuple[Entry, ...]] = {
    'llama': _EMBED_AND_HEAD + _ATTENTION + _LLAMA_NORMS + _MLP,
    'qwen2': _EMBED_AND_HEAD + _ATTENTION + _LLAMA_NORMS + _MLP,
    'qwen3': _EMBED_AND_HEAD + _ATTENTION + _QK_NORM + _LLAMA_NORMS + _MLP,
    'gemma2': _EMBED_AND_HEAD + _ATTENTION + _GEMMA_NORMS + _MLP,
    'gemma3_text': _EMBED_AND_HEAD + _ATTENTION + _QK_NORM + _GEMMA_NORMS + _MLP,
}
ARCHITECTURES = {'llama': 'LlamaForCausalLM', 'qwen2': 'Qwen2ForCausalLM',
                 'qwen3': 'Qwen3ForCausalLM', 'gemma2': 'Gemma2ForCausalLM',
                 'gemma3_text': 'Gemma3ForCausalLM'}
# Checkpoint tensors that are buffers, not parameters (older Llama exports).
IGNORED_SUFFIXES = ('.rotary_emb.inv_freq',)

# transformers' defaults for keys a config.json may leave out (per family).
_DEFAULTS: dict[str, dict[str, Any]] = {
    'llama': dict(max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False,
                  attention_bias=False, hidden_act='silu'),
    'qwen2': dict(max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=False,
                  num_key_value_heads=32, hidden_act='silu', use_sliding_window=False,
                  sliding_window=4096, max_window_layers=28),
    'qwen3': dict(max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=False,
                  num_key_value_heads=32, head_dim=128, hidden_act='silu', attention_bias=False,
                  use_sliding_window=False, sliding_window=4096, max_window_layers=28),
    'gemma2': dict(max_position_embeddings=8192, rms_norm_eps=1e-6, tie_word_embeddings=True,
                   num_key_value_heads=4, head_dim=256, hidden_activation='gelu_pytorch_tanh',
                   attention_bias=False, query_pre_attn_scalar=256, sliding_window=4096,
                   final_logit_softcapping=30.0, attn_logit_softcapping=50.0),
    'gemma3_text': dict(max_position_embeddings=131072, rms_norm_eps=1e-6,
                        tie_word_embeddings=True, num_key_value_heads=4, head_dim=256,
                        hidden_activation='gelu_pytorch_tanh', attention_bias=False,
                        query_pre_attn_scalar=256, sliding_window=4096,
                        final_logit_softcapping=None, attn_logit_softcapping=None),
}
_ROPE_THETA = {'gemma3_text': (1_000_000.0, 10_000.0)}  # (global, local); others 10,000 for both
_ACTIVATIONS = {'silu': 'silu', 'gelu_pytorch_tanh': 'gelu_tanh'}
_MOE_KEYS = ('num_experts', 'num_local_experts', 'n_routed_experts', 'moe_intermediate_size',
             'num_experts_per_tok')
_MULTIMODAL_KEYS = ('vision_config', 'text_config', 'audio_config')
_REQUIRED = ('vocab_size', 'hidden_size', 'intermediate_size', 'num_hidden_layers',
             'num_attention_heads')


def _fail(where: str, message: str) -> ValueError:
  return ValueError(f'{where}: {message}')


def family_of(hf: Mapping[str, Any], where: str = 'config.json') -> str:
  """The family (model_type) of a checkpoint config, refusing what the decoder cannot run."""
  for key in _MULTIMODAL_KEYS:
    if hf.get(key) is not None:
      raise _fail(where, f'{key} is set: multimodal checkpoints (a vision tower) are not '
                  f'supported; give the text decoder alone')
  model_type = hf.get('model_type')
  if model_type not in TABLES:
    raise _fail(where, f'model_type {model_type!r} is not supported ({", ".join(TABLES)})')
  for key in _MOE_KEYS:
    if hf.get(key):
      raise _fail(where, f'{key} = {hf[key]!r}: mixture-of-experts models are not supported')
  return model_type


def _rope_settings(hf: Mapping[str, Any], family: str, layer_type: str,
                   where: str) -> dict[str, Any]:
  """rope_theta, rope_type and scaling keys of one layer type, from either config style."""
  global_theta, local_theta = _ROPE_THETA.get(family, (10_000.0, 10_000.0))
  params = hf.get('rope_parameters')
  key = 'rope_parameters'
  if isinstance(params, Mapping) and layer_type in params:  # 5.x, per layer type
    settings, key = dict(params[layer_type]), f'rope_parameters.{layer_type}'
  elif isinstance(params, Mapping):  # 5.x, one for every layer
    settings = dict(params)
  else:  # 4.x
    scaling = hf.get('rope_scaling')
    if family == 'gemma3_text' and layer_type == 'sliding_attention':
      settings = {'rope_theta': hf.get('rope_local_base_freq', local_theta)}
    else:
      settings = {**(dict(scaling) if scaling else {}), 'rope_theta': hf.get('rope_theta')}
      key = 'rope_scaling'
  if settings.get('rope_theta') is None:
    settings['rope_theta'] = local_theta if layer_type == 'sliding_attention' else global_theta
  settings['rope_type'] = settings.get('rope_type', settings.get('type', 'default'))
  if settings['rope_type'] not in ('default', 'linear', 'llama3'):
    raise _fail(where, f'{key}.rope_type {settings["rope_type"]!r} is not supported '
                f'(default, linear, llama3)')
  partial = settings.get('partial_rotary_factor', hf.get('partial_rotary_factor', 1.0))
  if partial not in (None, 1, 1.0):
    raise _fail(where, f'partial_rotary_factor {partial!r} is not supported (1.0 only)')
  return settings


def _layer_types(hf: Mapping[str, Any], family: str, num_layers: int) -> list[str] | None:
  if hf.get('layer_types') is not None:
    return list(hf['layer_types'])
  if family == 'gemma2':
    return ['sliding_attention' if i % 2 == 0 else 'full_attention' for i in range(num_layers)]
  if family == 'gemma3_text':
    pattern = hf.get('sliding_window_pattern', 6)
    return ['sliding_attention' if (i + 1) % pattern else 'full_attention'
            for i in range(num_layers)]
  if family in ('qwen2', 'qwen3') and hf.get('use_sliding_window'):
    first = hf.get('max_window_layers', 28)
    return ['sliding_attention' if i >= first else 'full_attention' for i in range(num_layers)]
  return None


def policy_config(hf: Mapping[str, Any], *, max_len: int | None = None,
                  compute_dtype: str = 'float32', value_hidden_dim: int | None = None,
                  where: str = 'config.json') -> PolicyConfig:
  """The PolicyConfig of a checkpoint's config.json (family_of checks it first).

  max_len: the longest sequence accepted, at most max_position_embeddings (default: that).
  """
  family = family_of(hf, where)
  get = lambda key: hf[key] if hf.get(key) is not None else _DEFAULTS[family].get(key)
  for key in _REQUIRED:
    if hf.get(key) is None:
      raise _fail(where, f'{key} is missing')
  if hf.get('mlp_bias'):
    raise _fail(where, 'mlp_bias = true is not supported')
  if hf.get('use_bidirectional_attention'):
    raise _fail(where, 'use_bidirectional_attention = true is not supported (causal only)')
  act_key = 'hidden_activation' if family.startswith('gemma') else 'hidden_act'
  activation = get(act_key) or hf.get('hidden_act')
  if activation not in _ACTIVATIONS:
    raise _fail(where, f'{act_key} {activation!r} is not supported ({", ".join(_ACTIVATIONS)})')
  heads, emb = int(hf['num_attention_heads']), int(hf['hidden_size'])
  num_layers = int(hf['num_hidden_layers'])
  layer_types = _layer_types(hf, family, num_layers)
  full = _rope_settings(hf, family, 'full_attention', where)
  local = None
  if layer_types and 'sliding_attention' in layer_types:
    local = _rope_settings(hf, family, 'sliding_attention', where)
    if local['rope_type'] != 'default' and local != full:
      raise _fail(where, f'rope_type {local["rope_type"]!r} on sliding layers is not supported')
  positions = int(get('max_position_embeddings'))
  if max_len is not None and max_len > positions:
    raise _fail(where, f'max_len {max_len} exceeds max_position_embeddings {positions}')
  gemma = family.startswith('gemma')
  rope_type = {'default': 'none'}.get(full['rope_type'], full['rope_type'])
  attention_bias = bool(get('attention_bias'))
  kv_heads = int(get('num_key_value_heads') or heads)
  return PolicyConfig(
      vocab_size=int(hf['vocab_size']), emb_dim=emb, num_heads=heads,
      head_dim=int(get('head_dim') or emb // heads), mlp_dim=int(hf['intermediate_size']),
      num_layers=num_layers, max_len=max_len or positions, dtype=compute_dtype,
      value_hidden_dim=value_hidden_dim or emb,
      rope_max_wavelength=float(full['rope_theta']),
      num_kv_heads=kv_heads if kv_heads != heads else None,
      qkv_bias=family == 'qwen2' or attention_bias, out_bias=attention_bias,
      qk_norm=family in ('qwen3', 'gemma3_text'), norm_epsilon=float(get('rms_norm_eps')),
      norm_scale_plus_one=gemma, post_norms=gemma, mlp_activation=_ACTIVATIONS[activation],
      scale_embeddings=gemma, tie_embeddings=bool(get('tie_word_embeddings')),
      attn_logit_softcap=get('attn_logit_softcapping'),
      final_logit_softcap=get('final_logit_softcapping'),
      query_pre_attn_scalar=get('query_pre_attn_scalar') if gemma else None,
      sliding_window=int(get('sliding_window')) if local else None,
      layer_types=tuple(layer_types) if local else None,
      local_rope_max_wavelength=float(local['rope_theta']) if local else None,
      rope_scaling=rope_type, rope_scaling_factor=float(full.get('factor', 1.0)),
      rope_low_freq_factor=float(full.get('low_freq_factor', 1.0)),
      rope_high_freq_factor=float(full.get('high_freq_factor', 4.0)),
      rope_original_max_len=int(full.get('original_max_position_embeddings', positions))
      if rope_type == 'llama3' else 8192)


def llama_config(config: PolicyConfig, *, torch_dtype: str = 'float32',
                 bos_token_id: int | None = None, eos_token_id: int | None = None,
                 pad_token_id: int | None = None) -> dict[str, Any]:
  """A Llama config.json for a policy the Llama layout expresses (e.g. the world policy).

  Raises:
    ValueError: naming the PolicyConfig field Llama has no counterpart for.
  """
  unsupported = {'qk_norm': False, 'norm_scale_plus_one': False, 'post_norms': False,
                 'mlp_activation': 'silu', 'scale_embeddings': False, 'attn_logit_softcap': None,
                 'final_logit_softcap': None, 'query_pre_attn_scalar': None,
                 'layer_types': None, 'local_rope_max_wavelength': None}
  for field, plain in unsupported.items():
    if getattr(config, field) != plain:
      raise ValueError(f'PolicyConfig.{field} = {getattr(config, field)!r} has no Llama '
                       f'counterpart; export it with its source checkpoint family')
  if config.qkv_bias != config.out_bias:
    raise ValueError('PolicyConfig.qkv_bias != out_bias has no Llama counterpart '
                     '(attention_bias covers all four projections)')
  rope_scaling = None
  if config.rope_scaling == 'linear':
    rope_scaling = {'rope_type': 'linear', 'factor': config.rope_scaling_factor}
  elif config.rope_scaling == 'llama3':
    rope_scaling = {'rope_type': 'llama3', 'factor': config.rope_scaling_factor,
                    'low_freq_factor': config.rope_low_freq_factor,
                    'high_freq_factor': config.rope_high_freq_factor,
                    'original_max_position_embeddings': config.rope_original_max_len}
  return {
      'architectures': [ARCHITECTURES['llama']], 'model_type': 'llama',
      'vocab_size': config.vocab_size, 'hidden_size': config.emb_dim,
      'intermediate_size': config.mlp_dim, 'num_hidden_layers': config.num_layers,
      'num_attention_heads': config.num_heads, 'num_key_value_heads': config.kv_heads,
      'head_dim': config.head_dim, 'hidden_act': 'silu',
      'max_position_embeddings': config.max_len, 'rms_norm_eps': config.norm_epsilon,
      'rope_theta': config.rope_max_wavelength, 'rope_scaling': rope_scaling,
      'attention_bias': config.qkv_bias, 'mlp_bias': False,
      'tie_word_embeddings': config.tie_embeddings, 'bos_token_id': bos_token_id,
      'eos_token_id': eos_token_id, 'pad_token_id': pad_token_id, 'torch_dtype': torch_dtype,
  }


def source_dtype(hf: Mapping[str, Any]) -> str | None:
  """The checkpoint's declared dtype ('bfloat16', ...): 5.x `dtype` or 4.x `torch_dtype`."""
  return hf.get('dtype') or hf.get('torch_dtype')


_RESERVED = ((conventions.PAD_ID, '<pad>'), (conventions.EOS_ID, '</s>'),
             (conventions.UNK_ID, '<unk>'))


def word_level_tokenizer(words: Sequence[str], config: PolicyConfig) -> dict[str, str]:
  """tokenizer.json (a `tokenizers` WordLevel model) and tokenizer_config.json for a word list
  under the project's id convention: pad 0, eos 1, unk 2, then the words.

  Raises:
    ValueError: the words do not fit the embedding, or one is reserved, repeated or has spaces.
  """
  vocab = {text: token_id for token_id, text in _RESERVED}
  for word in words:
    if not word or word != word.strip() or len(word.split()) != 1 or word in vocab:
      raise ValueError(f'word {word!r} is empty, has whitespace, is reserved or is repeated')
    vocab[word] = len(vocab)
  if len(vocab) > config.vocab_size:
    raise ValueError(f'{len(vocab)} ids do not fit PolicyConfig.vocab_size {config.vocab_size}')
  special = lambda token_id, text: {'id': token_id, 'content': text, 'single_word': False,
                                    'lstrip': False, 'rstrip': False, 'normalized': False,
                                    'special': True}
  tokenizer = {'version': '1.0', 'truncation': None, 'padding': None,
               'added_tokens': [special(i, t) for i, t in _RESERVED], 'normalizer': None,
               'pre_tokenizer': {'type': 'WhitespaceSplit'}, 'post_processor': None,
               'decoder': None, 'model': {'type': 'WordLevel', 'vocab': vocab,
                                          'unk_token': '<unk>'}}
  tokenizer_config = {
      'tokenizer_class': 'PreTrainedTokenizerFast', 'pad_token': '<pad>', 'eos_token': '</s>',
      'unk_token': '<unk>', 'model_max_length': config.max_len,
      'added_tokens_decoder': {str(i): {k: v for k, v in special(i, t).items() if k != 'id'}
                               for i, t in _RESERVED}}
  return {'tokenizer.json': json.dumps(tokenizer, ensure_ascii=False, indent=1) + '\n',
          'tokenizer_config.json': json.dumps(tokenizer_config, indent=2) + '\n'}
