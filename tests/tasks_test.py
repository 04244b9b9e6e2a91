"""Tests for lsc_align.data.tasks: seqio tasks, truncation and padded arrays against numpy."""
import gzip
import json

import numpy as np
import pytest
import seqio

from lsc_align.data import hh
from lsc_align.data import tasks
from lsc_align.data import vocab

BYTES = seqio.ByteVocabulary()  # ids = utf-8 bytes + 3: an exact, independent reference


def _byte_ids(text: str) -> list[int]:
  return [b + 3 for b in text.encode('utf-8')]


def _reference(texts, length, keep_end, eos):
  """Padded [N, length] rows: last/first tokens, eos last when asked, and the truncation count."""
  rows, truncated = np.zeros((len(texts), length), np.int32), 0
  for i, text in enumerate(texts):
    ids = _byte_ids(text)
    body = length - eos
    truncated += len(ids) + eos > length
    ids = (ids[-body:] if keep_end and len(ids) > body else ids[:body]) + ([1] if eos else [])
    rows[i, :len(ids)] = ids
  return rows, truncated


@pytest.fixture(scope='module')
def byte_tasks(shared_data):
  return tasks.register_hh_tasks(shared_data / 'hh-rlhf', BYTES, lenient=True)  # 10 bad lines


@pytest.mark.parametrize('lengths', [{'prompt': 96, 'chosen': 40, 'rejected': 40},
                                     {'prompt': 1, 'chosen': 1, 'rejected': 2}])
def test_pairs_truncate_prompt_end_and_response_start(shared_data, byte_tasks, lengths):
  pairs, _ = hh.load_split(shared_data / 'hh-rlhf', 'helpful-base', 'validation', lenient=True)
  arrays = tasks.materialize(byte_tasks.pairs['helpful'], 'validation', lengths)
  counts = tasks.count_truncated(byte_tasks.pairs['helpful'], 'validation', lengths)
  assert set(arrays) == {'prompt_ids', 'chosen_ids', 'rejected_ids'}
  for name in ('prompt', 'chosen', 'rejected'):
    expected, num_truncated = _reference([getattr(p, name) for p in pairs], lengths[name],
                                         keep_end=name == 'prompt', eos=name != 'prompt')
    assert arrays[f'{name}_ids'].dtype == np.int32
    np.testing.assert_array_equal(arrays[f'{name}_ids'], expected)
    assert counts[name] == num_truncated
  assert 0 < counts['prompt'] < len(pairs) or lengths['prompt'] == 1


def test_examples_that_fit_exactly_are_whole(shared_data, byte_tasks):
  pairs, _ = hh.load_split(shared_data / 'hh-rlhf', 'harmless-base', 'validation', lenient=True)
  needed = {'prompt': max(len(_byte_ids(p.prompt)) for p in pairs),
            'chosen': max(len(_byte_ids(p.chosen)) + 1 for p in pairs),  # + eos
            'rejected': max(len(_byte_ids(p.rejected)) + 1 for p in pairs)}
  task = byte_tasks.pairs['harmless']
  assert tasks.count_truncated(task, 'validation', needed) == {
      'prompt': 0, 'chosen': 0, 'rejected': 0}
  one_short = tasks.count_truncated(task, 'validation', {k: v - 1 for k, v in needed.items()})
  assert all(n >= 1 for n in one_short.values())
  arrays = tasks.materialize(task, 'validation', needed)
  assert arrays['prompt_ids'].shape == (len(pairs), needed['prompt'])
  lengths = (arrays['chosen_ids'] != 0).sum(axis=1)
  np.testing.assert_array_equal(lengths, [len(_byte_ids(p.chosen)) + 1 for p in pairs])
  np.testing.assert_array_equal(arrays['chosen_ids'][np.arange(len(pairs)), lengths - 1], 1)


