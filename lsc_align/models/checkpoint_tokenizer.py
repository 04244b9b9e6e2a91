"""A Hugging Face checkpoint's own tokenizer: ids as transformers' AutoTokenizer gives them.

`load_tokenizer(path)` reads a checkpoint directory (local or gs://; files are read as bytes
through io_utils, so both paths take the same code) and returns a `CheckpointTokenizer`:
  * `tokenizer.json` through the `tokenizers` library when present (Llama 3, Qwen, Gemma);
  * else `tokenizer.model` (Llama 2) or `spiece.model` (T5) through sentencepiece.

Special tokens, where transformers (v5) takes them from:
  * token strings (bos / eos / pad / unk, a string or {"content": ...}): tokenizer_config.json;
    special_tokens_map.json overrides it only when tokenizer_config.json has no
    added_tokens_decoder (the legacy layout); a SentencePiece model's own pieces fill the rest.
    A key set to null means "no such token".
  * a named token the vocabulary lacks is appended as a new id, as transformers does.
  * BOS / EOS in encode: when tokenizer_config.json sets add_bos_token or add_eos_token, those
    flags; else tokenizer.json's own post-processor; a SentencePiece model adds nothing unless
    flagged, except T5, which always ends in EOS.
  * `eos_ids`: the tokenizer's eos first (what encode appends), then generation_config.json's
    eos_token_id (an int or a list: every one is a stop id), then config.json's.
  * `bos_id`: the tokenizer's; config.json's bos_token_id only when no tokenizer file names a
    bos at all (not even null).
  * `pad_id`: the tokenizer's pad token, else generation_config.json's pad_token_id, else
    config.json's; else the primary eos (`pad_source` says 'eos fallback', and a log line), or a
    ValueError when `strict_pad=True`.
  * chat template: chat_template.jinja over tokenizer_config.json's chat_template; of several
    named templates, 'default'.

decode never applies transformers' clean_up_tokenization_spaces (a lossy rewrite of spaces
before punctuation), so decode(encode(text)) is exact for byte-level BPE. SentencePiece models
give text back after their normalisation (T5: NFKC, whitespace runs and newlines to one space).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Mapping, Sequence

from absl import logging

from lsc_align import io_utils

TOKENIZERS_FILE = 'tokenizer.json'
SENTENCEPIECE_FILES = ('tokenizer.model', 'spiece.model')
CONFIG_FILES = ('tokenizer_config.json', 'special_tokens_map.json', 'generation_config.json',
                'config.json')
CHAT_TEMPLATE_FILE = 'chat_template.jinja'
# Files that decide how text becomes ids; their bytes make the fingerprint.
_FINGERPRINT_FILES = (TOKENIZERS_FILE, *SENTENCEPIECE_FILES, 'tokenizer_config.json',
                      'special_tokens_map.json', CHAT_TEMPLATE_FILE)
_NAMED = ('bos_token', 'eos_token', 'unk_token', 'pad_token')
_HUGE_LENGTH = 10**12  # transformers writes ~1e30 for "no limit"
_T5_MODEL_TYPES = ('t5', 'mt5', 'umt5', 'longt5')


def _token_text(value: Any, source: str, key: str) -> str | None:
  if value is None or isinstance(value, str):
    return value
  if isinstance(value, Mapping) and isinstance(value.get('content'), str):
    return value['content']
  raise ValueError(f'{source}: {key} must be a string or {{"content": ...}}, got {value!r}')


def _id_list(value: Any, source: str, key: str) -> list[int]:
  if value is None:
    return []
  values = value if isinstance(value, list) else [value]
  if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
    raise ValueError(f'{source}: {key} must be a token id or a list of ids, got {value!r}')
  return list(values)


def _read_json(path: str) -> dict[str, Any]:
  try:
    value = json.loads(io_utils.read_text(path))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f'{path}: not valid JSON ({e})') from e
  if not isinstance(value, dict):
    raise ValueError(f'{path}: expected a JSON object, got {type(value).__name__}')
  return value


class CheckpointTokenizer:
  """Text <-> ids exactly as the checkpoint's tokenizer, with its special ids and chat template.

  Attributes:
    path: the checkpoint directory. kind: 'tokenizers' or 'sentencepiece'. files: the file
    names read. bos_id (None when the tokenizer has no bos), eos_ids (primary first), pad_id,
    pad_source (which file gave pad_id, or 'eos fallback'), unk_id, vocab_size (len(tokenizer),
    added tokens included), fingerprint (SHA-256 of the tokenizer files), chat_template (or
    None), model_max_length (or None), bos_token / eos_token / pad_token strings.
  """

  def __init__(self, *, path: str, kind: str, files: tuple[str, ...], backend: Any,
               tokens: Mapping[str, str | None], token_source: str,
               config_ids: Mapping[str, Any],
               add_bos: bool | None, add_eos: bool | None, chat_template: str | None,
               model_max_length: int | None, fingerprint: str, strict_pad: bool):
    self.path, self.kind, self.files, self._backend = path, kind, files, backend
    self.chat_template, self.model_max_length = chat_template, model_max_length
    self.fingerprint = fingerprint
    self.bos_token, self.eos_token = tokens.get('bos_token'), tokens.get('eos_token')
    self.pad_token, self.unk_token = tokens.get('pad_token'), tokens.get('unk_token')
    ids = {k: (None if v is None else backend.token_id(v)) for k, v in tokens.items()}
    self.bos_id = ids.get('bos_token')
    if self.bos_id is None and 'bos_token' not in tokens and config_ids['bos']:
      self.bos_id = config_ids['bos'][0]
    self.unk_id = ids.get('unk_token')
    eos = ([ids['eos_token']] if ids.get('eos_token') is not None else []) + config_ids['eos']
    self.eos_ids = tuple(dict.fromkeys(eos))
    if not self.eos_ids:
      raise ValueError(f'{path}: no eos token in {", ".join(CONFIG_FILES)}')
    self.add_bos = bool(add_bos) and ids.get('bos_token') is not None
    self.add_eos = bool(add_eos) and ids.get('eos_token') is not None
    # None: tokenizer.json's post-processor decides (no add_bos_token/add_eos_token given).
    self._template = None if add_bos is None and add_eos is None else (self.add_bos, self.add_eos)
    if self._template is None:
      framed = backend.encode('', True)
      self.add_bos = bool(framed) and framed[0] == self.bos_id
      self.add_eos = bool(framed) and framed[-1] in self.eos_ids
    if ids.get('pad_token') is not None:
      self.pad_id, self.pad_source = ids['pad_token'], token_source
    elif config_ids['pad']:
      self.pad_id, self.pad_source = config_ids['pad'][0], config_ids['pad_source']
    elif strict_pad:
      raise ValueError(f'{path}: the tokenizer has no pad token (strict_pad=True)')
    else:
      self.pad_id, self.pad_source = self.eos_ids[0], 'eos fallback'
      logging.info('%s: no pad token; padding with the primary eos id %d', path, self.pad_id)
    self.vocab_size = backend.size()
    for name, token_id in (('bos', self.bos_id), ('pad', self.pad_id), *(
        ('eos', e) for e in self.eos_ids)):
      if token_id is not None and token_id >= self.vocab_size:
        raise ValueError(f'{path}: {name} id {token_id} is outside the vocabulary '
                         f'({self.vocab_size} ids)')

  def __repr__(self) -> str:
    return (f'CheckpointTokenizer({self.path!r}, {self.kind}, vocab_size={self.vocab_size}, '
            f'bos={self.bos_id}, eos={self.eos_ids}, pad={self.pad_id} ({self.pad_source}))')

  def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
    """Token ids of text; with special tokens, BOS / EOS where the checkpoint adds them."""
    if not isinstance(text, str):
      raise ValueError(f'encode: expected a string, got {type(text).__name__}')
    if not add_special_tokens:
      return self._backend.encode(text, False)
    if self._template is None:
      return self._backend.encode(text, True)
    body = self._backend.encode(text, False)
    return [self.bos_id] * self.add_bos + body + [self.eos_ids[0]] * self.add_eos

  def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
    """Text of ids (special tokens as their strings unless skipped); no space clean-up."""
    ids = [int(i) for i in ids]
    bad = [i for i in ids if not 0 <= i < self.vocab_size]
    if bad:
      raise ValueError(f'decode: id {bad[0]} is outside the vocabulary ({self.vocab_size} ids)')
    return self._backend.decode(ids, skip_special_tokens)

  def token_id(self, token: str) -> int | None:
    """The id of one token string (a vocabulary entry or added token), or None."""
    return self._backend.token_id(token)

  def check_fits(self, embedding_rows: int) -> None:
    """ValueError unless every id has a row in a model's embedding table (more rows is fine)."""
    if self.vocab_size > embedding_rows:
      raise ValueError(f'{self.path}: the tokenizer has {self.vocab_size} ids but the model\'s '
                       f'embedding table has only {embedding_rows} rows')

  def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], *,
                          add_generation_prompt: bool = True, **variables: Any) -> str:
    """The checkpoint's chat template rendered for messages, as transformers renders it."""
    if self.chat_template is None:
      raise ValueError(f'{self.path}: the checkpoint has no chat template')
    if not all(isinstance(m, Mapping) for m in messages):
      raise ValueError('apply_chat_template: every message must be a dict (role, content)')
    import jinja2  # pylint: disable=g-import-not-at-top  (only chat prompts need jinja2)
    special = {k: v for k, v in (('bos_token', self.bos_token), ('eos_token', self.eos_token),
                                 ('unk_token', self.unk_token), ('pad_token', self.pad_token))
               if v is not None}
    try:
      return _compile_template(self.chat_template).render(
          messages=[dict(m) for m in messages], tools=None, documents=None,
          add_generation_prompt=add_generation_prompt, **{**special, **variables})
    except jinja2.TemplateError as e:
      raise ValueError(f'{self.path}: chat template: {e}') from e


