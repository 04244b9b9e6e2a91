"""Tests for lsc_align.data.hh: parsing, prompt/response splitting, bad lines, splits."""
import gzip
import json
import pathlib

import pytest

from lsc_align.data import hh

# Measured on the shared test splits (see the module docstring of lsc_align.data.hh).
REAL = {
    'helpful-base': (2354, {121: 'empty rejected response', 741: 'empty rejected response',
                            1215: 'empty rejected response', 2064: 'empty rejected response',
                            722: 'identical', 2169: 'identical'}),
    'harmless-base': (2312, {87: 'empty chosen response', 517: 'empty chosen response',
                             926: 'empty chosen response', 1104: 'empty chosen response'}),
}


def _raw_records(path: pathlib.Path) -> list[dict]:
  with gzip.open(path, 'rt', encoding='utf-8') as f:
    return [json.loads(line) for line in f]


def _write(path: pathlib.Path, lines: list[bytes | str | dict]) -> pathlib.Path:
  data = b''.join((l if isinstance(l, bytes) else
                   (l if isinstance(l, str) else json.dumps(l)).encode('utf-8')) + b'\n'
                  for l in lines)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(gzip.compress(data) if path.name.endswith('.gz') else data)
  return path


def _dialogue(*turns: str) -> str:
  speakers = ('Human', 'Assistant')
  return ''.join(f'\n\n{speakers[i % 2]}: {t}' for i, t in enumerate(turns))


GOOD = {'chosen': _dialogue('Hi', 'Hello!', 'Tell me a joke', 'Why did the chicken cross?'),
        'rejected': _dialogue('Hi', 'Hello!', 'Tell me a joke', 'No.')}


@pytest.mark.parametrize('subset', sorted(REAL))
def test_real_files_counts_and_bad_lines(shared_data, subset):
  path = shared_data / 'hh-rlhf' / subset / 'test.jsonl.gz'
  num_lines, bad = REAL[subset]
  pairs, report = hh.read_pairs(path, lenient=True)
  assert report.num_lines == num_lines
  assert len(pairs) == report.num_pairs == num_lines - len(bad)
  assert {s.line: s.reason for s in report.skipped}.keys() == bad.keys()
  for skipped in report.skipped:
    assert bad[skipped.line] in skipped.reason
    assert skipped.source == str(path)
  with pytest.raises(hh.BadPairError, match=f'test.jsonl.gz:{min(bad)}: '):
    hh.read_pairs(path)


@pytest.mark.parametrize('subset', sorted(REAL))
def test_real_pairs_reassemble_the_original_dialogues(shared_data, subset):
  path = shared_data / 'hh-rlhf' / subset / 'test.jsonl.gz'
  records = _raw_records(path)
  pairs, _ = hh.read_pairs(path, lenient=True)
  num_multi_turn = 0
  for pair in pairs:
    record = records[pair.line - 1]
    assert pair.prompt.startswith('\n\nHuman:') and pair.prompt.endswith('\n\nAssistant:')
    for side in ('chosen', 'rejected'):
      rest = record[side][len(pair.prompt):]
      assert record[side].startswith(pair.prompt)
      assert rest.lstrip(' ') == getattr(pair, side) and rest[:1] in ('', ' ')
      # The prompt holds every Human turn of the dialogue: responses hold none.
      assert pair.prompt.count('\n\nHuman:') == record[side].count('\n\nHuman:')
    num_multi_turn += pair.prompt.count('\n\nHuman:') > 1
  assert num_multi_turn > len(pairs) // 2  # most HH dialogues have several turns


def test_multi_turn_prompt_stays_whole(tmp_path):
  (pair,), _ = hh.read_pairs(_write(tmp_path / 'a.jsonl', [GOOD]))
  assert pair.prompt == _dialogue('Hi', 'Hello!', 'Tell me a joke') + '\n\nAssistant:'
  assert (pair.chosen, pair.rejected) == ('Why did the chicken cross?', 'No.')
  assert (pair.source, pair.line) == (str(tmp_path / 'a.jsonl'), 1)


def test_response_that_continues_the_dialogue_is_kept_whole():
  # As in the real data (helpful-base line 744): the model wrote a further Assistant turn.
  prompt, chosen, rejected = hh.split_dialogue_pair(
      _dialogue('Q?', 'Sure thing.'), _dialogue('Q?', 'Surely.\n\nAssistant: More.'))
  assert prompt == '\n\nHuman: Q?\n\nAssistant:'
  assert (chosen, rejected) == ('Sure thing.', 'Surely.\n\nAssistant: More.')


def test_shared_start_of_the_responses_stays_in_the_responses():
  prompt, chosen, rejected = hh.split_dialogue_pair(_dialogue('Q?', 'I think yes.'),
                                                    _dialogue('Q?', 'I think no.'))
  assert (prompt, chosen, rejected) == ('\n\nHuman: Q?\n\nAssistant:', 'I think yes.',
                                        'I think no.')


