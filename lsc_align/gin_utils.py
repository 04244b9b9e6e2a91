"""gin set-up shared by every command: search path, clear errors, operative config on disk."""
from __future__ import annotations

import os
import pathlib
from typing import Sequence

import gin

CONFIG_DIR = pathlib.Path(__file__).resolve().parent.parent / 'configs'


class GinConfigError(ValueError):
  """A gin file or binding could not be applied; the message names it."""


def resolve_gin_file(name: str) -> str:
  """A path as given, else the same name under configs/ (with or without '.gin')."""
  for candidate in (pathlib.Path(name), CONFIG_DIR / name, CONFIG_DIR / f'{name}.gin'):
    if candidate.is_file():
      return str(candidate)
  raise GinConfigError(f'gin file {name!r} not found (looked as given and under {CONFIG_DIR})')


def parse(gin_files: Sequence[str] = (), gin_params: Sequence[str] = (),
          finalize: bool = True) -> None:
  """Parses files then bindings; any failure is re-raised naming the file or binding."""
  gin.clear_config()
  gin.add_config_file_search_path(str(CONFIG_DIR))
  for name in gin_files:
    path = resolve_gin_file(name)
    try:
      gin.parse_config_file(path)
    except Exception as e:  # gin raises several types; all mean "this file is wrong"
      raise GinConfigError(f'gin file {path}: {e}') from e
  for binding in gin_params:
    try:
      gin.parse_config(binding)
    except Exception as e:
      raise GinConfigError(f'gin binding {binding!r}: {e}') from e
  if finalize:
    gin.finalize()


def write_operative_config(run_dir: str | os.PathLike[str], name: str = 'config.gin') -> str:
  """Writes gin's operative config into the run directory atomically; returns its path."""
  from lsc_align import io_utils  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.fspath(run_dir), name)
  io_utils.atomic_write_text(path, gin.operative_config_str())
  return path