def _compile_template(source: str) -> Any:
  """A sandboxed jinja2 template with transformers' settings, filters and globals."""
  import datetime  # pylint: disable=g-import-not-at-top
  import jinja2  # pylint: disable=g-import-not-at-top
  from jinja2 import ext, sandbox  # pylint: disable=g-import-not-at-top

  class Generation(ext.Extension):
    """{% generation %}...{% endgeneration %} (marks assistant text) renders its body."""
    tags = {'generation'}

    def parse(self, parser: Any) -> Any:
      lineno = next(parser.stream).lineno
      body = parser.parse_statements(('name:endgeneration',), drop_needle=True)
      return jinja2.nodes.CallBlock(self.call_method('_body'), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
      return caller()

  def raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)

  def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
             separators: Any = None, sort_keys: bool = False) -> str:
    # jinja2's own tojson escapes HTML characters; chat templates expect plain JSON.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)

  env = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                              extensions=[Generation, ext.loopcontrols])
  env.filters['tojson'] = tojson
  env.globals['raise_exception'] = raise_exception
  env.globals['strftime_now'] = lambda fmt: datetime.datetime.now().strftime(fmt)
  try:
    return env.from_string(source)
  except jinja2.TemplateSyntaxError as e:
    raise ValueError(f'chat template, line {e.lineno}: {e.message}') from e


