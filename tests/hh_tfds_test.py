"""Tests for lsc_align.data.hh_tfds: prepare local HH files as array_record and read them back."""
import gzip
import json
import pathlib

import pytest
import tensorflow_datasets as tfds

from lsc_align.data import hh
from lsc_align.data import hh_tfds


def _as_tuples(source, indices=None) -> list[tuple[str, str, str]]:
  indices = range(len(source)) if indices is None else indices
  return [tuple(source[i][k].decode('utf-8') for k in ('prompt', 'chosen', 'rejected'))
          for i in indices]


def _expected(root, subset, split) -> list[tuple[str, str, str]]:
  pairs, _ = hh.load_split(root, subset, split, lenient=True)
  return [(p.prompt, p.chosen, p.rejected) for p in pairs]


@pytest.fixture(scope='module')
def prepared(shared_data, tmp_path_factory):
  tfds_dir = tmp_path_factory.mktemp('tfds')
  root = shared_data / 'hh-rlhf'
  builders = {subset: hh_tfds.prepare(root, tfds_dir, subset, lenient=True)  # 10 bad lines
              for subset in hh_tfds.SUBSETS}
  return root, tfds_dir, builders


@pytest.mark.parametrize('subset', hh_tfds.SUBSETS)
def test_prepared_splits_hold_the_same_pairs_in_order(prepared, subset):
  root, _, builders = prepared
  builder = builders[subset]
  assert set(builder.info.splits) == {'test', 'train', 'validation'}
  for split in ('test', 'train', 'validation'):
    source = builder.as_data_source(split)
    expected = _expected(root, subset, split)
    assert builder.info.splits[split].num_examples == len(source) == len(expected)
    assert _as_tuples(source) == expected
  assert len(builder.as_data_source('train')) + len(builder.as_data_source('validation')) == len(
      builder.as_data_source('test'))


def test_random_access_and_files_are_array_record(prepared):
  root, _, builders = prepared
  builder = builders['harmless-base']
  source = builder.as_data_source('test')
  expected = _expected(root, 'harmless-base', 'test')
  indices = [2000, 3, 1500, 3, len(expected) - 1]
  assert _as_tuples(source, indices) == [expected[i] for i in indices]
  files = [p.name for p in pathlib.Path(builder.data_dir).iterdir()]
  assert any(name.startswith('hh_preference-test.array_record') for name in files)


def test_metadata_lists_skipped_lines_once(prepared):
  _, tfds_dir, _ = prepared
  # Read back by name, without the source directory.
  builder = tfds.builder('hh_preference/helpful-base', data_dir=str(tfds_dir))
  skipped = builder.info.metadata['skipped_lines']
  assert len(skipped) == 6 and all('helpful-base/test.jsonl.gz:' in s for s in skipped)
  assert builder.info.metadata['validation_fraction'] == hh.DEFAULT_VALIDATION_FRACTION


def test_same_tfds_dir_from_another_source_is_refused(prepared, tmp_path):
  _, tfds_dir, _ = prepared
  other = tmp_path / 'other'
  (other / 'helpful-base').mkdir(parents=True)
  with pytest.raises(ValueError, match='was prepared with'):
    hh_tfds.prepare(other, tfds_dir, 'helpful-base')


def test_splits_are_the_files_on_disk_when_train_exists(tmp_path):
  def dialogue(q, a):
    return f'\n\nHuman: {q}\n\nAssistant: {a}'
  rows = {'train': [(f'q{i}', f'good {i}', f'bad {i}') for i in range(5)],
          'test': [('last', 'yes', 'no')]}
  for split, triples in rows.items():
    path = tmp_path / 'src' / 'harmless-base' / f'{split}.jsonl.gz'
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(''.join(
        json.dumps({'chosen': dialogue(q, c), 'rejected': dialogue(q, r)}) + '\n'
        for q, c, r in triples).encode()))
  builder = hh_tfds.prepare(tmp_path / 'src', tmp_path / 'tfds', 'harmless-base', lenient=False)
  assert set(builder.info.splits) == {'train', 'test'}
  assert _as_tuples(builder.as_data_source('train')) == [
      (f'\n\nHuman: q{i}\n\nAssistant:', f'good {i}', f'bad {i}') for i in range(5)]


def test_unprepared_builder_without_source_says_what_to_do(tmp_path):
  builder = hh_tfds.HhPreference(data_dir=str(tmp_path), config='helpful-base')
  with pytest.raises(ValueError, match='pass source_dir'):
    builder.download_and_prepare(file_format=hh_tfds.FILE_FORMAT)
  with pytest.raises(ValueError, match='unknown subset'):
    hh_tfds.prepare(tmp_path, tmp_path, 'red-team')
