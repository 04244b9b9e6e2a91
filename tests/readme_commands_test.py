"""The README's commands as a user types them: a console script, a fresh working directory,
relative paths; and a wheel that carries every gin config.

The demo runs on configs/experiments/tiny.gin (the same stages at toy sizes) so it takes about a
minute here rather than the full demo's minutes; everything else is the README's command.
"""
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import zipfile

import pytest

import conftest

pytestmark = pytest.mark.slow  # trains models or runs whole commands

README = conftest.REPO / 'README.md'
CONFIGS = conftest.REPO / 'configs'


def _quickstart_commands() -> list[str]:
  """The two indented commands of the README's Quickstart section, in order."""
  text = README.read_text()
  section = text.split('## Quickstart', 1)[1].split('\n## ', 1)[0]
  return [line.strip() for line in section.splitlines() if line.startswith('    ')]


def _lsc_align() -> str:
  script = shutil.which('lsc-align')
  if script is None:
    pytest.skip('the lsc-align console script is not installed (pip install -e .)')
  return script


def _run(argv: list[str], cwd: pathlib.Path, timeout_s: float = 600) -> subprocess.CompletedProcess:
  env = conftest.worker_env(1, compilation_cache=True, PYTHONPATH='')  # one device
  return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=timeout_s, check=False)


def test_quickstart_has_the_two_commands():
  install_and_demo, install_and_test = _quickstart_commands()
  assert install_and_demo.startswith('pip install ') and ' && lsc-align demo ' in install_and_demo
  assert install_and_test.startswith('pip install ') and install_and_test.endswith(
      '&& python -m pytest')
  ci = (conftest.REPO / '.ci' / 'run').read_text()
  assert install_and_test in ci  # CI runs the README's test command verbatim


def test_readme_demo_command_from_a_fresh_directory(tmp_path):
  """The Quickstart's `lsc-align demo --out DIR` (relative), on the tiny experiment."""
  demo = _quickstart_commands()[0].split('&&', 1)[1].strip()
  argv = shlex.split(demo)
  assert argv[:2] == ['lsc-align', 'demo'] and '--out' in argv
  out = argv[argv.index('--out') + 1]
  assert not os.path.isabs(out)
  argv[0] = _lsc_align()
  run = _run(argv + ['--gin_file', 'experiments/tiny.gin',
                     '--gin_param', "run_sweep.ppo_objectives = ['combined_lsc_sum']"], tmp_path)
  assert run.returncode == 0, run.stderr[-3000:]
  report = tmp_path / out / 'report' / 'report.md'
  assert report.is_file()
  assert f'report: {report}' in run.stdout
  # What the run recorded points back at absolute paths.
  info = (tmp_path / out / 'rm_helpful' / 'reward_model.json').read_text()
  assert f'"data_dir": "{tmp_path / out / "world"}"' in info
  assert 'Traceback' not in run.stderr


def test_stage_commands_with_relative_paths(tmp_path):
  """`world`, `train-rm`, `rm-diagnose` with relative paths, the last from another directory."""
  script = _lsc_align()
  world = _run([script, 'world', '--out', 'exp/world', '--gin_file', 'world/tiny.gin'], tmp_path)
  assert world.returncode == 0, world.stderr[-3000:]
  rm = _run([script, 'train-rm', '--run_dir', 'exp/rm_helpful', '--gin_file',
             'experiments/tiny.gin', '--gin_param', "train_reward_model.data_dir = 'exp/world'",
             '--gin_param', "train_reward_model.vocabulary = 'exp/world/vocab.txt'"], tmp_path)
  assert rm.returncode == 0, rm.stderr[-3000:]
  assert (tmp_path / 'exp' / 'rm_helpful' / 'rm_final.msgpack').is_file()
  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir()
  diagnose = _run([script, 'rm-diagnose', '--run_dir', '../exp/rm_helpful'], elsewhere)
  assert diagnose.returncode == 0, diagnose.stderr[-3000:]
  assert (tmp_path / 'exp' / 'rm_helpful' / 'rm_diagnostics.json').is_file()


def test_wheel_carries_every_gin_config(tmp_path):
  """`pip install .` (and the notebooks' install cell, which installs the same way) gets
  lsc_align/configs/** with every file of configs/; gin_utils reads them from there."""
  build = subprocess.run(
      [sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--quiet', '-w', str(tmp_path),
       str(conftest.REPO)], capture_output=True, text=True, timeout=600, check=False)
  if build.returncode != 0 and re.search(r'(?i)could not|connection|network', build.stderr):
    pytest.skip(f'no build backend reachable: {build.stderr[-300:]}')
  assert build.returncode == 0, build.stderr[-3000:]
  (wheel,) = tmp_path.glob('lsc_align-*.whl')
  names = set(zipfile.ZipFile(wheel).namelist())
  wanted = {f'lsc_align/configs/{p.relative_to(CONFIGS)}' for p in CONFIGS.rglob('*.gin')}
  assert wanted and not wanted - names, sorted(wanted - names)
  assert 'lsc_align/configs/__init__.py' in names
  assert 'lsc_align/gin_utils.py' in names


def test_configs_resolve_through_the_package():
  from lsc_align import gin_utils  # pylint: disable=g-import-not-at-top
  import importlib.resources  # pylint: disable=g-import-not-at-top
  assert gin_utils.CONFIG_DIR == pathlib.Path(str(importlib.resources.files('lsc_align.configs')))
  assert gin_utils.resolve_gin_file('experiments/demo') == str(
      gin_utils.CONFIG_DIR / 'experiments' / 'demo.gin')