BAD_LINES = {
    'not JSON': (b'{"chosen": "x", ', 'not JSON'),
    'not UTF-8': (b'{"chosen": "\xff\xfe", "rejected": "y"}', 'not UTF-8'),
    'not an object': ('["a", "b"]', 'not a JSON object'),
    'blank line': ('   ', 'empty line'),
    'missing chosen': ({'rejected': GOOD['rejected']}, 'missing key "chosen"'),
    'missing rejected': ({'chosen': GOOD['chosen']}, 'missing key "rejected"'),
    'non-string': ({'chosen': 3, 'rejected': GOOD['rejected']}, '"chosen" is not a string'),
    'empty string': ({'chosen': '', 'rejected': GOOD['rejected']}, '"chosen" is empty'),
    'empty response': ({'chosen': GOOD['chosen'], 'rejected': _dialogue('Hi', 'Hello!',
                                                                        'Tell me a joke', '')},
                       'empty rejected response'),
    'identical': ({'chosen': GOOD['chosen'], 'rejected': GOOD['chosen']}, 'identical'),
    'identical responses': ({'chosen': _dialogue('Q?', 'A.'), 'rejected': _dialogue('Q?', 'A. ')},
                            'responses are identical'),
    'different prompt': ({'chosen': _dialogue('Cats?', 'Meow.'),
                          'rejected': _dialogue('Dogs?', 'Woof.')}, 'different prompts'),
    'different later human turn': ({'chosen': _dialogue('Hi', 'Hello!', 'Cats?', 'Meow.'),
                                    'rejected': _dialogue('Hi', 'Hello!', 'Dogs?', 'Woof.')},
                                   'diverge inside a Human turn'),
    'different earlier assistant turn': ({'chosen': _dialogue('Hi', 'Hello!', 'Cats?', 'Meow.'),
                                          'rejected': _dialogue('Hi', 'Hey!', 'Cats?', 'Purr.')},
                                         'later "\\n\\nHuman:" turn'),
    'extra turn': ({'chosen': _dialogue('Hi', 'Hello!', 'Cats?', 'Meow.'),
                    'rejected': _dialogue('Hi', 'Hello!')}, 'later "\\n\\nHuman:" turn'),
    'no human turn': ({'chosen': 'Assistant: x\n\nAssistant: a', 'rejected':
                       'Assistant: x\n\nAssistant: b'}, 'does not start with'),
}


@pytest.mark.parametrize('case', sorted(BAD_LINES))
@pytest.mark.parametrize('suffix', ['.jsonl', '.jsonl.gz'])
def test_bad_line_strict_and_lenient(tmp_path, case, suffix):
  line, reason = BAD_LINES[case]
  path = _write(tmp_path / f'test{suffix}', [GOOD, line, GOOD])
  with pytest.raises(hh.BadPairError) as error:
    hh.read_pairs(path)
  assert isinstance(error.value, ValueError)
  assert str(error.value).startswith(f'{path}:2: ')
  assert reason in error.value.reason and error.value.line == 2
  pairs, report = hh.read_pairs(path, lenient=True)
  assert [p.line for p in pairs] == [1, 3]
  assert (report.num_lines, report.num_pairs, report.num_skipped) == (3, 2, 1)
  assert str(report.skipped[0]).startswith(f'{path}:2: ') and reason in report.skipped[0].reason
  assert f'{path}:2:' in report.summary()


def test_corrupt_gzip_always_raises(tmp_path):
  path = tmp_path / 'test.jsonl.gz'
  path.write_bytes(gzip.compress(b'\n'.join([json.dumps(GOOD).encode()] * 50))[:-40])
  with pytest.raises(hh.BadPairError, match='unreadable file'):
    hh.read_pairs(path, lenient=True)


def test_split_by_prompt_is_deterministic_disjoint_and_about_the_fraction(shared_data):
  pairs, _ = hh.read_pairs(shared_data / 'hh-rlhf' / 'harmless-base' / 'test.jsonl.gz',
                           lenient=True)
  train, validation = hh.split_by_prompt(pairs, 0.2)
  assert (train, validation) == hh.split_by_prompt(list(pairs), 0.2)
  assert len(train) + len(validation) == len(pairs)
  assert not {p.prompt for p in train} & {p.prompt for p in validation}
  assert 0.17 < len(validation) / len(pairs) < 0.23
  assert [p.line for p in train] == sorted(p.line for p in train)  # file order kept
  # A prompt's side depends on its own text only.
  sub_train, _ = hh.split_by_prompt(pairs[::3], 0.2)
  assert sub_train == [p for p in train if p in pairs[::3]]
  assert hh.split_by_prompt(pairs, 0.0)[1] == [] and hh.split_by_prompt(pairs, 1.0)[0] == []
  with pytest.raises(ValueError, match=r'validation_fraction must be in \[0, 1\], got 1.5'):
    hh.split_by_prompt(pairs, 1.5)


def test_derived_splits_from_test_only(shared_data):
  root = shared_data / 'hh-rlhf'
  assert hh.available_splits(root / 'helpful-base') == ['test', 'train', 'validation']
  test, _ = hh.load_split(root, 'helpful-base', 'test', lenient=True)
  train, report = hh.load_split(root, 'helpful-base', 'train', lenient=True)
  validation, _ = hh.load_split(root, 'helpful-base', 'validation', lenient=True)
  assert (train, validation) == hh.split_by_prompt(test, hh.DEFAULT_VALIDATION_FRACTION)
  assert report.num_pairs == len(train) and report.num_skipped == 6


def test_splits_on_disk_are_used_as_they_are(tmp_path):
  _write(tmp_path / 'helpful-base' / 'train.jsonl.gz', [GOOD, GOOD])
  _write(tmp_path / 'helpful-base' / 'test.jsonl', [GOOD])
  assert hh.available_splits(tmp_path / 'helpful-base') == ['test', 'train']
  assert len(hh.load_split(tmp_path, 'helpful-base', 'train')[0]) == 2
  with pytest.raises(ValueError, match='no split "validation"'):
    hh.load_split(tmp_path, 'helpful-base', 'validation')
  _write(tmp_path / 'helpful-base' / 'test.jsonl.gz', [GOOD])
  with pytest.raises(ValueError, match='both as .jsonl and .jsonl.gz'):
    hh.available_splits(tmp_path / 'helpful-base')
  with pytest.raises(ValueError, match='not a directory'):
    hh.available_splits(tmp_path / 'harmless-base')
