"""A Hugging Face checkpoint's own tokenizer: ids as transformers' (v5) AutoTokenizer gives them.

`load_tokenizer(path)` reads a checkpoint directory, local or gs:// (every file is read as bytes
through io_utils, and both libraries load from bytes, so a bucket needs no local copy):
  * `tokenizer.json` through the `tokenizers` library when present (Llama 3, Qwen, Gemma);
  * else `tokenizer.model` (Llama 2) or `spiece.model` (T5) through sentencepiece, with the
    added tokens and "▁" prefix rules of transformers' conversion of the same model.

Where special tokens come from (the precedence transformers applies):
  * Token strings (bos / eos / unk / pad; a string or {"content": ...}; null means none):
    tokenizer_config.json, overridden by special_tokens_map.json only when tokenizer_config.json
    has no added_tokens_decoder (the legacy layout); a SentencePiece model's own control pieces
    fill what neither names. Named and extra special tokens the vocabulary lacks get new ids.
  * BOS / EOS added by encode: tokenizer.json's post-processor (transformers 5 ignores
    add_bos_token / add_eos_token beside a tokenizer.json); for SentencePiece,
    tokenizer_config.json's add_bos_token / add_eos_token (default off; T5 defaults EOS on).
  * `eos_ids`: the tokenizer's eos (primary: what encode appends), then generation_config.json's
    eos_token_id (an int or a list; all are stop ids), then config.json's, without repeats.
  * `bos_id`: the tokenizer's; config.json / generation_config.json only if no tokenizer file
    names a bos at all.
  * `pad_id`: the tokenizer's pad token, else generation_config.json's pad_token_id, else
    config.json's; else the primary eos, logged and recorded as pad_source 'eos fallback'
    (`strict_pad=True` makes that an error).
  * Chat template: chat_template.jinja over tokenizer_config.json's chat_template; of several
    named templates, 'default'.

decode never applies transformers' clean_up_tokenization_spaces (a lossy rewrite of spaces
before punctuation), so byte-level BPE gives every text back exactly. SentencePiece gives text
back after the model's normalisation (T5: NFKC, runs of whitespace and newlines become one
space; a Llama 2 style model with byte fallback and no normalisation is exact).
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
# The files that decide how text becomes ids (and prompts become text) make the fingerprint.
FINGERPRINT_FILES = (TOKENIZERS_FILE, *SENTENCEPIECE_FILES, 'tokenizer_config.json',
                     'special_tokens_map.json', CHAT_TEMPLATE_FILE)
EOS_FALLBACK = 'eos fallback'
_NAMED = ('bos_token', 'eos_token', 'unk_token', 'pad_token')
_NO_LIMIT = 10**12  # transformers writes ~1e30 as model_max_length for "no limit"


def _token_text(value: Any, source: str, key: str) -> str | None:
  if value is None or isinstance(value, str):
    return value
  if isinstance(value, Mapping) and isinstance(value.get('content'), str):
    return value['content']
  raise ValueError(f'{source}: {key} must be a string or {{"content": ...}}, got {value!r}')


def _id_list(value: Any, source: str, key: str) -> list[int]:
  values = [] if value is None else value if isinstance(value, list) else [value]
  if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
    raise ValueError(f'{source}: {key} must be a token id or a list of ids, got {value!r}')
  return values


def _read_json(path: str) -> dict[str, Any]:
  try:
    value = json.loads(io_utils.read_bytes(path).decode('utf-8'))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f'{path}: not valid JSON ({e})') from e
  if not isinstance(value, dict):
    raise ValueError(f'{path}: expected a JSON object, got {type(value).__name__}')
  return value


class CheckpointTokenizer:
  """Text <-> ids as the checkpoint's tokenizer, with its special ids and chat template.

  Attributes: path (the directory), kind ('tokenizers' or 'sentencepiece'), files (names
  read), bos_id (None: no bos), eos_ids (primary first), pad_id and pad_source (the file that
  gave it, or 'eos fallback'), unk_id, add_bos / add_eos (what encode adds), vocab_size
  (len(tokenizer), added tokens included), fingerprint (SHA-256 of FINGERPRINT_FILES),
  chat_template, model_max_length (None: no limit), bos_token / eos_token / pad_token strings.
  """

  def __init__(self, backend: Any, **attributes: Any):
    self._backend = backend
    self.__dict__.update(attributes)
    framed = backend.encode('', True)  # what encode adds around any text
    self.add_bos = bool(framed) and self.bos_id is not None and framed[0] == self.bos_id
    self.add_eos = len(framed) > self.add_bos and framed[-1] == self.eos_ids[0]
    self.vocab_size = backend.size()

  @property
  def eos_id(self) -> int:
    """The primary eos: what encode appends and what a response ends with."""
    return self.eos_ids[0]

  def __repr__(self) -> str:
    return (f'CheckpointTokenizer({self.path!r}, {self.kind}, vocab_size={self.vocab_size}, '
            f'bos={self.bos_id}, eos={self.eos_ids}, pad={self.pad_id} ({self.pad_source}))')

  def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
    """Token ids of text; with special tokens, BOS / EOS where the checkpoint adds them."""
    if not isinstance(text, str):
      raise ValueError(f'encode: expected a string, got {type(text).__name__}')
    return self._backend.encode(text, add_special_tokens)

  def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
    """Text of ids, special tokens written out unless skipped; spaces left as they are."""
    ids = [int(i) for i in ids]
    bad = [i for i in ids if not 0 <= i < self.vocab_size]
    if bad:
      raise ValueError(f'decode: id {bad[0]} is outside the vocabulary ({self.vocab_size} ids)')
    return self._backend.decode(ids, skip_special_tokens)

  def token_id(self, token: str) -> int | None:
    """The id of one token string (a vocabulary piece or an added token), or None."""
    return self._backend.token_id(token)

  def check_fits(self, embedding_rows: int) -> None:
    """ValueError unless every id has a row in a model's embedding table (more rows is fine)."""
    if self.vocab_size > embedding_rows:
      raise ValueError(f'{self.path}: the tokenizer has {self.vocab_size} ids but the model\'s '
                       f'embedding table has only {embedding_rows} rows')

  def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], *,
                          add_generation_prompt: bool = True, **variables: Any) -> str:
    """The checkpoint's Jinja chat template rendered for messages, as transformers does."""
    if self.chat_template is None:
      raise ValueError(f'{self.path}: the checkpoint has no chat template')
    if not all(isinstance(m, Mapping) for m in messages):
      raise ValueError('apply_chat_template: every message must be a dict (role, content)')
    import jinja2  # pylint: disable=g-import-not-at-top  (only chat prompts need jinja2)
    special = {k: v for k, v in (('bos_token', self.bos_token), ('eos_token', self.eos_token),
                                 ('unk_token', self.unk_token), ('pad_token', self.pad_token))
               if v is not None}
    try:
      template = _compile_template(self.chat_template)
      return template.render(messages=[dict(m) for m in messages], tools=None, documents=None,
                             add_generation_prompt=add_generation_prompt,
                             **{**special, **variables})
    except jinja2.TemplateError as e:
      where = f', line {e.lineno}' if isinstance(e, jinja2.TemplateSyntaxError) else ''
      raise ValueError(f'{self.path}: chat template{where}: {e.message}') from e


