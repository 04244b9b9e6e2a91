"""lsc_align.gin_utils: where configs are found, and errors that name the file or binding."""
import pathlib

import gin
import pytest

from lsc_align import gin_utils


@pytest.fixture(autouse=True)
def _clean(clean_gin):  # pylint: disable=unused-argument
  yield


def test_names_resolve_under_the_packaged_configs(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # not the checkout: found through the package, not the cwd
  expected = str(gin_utils.CONFIG_DIR / 'world' / 'tiny.gin')
  assert gin_utils.resolve_gin_file('world/tiny') == expected
  assert gin_utils.resolve_gin_file('world/tiny.gin') == expected
  assert (gin_utils.CONFIG_DIR / 'objectives' / 'helpful_lsc.gin').is_file()


def test_a_path_given_wins_over_a_packaged_name(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / 'world').mkdir()
  (tmp_path / 'world' / 'tiny.gin').write_text('')
  assert pathlib.Path(gin_utils.resolve_gin_file('world/tiny.gin')) == pathlib.Path(
      'world/tiny.gin')


def test_missing_file_and_bad_binding_are_named():
  with pytest.raises(gin_utils.GinConfigError, match="gin file 'nope.gin' not found"):
    gin_utils.parse(['nope.gin'])
  from lsc_align.world import config  # pylint: disable=g-import-not-at-top,unused-import
  with pytest.raises(gin_utils.GinConfigError, match="gin binding 'WorldConfig.sed = 1'"):
    gin_utils.parse([], ['WorldConfig.sed = 1'])


def test_an_import_of_a_missing_module_names_the_file_and_module(tmp_path):
  old = tmp_path / 'old.gin'
  old.write_text('import lsc_align.eval.metrics\n')
  with pytest.raises(gin_utils.GinConfigError,
                     match=f"gin file {old}: .*lsc_align.eval.metrics"):
    gin_utils.parse([str(old)])


def test_operative_config_is_written_atomically(tmp_path):
  gin_utils.parse(['world/tiny.gin'], finalize=False)
  from lsc_align.world import dataset  # pylint: disable=g-import-not-at-top
  dataset.world_vocabulary(gin.get_configurable('WorldConfig')())  # use a configurable
  path = gin_utils.write_operative_config(tmp_path)
  assert 'WorldConfig' in pathlib.Path(path).read_text()


def test_run_config_names_the_files_read_with_their_comments(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # gin finds includes from the working directory or configs/
  (tmp_path / 'base.gin').write_text(
      '# lr 1e-4 chosen: validation J -1.32 against -1.35 at 2e-4\n'
      'WorldConfig.seed = 3\n')
  (tmp_path / 'top.gin').write_text("# the top file\ninclude 'base.gin'\n")
  from lsc_align.world import config  # pylint: disable=g-import-not-at-top,unused-import
  gin_utils.parse([str(tmp_path / 'top.gin')], ['WorldConfig.test_prompts = 7'], finalize=False)
  gin.get_configurable('WorldConfig')()
  (tmp_path / 'run').mkdir()
  text = pathlib.Path(gin_utils.write_operative_config(tmp_path / 'run')).read_text()
  header, operative = text.split('\n\n', 1)
  assert header.index('top.gin') < header.index('base.gin (included by')
  assert '#   lr 1e-4 chosen: validation J -1.32 against -1.35 at 2e-4' in header
  assert '#   WorldConfig.test_prompts = 7' in header
  assert all(line.startswith('#') for line in header.splitlines())
  assert 'WorldConfig.seed = 3' in operative and 'WorldConfig.test_prompts = 7' in operative
  gin_utils.parse([str(tmp_path / 'run' / 'config.gin')], finalize=False)  # still parses