class _TokenizersBackend:
  """tokenizer.json through the tokenizers library."""

  def __init__(self, data: bytes, source: str):
    import tokenizers  # pylint: disable=g-import-not-at-top
    try:
      self.tok = tokenizers.Tokenizer.from_str(data.decode('utf-8'))
    except (UnicodeDecodeError, Exception) as e:  # the library raises bare Exception
      reason = str(e).splitlines()[0] if str(e) else type(e).__name__
      raise ValueError(f'{source}: not a tokenizers file ({reason})') from e
    self.tok.no_truncation()  # transformers' encode neither truncates nor pads by default
    self.tok.no_padding()
    self._added = tokenizers.AddedToken

  def add(self, content: str, flags: Mapping[str, Any], special: bool) -> None:
    keys = ('single_word', 'lstrip', 'rstrip', 'normalized')
    token = self._added(content, special=special, **{k: bool(flags[k]) for k in keys
                                                      if k in flags})
    (self.tok.add_special_tokens if special else self.tok.add_tokens)([token])

  def ensure_special(self, content: str) -> None:
    if content not in {t.content for t in self.tok.get_added_tokens_decoder().values()}:
      self.add(content, {'normalized': False}, True)

  def token_id(self, token: str) -> int | None:
    return self.tok.token_to_id(token)

  def size(self) -> int:
    return self.tok.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str, special: bool) -> list[int]:
    return self.tok.encode(text, add_special_tokens=special).ids

  def decode(self, ids: list[int], skip_special: bool) -> str:
    return self.tok.decode(ids, skip_special_tokens=skip_special)