def test_sft_and_prompt_tasks(shared_data, byte_tasks):
  root = shared_data / 'hh-rlhf'
  train, _ = hh.load_split(root, 'helpful-base', 'train', lenient=True)
  sft = tasks.materialize(byte_tasks.sft, 'train', {'inputs': 64, 'targets': 16})
  np.testing.assert_array_equal(sft['inputs_ids'],
                                _reference([p.prompt for p in train], 64, True, False)[0])
  np.testing.assert_array_equal(sft['targets_ids'],
                                _reference([p.chosen for p in train], 16, False, True)[0])
  prompts = {}
  for subset in ('helpful-base', 'harmless-base'):
    test, _ = hh.load_split(root, subset, 'test', lenient=True)
    prompts[subset] = list(dict.fromkeys(p.prompt for p in test))
  everything = list(dict.fromkeys(prompts['helpful-base'] + prompts['harmless-base']))
  assert len(prompts['harmless-base']) == 2306  # two prompts appear in two pairs each
  harmless = tasks.materialize(byte_tasks.prompts['harmless'], 'test', {'prompt': 48})
  np.testing.assert_array_equal(harmless['prompt_ids'],
                                _reference(prompts['harmless-base'], 48, True, False)[0])
  both = tasks.materialize(byte_tasks.prompts['all'], 'test', {'prompt': 48})
  np.testing.assert_array_equal(both['prompt_ids'], _reference(everything, 48, True, False)[0])


def test_registration_is_idempotent_and_names_are_unique(shared_data, byte_tasks, tmp_path):
  again = tasks.register_hh_tasks(shared_data / 'hh-rlhf', BYTES, lenient=True)
  assert again == byte_tasks
  other = tasks.register_hh_tasks(shared_data / 'hh-rlhf', BYTES, validation_fraction=0.5,
                                 lenient=True)
  assert other.sft != byte_tasks.sft
  prefix = byte_tasks.sft[:-len('_sft')]
  with pytest.raises(ValueError, match='already registered with other parameters'):
    tasks.register_hh_tasks(shared_data / 'hh-rlhf', BYTES, name_prefix=prefix, lenient=False)
  with pytest.raises(ValueError, match='not a directory'):
    tasks.register_hh_tasks(tmp_path, BYTES)
  names = seqio.TaskRegistry.names()
  assert all(n in names for n in [*byte_tasks.pairs.values(), *byte_tasks.prompts.values()])
  assert set(seqio.get_mixture_or_task(byte_tasks.pairs['helpful']).splits) == {
      'test', 'train', 'validation'}


def test_feature_lengths_are_checked(byte_tasks):
  with pytest.raises(ValueError, match="no feature length for \\['rejected'\\]"):
    tasks.materialize(byte_tasks.pairs['helpful'], 'test', {'prompt': 8, 'chosen': 8})
  with pytest.raises(ValueError, match='must be >= 1'):
    tasks.materialize(byte_tasks.prompts['all'], 'test', {'prompt': 0})


def test_any_vocabulary_and_any_hh_layout(shared_data, tmp_path):
  """A SentencePiece vocabulary on a world-like directory with train and test files."""
  def dialogue(*turns):
    return ''.join(f'\n\n{("Human", "Assistant")[i % 2]}: {t}' for i, t in enumerate(turns))
  for subset in ('helpful-base', 'harmless-base'):
    for split, n in (('train', 6), ('test', 3)):
      rows = [{'chosen': dialogue(f'hello {i}', 'hi', f'question {i}?', f'answer number {i}'),
               'rejected': dialogue(f'hello {i}', 'hi', f'question {i}?', 'no')}
              for i in range(n)]
      path = tmp_path / 'world' / subset / f'{split}.jsonl.gz'
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_bytes(gzip.compress(''.join(json.dumps(r) + '\n' for r in rows).encode()))
  pairs, _ = hh.load_split(shared_data / 'hh-rlhf', 'harmless-base', 'test', lenient=True)
  spm_vocab = vocab.train_sentencepiece(
      [t for p in pairs[:100] for t in (p.prompt, p.chosen)], tmp_path / 'spm', 300)
  names = tasks.register_hh_tasks(tmp_path / 'world', spm_vocab, lenient=False)
  assert set(seqio.get_mixture_or_task(names.sft).splits) == {'train', 'test'}
  arrays = tasks.materialize(names.pairs['helpful'], 'train',
                             {'prompt': 6, 'chosen': 4, 'rejected': 4})
  for i in range(6):
    prompt_ids = spm_vocab.encode(dialogue(f'hello {i}', 'hi', f'question {i}?') +
                                  '\n\nAssistant:')
    assert arrays['prompt_ids'][i].tolist() == prompt_ids[-6:]
    chosen_ids = spm_vocab.encode(f'answer number {i}')[:3] + [1]
    assert arrays['chosen_ids'][i].tolist() == chosen_ids + [0] * (4 - len(chosen_ids))
