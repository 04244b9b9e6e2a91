"""gin set-up shared by every command: search path, clear errors, operative config on disk."""
from __future__ import annotations

import importlib.resources
import logging
import os
import pathlib
from typing import Sequence

import gin


def _config_dir() -> pathlib.Path:
  """The gin configs: the top-level configs/ folder, shipped as the package lsc_align.configs.

  setup.py maps lsc_align.configs to configs/ (package_dir), so a wheel installs the folder
  inside the package and an editable install resolves it to the checkout's configs/.
  """
  try:
    root = importlib.resources.files('lsc_align.configs')
    path = pathlib.Path(str(root))
    if path.is_dir():
      return path
  except (ModuleNotFoundError, TypeError):  # not installed: running from a source tree
    pass
  return pathlib.Path(__file__).resolve().parent.parent / 'configs'


CONFIG_DIR = _config_dir()


class GinConfigError(ValueError):
  """A gin file or binding could not be applied; the message names it."""


def resolve_gin_file(name: str) -> str:
  """A path as given, else the same name under configs/ (with or without '.gin')."""
  for candidate in (pathlib.Path(name), CONFIG_DIR / name, CONFIG_DIR / f'{name}.gin'):
    if candidate.is_file():
      return str(candidate)
  raise GinConfigError(f'gin file {name!r} not found (looked as given and under {CONFIG_DIR})')


class _NoPathProbeErrors(logging.Filter):
  """gin logs 'Path not found' at ERROR while it probes where an include lives; noise."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith('Path not found')


_PROBE_FILTER = _NoPathProbeErrors()


def parse(gin_files: Sequence[str] = (), gin_params: Sequence[str] = (),
          finalize: bool = True) -> None:
  """Parses files then bindings; any failure is re-raised naming the file or binding."""
  logging.getLogger().addFilter(_PROBE_FILTER)
  try:
    _parse(gin_files, gin_params, finalize)
  finally:
    logging.getLogger().removeFilter(_PROBE_FILTER)


# What the last `parse` read: files as [(path, included by or None, its comment lines)], in the
# order gin read them (each once), and the bindings given. write_operative_config puts it at the
# head of a run's config.gin.
_PARSED: dict[str, list] = {'files': [], 'bindings': []}


def reset_parse_record() -> None:
  """Forgets what the last `parse` read (tests that clear gin themselves call this)."""
  _PARSED['files'], _PARSED['bindings'] = [], []


def record_file(path: str, by: str | None = None) -> None:
  """Records a gin file with its comments for the header (once); also for a file read after
  `parse`, as an objective file is when a command loads its objective."""
  path = resolve_gin_file(path)
  if all(path != recorded for recorded, _, _ in _PARSED['files']):
    comments = [line.strip().lstrip('#').strip()
                for line in pathlib.Path(path).read_text().splitlines()
                if line.strip().startswith('#')]
    _PARSED['files'].append((path, by, comments))


def _record_file(parsed: gin.config.ParsedConfigFileIncludesAndImports, by: str | None) -> None:
  """Records a file gin parsed and, depth first, the files it included (gin's own tree)."""
  record_file(parsed.filename, by)
  for included in parsed.includes:
    _record_file(included, resolve_gin_file(parsed.filename))


def _parse(gin_files: Sequence[str], gin_params: Sequence[str], finalize: bool) -> None:
  gin.clear_config()
  reset_parse_record()
  gin.add_config_file_search_path(str(CONFIG_DIR))
  for name in gin_files:
    path = resolve_gin_file(name)
    try:
      parsed = gin.parse_config_file(path)
    except Exception as e:  # gin raises several types; all mean "this file is wrong"
      raise GinConfigError(f'gin file {path}: {e}') from e
    _record_file(parsed, None)
  for binding in gin_params:
    try:
      gin.parse_config(binding)
    except Exception as e:
      raise GinConfigError(f'gin binding {binding!r}: {e}') from e
    _PARSED['bindings'].append(binding)
  if finalize:
    gin.finalize()


def provenance_header() -> str:
  """Comment lines naming the gin files and bindings of the last `parse`, each file with its
  own comments: where the configs record why a setting was chosen and the evidence (e.g. the
  learning-rate grid of runs/converge_align.gin), the run keeps it. '' when nothing was parsed."""
  if not _PARSED['files'] and not _PARSED['bindings']:
    return ''
  lines = ['# Gin files read, in order (includes after the file that includes them), with',
           '# their comments; then the bindings given. The operative config follows.']
  for path, by, comments in _PARSED['files']:
    lines.append('#')
    lines.append(f'# == {path}' + (f' (included by {by})' if by else ''))
    lines += [f'#   {comment}' for comment in comments]
  if _PARSED['bindings']:
    lines.append('#')
    lines.append('# == bindings given')
    lines += [f'#   {binding}' for binding in _PARSED['bindings']]
  return '\n'.join(lines) + '\n\n'


def write_operative_config(run_dir: str | os.PathLike[str], name: str = 'config.gin') -> str:
  """Writes gin's operative config into the run directory atomically, headed by
  `provenance_header()`; returns its path."""
  from lsc_align import io_utils  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.fspath(run_dir), name)
  io_utils.atomic_write_text(path, provenance_header() + gin.operative_config_str())
  return path
