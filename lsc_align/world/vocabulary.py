"""A word-level vocabulary for the embedded world: whitespace tokens over a fixed word list.

Ids follow the T5/seqio convention: pad = 0, eos = 1, unk = 2, and the words from 3 in list
order. Encoding splits on whitespace; a word outside the list becomes unk. Decoding joins words
with a space, except that the dialogue markers 'Human:' and 'Assistant:' are preceded by a blank
line, as in the Anthropic HH files, so decode(encode(text)) == text for the world's texts.

`WordVocabulary` is pure Python/numpy. `seqio_vocabulary(...)` returns a seqio.Vocabulary over
the same words for seqio tasks; seqio (and so TensorFlow) is imported only when it is called,
so importing this module stays cheap. A vocabulary file holds one word per line (ids 3, 4, ...).
"""
from __future__ import annotations

import functools
import os
from typing import Any, Iterable, Sequence

import numpy as np

from lsc_align import io_utils
from lsc_align.conventions import EOS_ID, PAD_ID

UNK_ID = 2
NUM_RESERVED_IDS = 3
UNK_TEXT = '<unk>'
TURN_MARKERS = ('Human:', 'Assistant:')
TURN_SEPARATOR = '\n\n'


def render(words: Sequence[str]) -> str:
  """Joins words into text: a space between words, a blank line before each turn marker."""
  parts = []
  for i, word in enumerate(words):
    if word in TURN_MARKERS:
      parts.append(TURN_SEPARATOR + word)
    else:
      parts.append((' ' if i else '') + word)
  return ''.join(parts)


class WordVocabulary:
  """Word <-> id over a fixed word list (ids from NUM_RESERVED_IDS)."""

  def __init__(self, words: Iterable[str]):
    self.words: tuple[str, ...] = tuple(words)
    if not self.words:
      raise ValueError('WordVocabulary: empty word list')
    self._id_of: dict[str, int] = {}
    for i, word in enumerate(self.words):
      if not word or any(c.isspace() for c in word) or word == UNK_TEXT:
        raise ValueError(f'WordVocabulary: word {i + 1} ({word!r}) is empty, contains '
                         f'whitespace or is reserved')
      if word in self._id_of:
        raise ValueError(f'WordVocabulary: word {i + 1} ({word!r}) is a duplicate')
      self._id_of[word] = i + NUM_RESERVED_IDS

  @property
  def size(self) -> int:
    """Number of ids, including pad, eos and unk."""
    return len(self.words) + NUM_RESERVED_IDS

  def __eq__(self, other: Any) -> bool:
    return isinstance(other, WordVocabulary) and self.words == other.words

  def __hash__(self) -> int:
    return hash(self.words)

  def __repr__(self) -> str:
    return f'WordVocabulary(size={self.size})'

  def id_of(self, word: str) -> int:
    return self._id_of.get(word, UNK_ID)

  def word_of(self, token_id: int) -> str:
    if NUM_RESERVED_IDS <= token_id < self.size:
      return self.words[token_id - NUM_RESERVED_IDS]
    return UNK_TEXT

  def encode_words(self, words: Sequence[str]) -> list[int]:
    return [self._id_of.get(w, UNK_ID) for w in words]

  def encode(self, text: str) -> list[int]:
    """Whitespace tokens to ids, without eos."""
    return self.encode_words(text.split())

  def decode_words(self, ids: Iterable[int]) -> list[str]:
    """Words up to the first eos; pads are skipped, out-of-range ids become '<unk>'."""
    words = []
    for token_id in ids:
      token_id = int(token_id)
      if token_id == EOS_ID:
        break
      if token_id != PAD_ID:
        words.append(self.word_of(token_id))
    return words

  def decode(self, ids: Iterable[int]) -> str:
    return render(self.decode_words(ids))

  def encode_batch(self, texts: Sequence[str], length: int, add_eos: bool = True) -> np.ndarray:
    """int32 [len(texts), length], right-padded with 0; too long texts are cut (eos kept)."""
    out = np.zeros((len(texts), length), np.int32)
    for row, text in enumerate(texts):
      ids = self.encode(text)
      if add_eos:
        ids = ids[:length - 1] + [EOS_ID]
      ids = ids[:length]
      out[row, :len(ids)] = ids
    return out

  def save(self, path: str | os.PathLike[str]) -> None:
    """One word per line (line n holds id n + 2), written atomically."""
    io_utils.atomic_write_text(path, ''.join(w + '\n' for w in self.words))

  @classmethod
  def load(cls, path: str | os.PathLike[str]) -> 'WordVocabulary':
    lines = io_utils.read_text(path).split('\n')
    if lines and lines[-1] == '':
      lines.pop()
    for number, line in enumerate(lines, start=1):
      if not line.strip() or line != line.strip():
        raise ValueError(f'{os.fspath(path)}:{number}: word {line!r} is empty or has whitespace')
    return cls(lines)