class _SentencePieceBackend:
  """tokenizer.model / spiece.model through sentencepiece, with transformers' added tokens.

  Text is split on added tokens (special ones included) before sentencepiece sees it, as
  transformers does. A piece of text gets sentencepiece's dummy "▁" prefix as transformers'
  Metaspace gives it: Llama, when the piece starts the text (any piece if legacy) and does not
  start with a space; T5 (whitespace split first), every piece.
  """

  def __init__(self, data: bytes, source: str, *, legacy: bool, t5: bool):
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    from sentencepiece import sentencepiece_model_pb2  # pylint: disable=g-import-not-at-top
    try:
      self.sp = spm.SentencePieceProcessor(model_proto=data)
      proto = sentencepiece_model_pb2.ModelProto.FromString(data)
    except Exception as e:  # sentencepiece / protobuf raise several types for a bad model
      raise ValueError(f'{source}: not a SentencePiece model ({type(e).__name__})') from e
    self.dummy_prefix = proto.normalizer_spec.add_dummy_prefix
    proto.normalizer_spec.add_dummy_prefix = False
    self.sp_bare = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    self.legacy, self.t5 = legacy, t5
    spec = proto.trainer_spec
    self.defaults = {name: self.sp.id_to_piece(i) for name, i in (
        ('bos_token', spec.bos_id), ('eos_token', spec.eos_id), ('unk_token', spec.unk_id),
        ('pad_token', spec.pad_id)) if 0 <= i < self.sp.get_piece_size()}
    self.added: dict[str, int] = {}  # added token -> id
    self.pieces: dict[int, str] = {}  # id -> text of added tokens
    self.special: set[int] = set()
    self._split: re.Pattern[str] | None = None
    self._strip: dict[str, tuple[bool, bool]] = {}

  def add(self, content: str, flags: Mapping[str, Any], special: bool,
          token_id: int | None = None) -> None:
    if token_id is None:
      token_id = self.token_id(content)
      token_id = self.size() if token_id is None else token_id
    self.added[content] = token_id
    self.pieces[token_id] = content
    if special:
      self.special.add(token_id)
    self._strip[content] = (bool(flags.get('lstrip')), bool(flags.get('rstrip')))
    names = sorted(self.added, key=len, reverse=True)
    self._split = re.compile('(' + '|'.join(map(re.escape, names)) + ')')

  def ensure_special(self, content: str) -> None:
    if content in self.added:
      self.special.add(self.added[content])
    else:
      self.add(content, {}, True)

  def token_id(self, token: str) -> int | None:
    if token in self.added:
      return self.added[token]
    token_id = self.sp.piece_to_id(token)
    return token_id if self.sp.id_to_piece(token_id) == token else None

  def size(self) -> int:
    return max([self.sp.get_piece_size(), *(i + 1 for i in self.pieces)])

  def encode(self, text: str, special: bool) -> list[int]:
    del special  # BOS / EOS are added by CheckpointTokenizer
    parts = self._split.split(text) if self._split else [text]
    ids: list[int] = []
    offset = 0
    for index, part in enumerate(parts):
      if index % 2:  # an added token
        ids.append(self.added[part])
        lstrip, rstrip = self._strip[part]
        if rstrip and index + 1 < len(parts):
          parts[index + 1] = parts[index + 1].lstrip()
        offset += len(part)
        continue
      if index + 1 < len(parts) and self._strip[parts[index + 1]][0]:
        part = part.rstrip()
      if part:
        prefixed = self.dummy_prefix and (self.t5 or not part.startswith(' ') and (
            offset == 0 or self.legacy))
        ids.extend((self.sp if prefixed else self.sp_bare).encode(part))
      offset += len(parts[index])
    return ids

  def decode(self, ids: list[int], skip_special: bool) -> str:
    out: list[str] = []
    run: list[int] = []

    def flush() -> None:
      if run:
        text = self.sp.decode(run)
        # sentencepiece drops a leading "▁" as the dummy prefix; only the text's start has one.
        if out and self.dummy_prefix and self.sp.id_to_piece(run[0]).startswith('▁'):
          text = ' ' + text
        out.append(text)
        run.clear()

    for token_id in ids:
      if token_id in self.pieces:
        flush()
        if not (skip_special and token_id in self.special):
          out.append(self.pieces[token_id])
      else:
        run.append(token_id)
    flush()
    return ''.join(out)


