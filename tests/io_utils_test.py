"""lsc_align.io_utils on local paths (the bucket side is tests/gcs_paths_test.py)."""
import os

import pytest

from lsc_align import io_utils


def test_abspath_resolves_relative_and_home_paths_and_keeps_urls(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  assert io_utils.abspath('runs/a') == str(tmp_path / 'runs' / 'a')
  assert io_utils.abspath('~/exp') == str(tmp_path / 'home' / 'exp')
  assert io_utils.abspath('gs://bucket/runs/a') == 'gs://bucket/runs/a'
  assert io_utils.optional_abspath(None) is None
  assert io_utils.optional_abspath('x') == str(tmp_path / 'x')


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
  path = tmp_path / 'sub' / 'f.json'
  io_utils.atomic_write_json(path, {'a': 1})
  assert io_utils.read_text(path) == '{\n  "a": 1\n}\n'

  class Unserialisable:
    pass

  with pytest.raises(TypeError):
    io_utils.atomic_write_json(path, {'a': Unserialisable()})
  assert io_utils.read_text(path) == '{\n  "a": 1\n}\n'  # the old file, whole
  assert os.listdir(tmp_path / 'sub') == ['f.json']  # no temporary file left behind