@functools.cache
def _seqio_class() -> type:
  """Defines the seqio subclass on first use (seqio imports TensorFlow)."""
  from lsc_align import tf_import  # pylint: disable=g-import-not-at-top
  tf_import.import_quietly()
  import seqio  # pylint: disable=g-import-not-at-top

  class SeqioWordVocabulary(seqio.Vocabulary):
    """seqio.Vocabulary over a WordVocabulary; TF lookup tables are built on first TF use."""

    def __init__(self, words: WordVocabulary):
      super().__init__(extra_ids=0)
      self.word_vocabulary = words
      self._tf_tables = None

    @property
    def eos_id(self) -> int:
      return EOS_ID

    @property
    def unk_id(self) -> int:
      return UNK_ID

    @property
    def bos_id(self) -> None:
      return None

    @property
    def _base_vocab_size(self) -> int:
      return self.word_vocabulary.size

    def _encode(self, s: str) -> list[int]:
      return self.word_vocabulary.encode(s)

    def _decode(self, ids: Iterable[int]) -> str:
      return self.word_vocabulary.decode(ids)

    def _tables(self) -> tuple[Any, Any]:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      if self._tf_tables is None:
        with tf.init_scope():  # built eagerly even when first used inside a tf.data map
          words = self.word_vocabulary.words
          ids = tf.range(NUM_RESERVED_IDS, NUM_RESERVED_IDS + len(words), dtype=tf.int64)
          initializer = tf.lookup.KeyValueTensorInitializer(tf.constant(words), ids)
          encode_table = tf.lookup.StaticHashTable(initializer, default_value=UNK_ID)
          pieces = ['', '', ' ' + UNK_TEXT] + [
              (TURN_SEPARATOR if w in TURN_MARKERS else ' ') + w for w in words]
          self._tf_tables = (encode_table, tf.constant(pieces))
      return self._tf_tables

    def _encode_tf(self, s: Any) -> Any:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      encode_table, _ = self._tables()
      tokens = tf.strings.split(s)  # whitespace; ragged for a batch of strings
      if isinstance(tokens, tf.RaggedTensor):
        return tf.cast(tf.ragged.map_flat_values(encode_table.lookup, tokens), tf.int32)
      return tf.cast(encode_table.lookup(tokens), tf.int32)

    def _decode_tf(self, ids: Any) -> Any:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      _, pieces = self._tables()
      ids = tf.cast(ids, tf.int32)
      ids = tf.where((ids >= 0) & (ids < self.word_vocabulary.size), ids, UNK_ID)
      joined = tf.strings.reduce_join(tf.gather(pieces, ids), axis=-1)
      return tf.strings.regex_replace(joined, '^ ', '')

    def __eq__(self, other: Any) -> bool:
      return (isinstance(other, SeqioWordVocabulary)
              and self.word_vocabulary == other.word_vocabulary)

    def __hash__(self) -> int:
      return hash(self.word_vocabulary)

    def __str__(self) -> str:
      return f'SeqioWordVocabulary(size={self.word_vocabulary.size})'

  return SeqioWordVocabulary


def seqio_vocabulary(words: WordVocabulary | str | os.PathLike[str]) -> Any:
  """A seqio.Vocabulary over a WordVocabulary or a vocabulary file (imports seqio/TF)."""
  if not isinstance(words, WordVocabulary):
    words = WordVocabulary.load(words)
  return _seqio_class()(words)
