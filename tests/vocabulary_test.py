"""Tests of the word-level vocabulary (pure Python and its seqio/TF twin)."""
import numpy as np
import pytest

from lsc_align.world import vocabulary as word_vocab
from lsc_align.world import config as world_config

WORDS = world_config.world_words(world_config.WorldConfig())
DIALOGUE = ("\n\nHuman: how do I deal with my rice ?\n\nAssistant: try these : 1. boil rice . "
            "2. season the sauce . I can't answer that . you should talk to a doctor .")


@pytest.fixture(scope='module')
def vocabulary() -> word_vocab.WordVocabulary:
  return word_vocab.WordVocabulary(WORDS)


def test_ids_follow_t5_convention(vocabulary):
  assert (word_vocab.PAD_ID, word_vocab.EOS_ID, word_vocab.UNK_ID) == (0, 1, 2)
  assert vocabulary.size == len(WORDS) + 3
  assert vocabulary.encode(WORDS[0] + ' ' + WORDS[-1]) == [3, len(WORDS) + 2]
  assert vocabulary.encode('rice zebra') == [vocabulary.id_of('rice'), word_vocab.UNK_ID]
  for marker in ('Human:', 'Assistant:', '1.', '.', "can't", 'therapist'):
    assert vocabulary.id_of(marker) >= 3, marker


def test_roundtrip_and_decoding_rules(vocabulary):
  ids = vocabulary.encode(DIALOGUE)
  assert word_vocab.UNK_ID not in ids
  assert vocabulary.decode(ids) == DIALOGUE  # blank line before each turn marker, else spaces
  assert vocabulary.decode(ids + [word_vocab.EOS_ID, 5, 6]) == DIALOGUE  # stops at eos
  assert vocabulary.decode([0, 0] + vocabulary.encode('try rice') + [0]) == 'try rice'
  assert vocabulary.decode([vocabulary.size + 4]) == word_vocab.UNK_TEXT
  assert word_vocab.render(['try', 'rice', 'Human:', 'hi']) == 'try rice\n\nHuman: hi'
  batch = vocabulary.encode_batch(['try rice', DIALOGUE], length=6)
  assert batch.dtype == np.int32 and batch.shape == (2, 6)
  np.testing.assert_array_equal(batch[0], vocabulary.encode('try rice') + [1, 0, 0, 0])
  assert batch[1, -1] == word_vocab.EOS_ID  # cut, eos kept


def test_save_load_and_bad_files(vocabulary, tmp_path):
  path = tmp_path / 'vocab.txt'
  vocabulary.save(path)
  assert path.read_text().splitlines() == list(WORDS)
  assert word_vocab.WordVocabulary.load(path) == vocabulary
  (tmp_path / 'bad.txt').write_text('rice\n\npasta\n')
  with pytest.raises(ValueError, match=r'bad.txt:2'):
    word_vocab.WordVocabulary.load(tmp_path / 'bad.txt')
  with pytest.raises(ValueError, match='duplicate'):
    word_vocab.WordVocabulary(['rice', 'rice'])


def test_seqio_vocabulary_matches_python(vocabulary, tmp_path):
  tf = pytest.importorskip('tensorflow')
  vocabulary.save(tmp_path / 'vocab.txt')
  seqio_vocab = word_vocab.seqio_vocabulary(tmp_path / 'vocab.txt')
  assert seqio_vocab == word_vocab.seqio_vocabulary(vocabulary)
  assert (seqio_vocab.pad_id, seqio_vocab.eos_id, seqio_vocab.unk_id) == (0, 1, 2)
  assert seqio_vocab.vocab_size == vocabulary.size
  texts = [DIALOGUE, 'try rice zebra .', '1. boil rice']
  for text in texts:
    ids = vocabulary.encode(text)
    assert seqio_vocab.encode(text) == ids
    assert seqio_vocab.decode(ids + [1, 7]) == vocabulary.decode(ids)
    assert seqio_vocab.encode_tf(tf.constant(text)).numpy().tolist() == ids
    decoded = seqio_vocab.decode_tf(tf.constant(ids + [1, 7, 0], tf.int32)).numpy().decode()
    assert decoded == vocabulary.decode(ids)
  batch = vocabulary.encode_batch(texts, length=40)
  decoded = [b.decode() for b in seqio_vocab.decode_tf(tf.constant(batch)).numpy()]
  assert decoded == [vocabulary.decode(row) for row in batch]
  # Inside a tf.data map (graph mode) the lookup tables still work.
  dataset = tf.data.Dataset.from_tensor_slices(texts).map(seqio_vocab.encode_tf)
  assert [d.numpy().tolist() for d in dataset] == [vocabulary.encode(t) for t in texts]