def _chat_template(config: Mapping[str, Any], directory: str, source: str) -> str | None:
  """chat_template.jinja, else tokenizer_config.json's (a string, or named templates)."""
  path = os.path.join(directory, CHAT_TEMPLATE_FILE)
  if io_utils.exists(path):
    try:
      return io_utils.read_text(path)
    except UnicodeDecodeError as e:
      raise ValueError(f'{path}: not UTF-8 text') from e
  template = config.get('chat_template')
  if isinstance(template, list):  # [{"name": ..., "template": ...}, ...]
    named = {t.get('name'): t.get('template') for t in template if isinstance(t, Mapping)}
    template = named.get('default', next(iter(named.values()), None))
  elif isinstance(template, Mapping):
    template = template.get('default', next(iter(template.values()), None))
  if template is not None and not isinstance(template, str):
    raise ValueError(f'{source}: chat_template must be a string or named templates')
  return template


def _config_ids(generation: Mapping[str, Any], model: Mapping[str, Any],
                directory: str) -> dict[str, Any]:
  """bos / eos / pad ids of generation_config.json, then config.json, in that order."""
  out: dict[str, Any] = {'bos': [], 'eos': [], 'pad': [], 'pad_source': None}
  for name, config in (('generation_config.json', generation), ('config.json', model)):
    source = os.path.join(directory, name)
    for key in ('bos', 'eos', 'pad'):
      found = _id_list(config.get(f'{key}_token_id'), source, f'{key}_token_id')
      if key == 'pad' and found and not out['pad']:
        out['pad_source'] = name
      out[key] += [i for i in found if i not in out[key]]
  return out


def _fingerprint(files: Mapping[str, bytes]) -> str:
  digest = hashlib.sha256()
  for name in _FINGERPRINT_FILES:
    if name in files:
      digest.update(f'{name}\0{len(files[name])}\0'.encode())
      digest.update(files[name])
  return digest.hexdigest()