def _compile_template(source: str) -> Any:
  """A sandboxed jinja2 template with transformers' settings, filters and globals."""
  import datetime  # pylint: disable=g-import-not-at-top
  import jinja2  # pylint: disable=g-import-not-at-top
  from jinja2 import ext, sandbox  # pylint: disable=g-import-not-at-top

  class Generation(ext.Extension):
    """{% generation %}...{% endgeneration %} (marks assistant text): renders its body."""
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
  return env.from_string(source)


class _TokenizersBackend:
  """tokenizer.json through the tokenizers library (its post-processor adds BOS / EOS)."""

  def __init__(self, data: bytes, source: str):
    import tokenizers  # pylint: disable=g-import-not-at-top
    try:
      self.tok = tokenizers.Tokenizer.from_str(data.decode('utf-8'))
    except Exception as e:  # pylint: disable=broad-except  (the library raises bare Exception)
      reason = str(e).splitlines()[0] if str(e) else type(e).__name__
      raise ValueError(f'{source}: not a tokenizers file ({reason})') from e
    self.tok.no_truncation()  # transformers' encode neither truncates nor pads by default
    self.tok.no_padding()
    self._added_token = tokenizers.AddedToken

  def add(self, content: str, flags: Mapping[str, Any], special: bool) -> None:
    keys = ('single_word', 'lstrip', 'rstrip', 'normalized')
    token = self._added_token(content, special=special,
                              **{k: bool(flags[k]) for k in keys if k in flags})
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

  Text is split on added tokens first, as transformers does. A piece of text gets the dummy
  "▁" prefix as transformers' Metaspace gives it: Llama, when the piece starts the text (any
  piece if legacy) and does not begin with a space; T5 (whitespace split first), every piece.
  """

  def __init__(self, data: bytes, source: str, *, legacy: bool, t5: bool):
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    from sentencepiece import sentencepiece_model_pb2  # pylint: disable=g-import-not-at-top
    try:
      self.sp = spm.SentencePieceProcessor(model_proto=data)
      proto = sentencepiece_model_pb2.ModelProto.FromString(data)
    except Exception as e:  # pylint: disable=broad-except  (several types for a bad model)
      raise ValueError(f'{source}: not a SentencePiece model ({type(e).__name__})') from e
    self.dummy_prefix = proto.normalizer_spec.add_dummy_prefix
    proto.normalizer_spec.add_dummy_prefix = False
    self.sp_bare = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    self.legacy, self.t5 = legacy, t5
    spec, pieces = proto.trainer_spec, self.sp.get_piece_size()
    self.control = {name: self.sp.id_to_piece(i) for name, i in (
        ('bos_token', spec.bos_id), ('eos_token', spec.eos_id), ('unk_token', spec.unk_id),
        ('pad_token', spec.pad_id)) if 0 <= i < pieces}
    self.added: dict[str, int] = {}  # added token -> id
    self.text_of: dict[int, str] = {}  # id -> added token
    self.special: set[int] = set()
    self.strip: dict[str, tuple[bool, bool]] = {}  # added token -> (lstrip, rstrip)
    self.split: re.Pattern[str] | None = None
    self.frame: tuple[list[int], list[int]] = ([], [])  # ids before and after the text

  def add(self, content: str, flags: Mapping[str, Any], special: bool,
          token_id: int | None = None) -> None:
    if token_id is None:
      token_id = self.token_id(content)
      token_id = self.size() if token_id is None else token_id
    self.added[content], self.text_of[token_id] = token_id, content
    if special:
      self.special.add(token_id)
    self.strip[content] = (bool(flags.get('lstrip')), bool(flags.get('rstrip')))
    longest_first = sorted(self.added, key=len, reverse=True)
    self.split = re.compile('(' + '|'.join(map(re.escape, longest_first)) + ')')

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
    return max([self.sp.get_piece_size(), *(i + 1 for i in self.text_of)])

  def encode(self, text: str, special: bool) -> list[int]:
    parts = self.split.split(text) if self.split else [text]
    ids, offset = [], 0
    for index, part in enumerate(parts):
      length = len(part)
      if index % 2:  # an added token
        ids.append(self.added[part])
        if self.strip[part][1] and index + 1 < len(parts):
          parts[index + 1] = parts[index + 1].lstrip()
      else:
        if index + 1 < len(parts) and self.strip[parts[index + 1]][0]:
          part = part.rstrip()
        if part:
          prefixed = self.dummy_prefix and (self.t5 or not part.startswith(' ') and (
              offset == 0 or self.legacy))
          ids.extend((self.sp if prefixed else self.sp_bare).encode(part))
      offset += length
    return self.frame[0] + ids + self.frame[1] if special else ids

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
      if token_id in self.text_of:
        flush()
        if not (skip_special and token_id in self.special):
          out.append(self.text_of[token_id])
      else:
        run.append(token_id)
    flush()
    return ''.join(out)


def _chat_template(config: Mapping[str, Any], directory: str, source: str) -> str | None:
  """chat_template.jinja, else tokenizer_config.json's (a string, or named templates)."""
  path = os.path.join(directory, CHAT_TEMPLATE_FILE)
  if io_utils.exists(path):
    try:
      return io_utils.read_bytes(path).decode('utf-8')
    except UnicodeDecodeError as e:
      raise ValueError(f'{path}: not UTF-8 text') from e
  template = config.get('chat_template')
  if isinstance(template, list):  # [{"name": ..., "template": ...}, ...]
    template = {t.get('name'): t.get('template') for t in template if isinstance(t, Mapping)}
  if isinstance(template, Mapping):
    template = template.get('default', next(iter(template.values()), None))
  if template is not None and not isinstance(template, str):
    raise ValueError(f'{source}: chat_template must be a string or named templates')
  return template


def _fingerprint(files: Mapping[str, bytes]) -> str:
  digest = hashlib.sha256()
  for name in FINGERPRINT_FILES:
    if name in files:
      digest.update(f'{name}\0{len(files[name])}\0'.encode())
      digest.update(files[name])
  return digest.hexdigest()


def load_tokenizer(path: str | os.PathLike[str], *, strict_pad: bool = False
                   ) -> CheckpointTokenizer:
  """The tokenizer of a Hugging Face checkpoint directory (local or gs://...).

  Args:
    path: the directory with tokenizer.json or tokenizer.model / spiece.model, and any of
      tokenizer_config.json, special_tokens_map.json, generation_config.json, config.json,
      chat_template.jinja.
    strict_pad: a tokenizer with no pad id anywhere is an error instead of padding with eos.

  Raises:
    FileNotFoundError: no such directory, or no tokenizer file in it.
    ValueError: a file that does not parse or a field of the wrong type (naming the file), no
      eos id anywhere, a special id outside the vocabulary, or (strict_pad) no pad id.
  """
  directory = io_utils.abspath(path)
  if not io_utils.isdir(directory):
    raise FileNotFoundError(f'{directory}: no such checkpoint directory')
  present = set(io_utils.listdir(directory))
  model_file = next((n for n in (TOKENIZERS_FILE, *SENTENCEPIECE_FILES) if n in present), None)
  if model_file is None:
    raise FileNotFoundError(f'{directory}: no {TOKENIZERS_FILE} or '
                            f'{" / ".join(SENTENCEPIECE_FILES)}')
  names = [model_file] + [n for n in (*CONFIG_FILES, CHAT_TEMPLATE_FILE) if n in present]
  data = {n: io_utils.read_bytes(os.path.join(directory, n)) for n in names}
  configs = {n: _read_json(os.path.join(directory, n)) if n in data else {}
             for n in CONFIG_FILES}
  config = configs['tokenizer_config.json']
  source, sources = os.path.join(directory, 'tokenizer_config.json'), {}
  for name, settings in (('tokenizer_config.json', config),
                         ('special_tokens_map.json', configs['special_tokens_map.json'])):
    if name == 'special_tokens_map.json' and 'added_tokens_decoder' in config:
      break  # transformers reads special_tokens_map.json only in the legacy layout
    for key in _NAMED:
      if key in settings:
        sources[key] = (_token_text(settings[key], os.path.join(directory, name), key), name)
  added = config.get('added_tokens_decoder') or {}
  if not isinstance(added, Mapping) or not all(
      str(k).isdigit() and isinstance(v, Mapping) and isinstance(v.get('content'), str)
      for k, v in added.items()):
    raise ValueError(f'{source}: added_tokens_decoder must map ids to {{"content": ...}}')
  tokenizer_class = str(config.get('tokenizer_class') or '')
  model_type = str(configs['config.json'].get('model_type') or '')
  is_t5 = (tokenizer_class.startswith(('T5', 'MT5', 'UMT5')) or 't5' in model_type
           or (not tokenizer_class and not model_type and model_file == 'spiece.model'))
  model_path = os.path.join(directory, model_file)
  if model_file == TOKENIZERS_FILE:
    backend: Any = _TokenizersBackend(data[model_file], model_path)
    for token_id, flags in sorted(added.items(), key=lambda kv: int(kv[0])):
      if backend.token_id(flags['content']) is None:
        backend.add(flags['content'], flags, bool(flags.get('special')))
  else:
    backend = _SentencePieceBackend(data[model_file], model_path, t5=is_t5,
                                    legacy=bool(config.get('legacy', False)))
    for key, piece in backend.control.items():
      sources.setdefault(key, (piece, model_file))
    for token_id, flags in sorted(added.items(), key=lambda kv: int(kv[0])):
      backend.add(flags['content'], flags, bool(flags.get('special')), int(token_id))
    if is_t5 and not any(token.startswith('<extra_id_') for token in backend.added):
      extra_ids, base = int(config.get('extra_ids', 100)), backend.size()
      for i in range(extra_ids):  # T5's sentinels follow the pieces, <extra_id_0> last
        backend.add(f'<extra_id_{i}>', {}, True, base + extra_ids - 1 - i)
  tokens = {key: text for key, (text, _) in sources.items()}
  extra = config.get('extra_special_tokens', config.get('additional_special_tokens')) or []
  extra = list(extra.values()) if isinstance(extra, Mapping) else extra
  if not isinstance(extra, list):
    raise ValueError(f'{source}: extra_special_tokens must be a list of tokens')
  # Named and extra special tokens get ids when the vocabulary lacks them, as in transformers.
  for token in [tokens.get(n) for n in _NAMED] + [
      _token_text(t, source, 'extra_special_tokens') for t in extra]:
    if token is not None:
      backend.ensure_special(token)
  ids = {key: None if text is None else backend.token_id(text) for key, text in tokens.items()}
  found: dict[str, list[int]] = {'bos': [], 'eos': [], 'pad': []}
  pad_file = None
  for name in ('generation_config.json', 'config.json'):
    for key, values in found.items():
      new = _id_list(configs[name].get(f'{key}_token_id'), os.path.join(directory, name),
                     f'{key}_token_id')
      pad_file = name if key == 'pad' and new and not values else pad_file
      values += [i for i in new if i not in values]
  eos_ids = tuple(dict.fromkeys([ids['eos_token']] * (ids.get('eos_token') is not None)
                                + found['eos']))
  if not eos_ids:
    raise ValueError(f'{directory}: no eos token in {model_file} or {", ".join(CONFIG_FILES)}')
  bos_id = ids.get('bos_token')
  if 'bos_token' not in tokens and found['bos']:
    bos_id = found['bos'][0]
  if ids.get('pad_token') is not None:
    pad_id, pad_source = ids['pad_token'], sources['pad_token'][1]
  elif found['pad']:
    pad_id, pad_source = found['pad'][0], pad_file
  elif strict_pad:
    raise ValueError(f'{directory}: the tokenizer has no pad token (strict_pad=True)')
  else:
    pad_id, pad_source = eos_ids[0], EOS_FALLBACK
    logging.info('%s: no pad token; padding with the primary eos id %d', directory, pad_id)
  if model_file != TOKENIZERS_FILE:
    add_bos = config.get('add_bos_token', False) and ids.get('bos_token') is not None
    add_eos = config.get('add_eos_token', is_t5) and ids.get('eos_token') is not None
    backend.frame = ([ids.get('bos_token')] if add_bos else [], [eos_ids[0]] if add_eos else [])
  for key, token_id in (('bos', bos_id), ('pad', pad_id), *(('eos', e) for e in eos_ids)):
    if token_id is not None and token_id >= backend.size():
      raise ValueError(f'{directory}: {key} id {token_id} is outside the vocabulary '
                       f'({backend.size()} ids)')
  max_length = config.get('model_max_length')
  if max_length is not None and (isinstance(max_length, bool) or not isinstance(
      max_length, (int, float)) or max_length < 1):
    raise ValueError(f'{source}: model_max_length must be a positive number, got {max_length!r}')
  return CheckpointTokenizer(
      backend, path=directory, kind='tokenizers' if model_file == TOKENIZERS_FILE else
      'sentencepiece', files=tuple(names), bos_id=bos_id, eos_ids=eos_ids, pad_id=pad_id,
      pad_source=pad_source, unk_id=ids.get('unk_token'), bos_token=tokens.get('bos_token'),
      eos_token=tokens.get('eos_token'), pad_token=tokens.get('pad_token'),
      unk_token=tokens.get('unk_token'), chat_template=_chat_template(config, directory, source),
      model_max_length=None if max_length is None or max_length >= _NO_LIMIT else int(max_length),
      fingerprint=_fingerprint(data))