def load_tokenizer(path: str | os.PathLike[str], *, strict_pad: bool = False
                   ) -> CheckpointTokenizer:
  """The tokenizer of a Hugging Face checkpoint directory (local or gs://...).

  Args:
    path: the directory holding tokenizer.json or tokenizer.model / spiece.model and the
      config files beside them (any of tokenizer_config.json, special_tokens_map.json,
      generation_config.json, config.json, chat_template.jinja).
    strict_pad: a tokenizer without a pad id is an error instead of padding with the primary eos.

  Raises:
    FileNotFoundError: no such directory, or no tokenizer file in it.
    ValueError: a file that does not parse or a field of the wrong type (naming the file), no
      eos id anywhere, or (strict_pad) no pad id.
  """
  directory = io_utils.abspath(path)
  if not io_utils.isdir(directory):
    raise FileNotFoundError(f'{directory}: no such checkpoint directory')
  present = set(io_utils.listdir(directory))
  model_file = next((n for n in (TOKENIZERS_FILE, *SENTENCEPIECE_FILES) if n in present), None)
  if model_file is None:
    raise FileNotFoundError(f'{directory}: no {TOKENIZERS_FILE}, '
                            f'{" or ".join(SENTENCEPIECE_FILES)}')
  names = [model_file] + [n for n in (*CONFIG_FILES, CHAT_TEMPLATE_FILE) if n in present]
  data = {n: io_utils.read_bytes(os.path.join(directory, n)) for n in names}
  configs = {n: _read_json(os.path.join(directory, n)) if n in data else {}
             for n in CONFIG_FILES}
  tokenizer_config = configs['tokenizer_config.json']
  source = os.path.join(directory, 'tokenizer_config.json')
  raw_tokens = {k: tokenizer_config[k] for k in _NAMED if k in tokenizer_config}
  token_source = 'tokenizer_config.json'
  if 'added_tokens_decoder' not in tokenizer_config and configs['special_tokens_map.json']:
    # transformers' legacy layout: special_tokens_map.json overrides tokenizer_config.json.
    token_map = configs['special_tokens_map.json']
    raw_tokens.update({k: token_map[k] for k in _NAMED if k in token_map})
    if 'pad_token' in token_map:
      token_source = 'special_tokens_map.json'
      source = os.path.join(directory, 'special_tokens_map.json')
  tokens = {k: _token_text(v, source, k) for k, v in raw_tokens.items()}
  added = tokenizer_config.get('added_tokens_decoder') or {}
  if not isinstance(added, Mapping) or not all(
      str(k).isdigit() and isinstance(v, Mapping) and isinstance(v.get('content'), str)
      for k, v in added.items()):
    raise ValueError(f'{source}: added_tokens_decoder must map ids to {{"content": ...}}')
  tokenizer_class = str(tokenizer_config.get('tokenizer_class') or '')
  model_type = str(configs['config.json'].get('model_type') or '')
  is_t5 = (tokenizer_class.startswith(('T5', 'MT5', 'UMT5')) or model_type in _T5_MODEL_TYPES
           or (not tokenizer_class and not model_type and model_file == 'spiece.model'))
  add_bos, add_eos = tokenizer_config.get('add_bos_token'), tokenizer_config.get('add_eos_token')
  model_path = os.path.join(directory, model_file)
  if model_file == TOKENIZERS_FILE:
    kind = 'tokenizers'
    backend: Any = _TokenizersBackend(data[model_file], model_path)
    for token_id, flags in sorted(added.items(), key=lambda kv: int(kv[0])):
      if backend.token_id(flags['content']) is None:
        backend.add(flags['content'], flags, bool(flags.get('special')))
  else:
    kind = 'sentencepiece'
    legacy = bool(tokenizer_config.get('legacy', False))
    backend = _SentencePieceBackend(data[model_file], model_path, legacy=legacy, t5=is_t5)
    if 'pad_token' not in tokens:
      token_source = model_file
    for name, piece in backend.defaults.items():
      tokens.setdefault(name, piece)
    for token_id, flags in sorted(added.items(), key=lambda kv: int(kv[0])):
      backend.add(flags['content'], flags, bool(flags.get('special')), int(token_id))
    if is_t5 and not any(c.startswith('<extra_id_') for c in backend.added):
      extra_ids, base = int(tokenizer_config.get('extra_ids', 100)), backend.size()
      for i in range(extra_ids):  # sentinels after the pieces, <extra_id_0> last
        backend.add(f'<extra_id_{i}>', {}, True, base + extra_ids - 1 - i)
    if is_t5 and add_eos is None:
      add_eos = True  # T5Tokenizer always ends a sequence in EOS
    add_bos = bool(add_bos)
  for name in _NAMED:  # named tokens are special tokens, added when the vocabulary lacks them
    if tokens.get(name) is not None:
      backend.ensure_special(tokens[name])
  max_length = tokenizer_config.get('model_max_length')
  if max_length is not None and (not isinstance(max_length, (int, float)) or max_length < 1):
    raise ValueError(f'{source}: model_max_length must be a positive number, got {max_length!r}')
  return CheckpointTokenizer(
      path=directory, kind=kind, files=tuple(names), backend=backend, tokens=tokens,
      token_source=token_source,
      config_ids=_config_ids(configs['generation_config.json'], configs['config.json'],
                             directory),
      add_bos=add_bos, add_eos=add_eos,
      chat_template=_chat_template(tokenizer_config, directory, source),
      model_max_length=(None if max_length is None or max_length >= _HUGE_LENGTH
                        else int(max_length)),
      fingerprint=_fingerprint(data), strict_pad=strict_pad)
