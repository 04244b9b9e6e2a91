"""Small file helpers: atomic writes (temporary name, then rename) and JSONL."""
from __future__ import annotations

import io
import json
import os
import tempfile
from typing import Any, Iterable, Mapping


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
  """Writes bytes so a reader sees either the old file or the whole new one, never a part.

  Local paths: a temporary file in the same directory, fsync, rename. Object stores (gs://, ...)
  publish an object whole, so those are written directly through etils.epath.
  """
  path = os.fspath(path)
  if '://' in path:
    from etils import epath  # pylint: disable=g-import-not-at-top
    epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
    epath.Path(path).write_bytes(data)
    return
  directory = os.path.dirname(path) or '.'
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f'.{os.path.basename(path)}.', suffix='.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
  """atomic_write_bytes of UTF-8 text."""
  atomic_write_bytes(path, text.encode('utf-8'))


def atomic_save_npz(path: str | os.PathLike[str], arrays: Mapping[str, Any]) -> None:
  """np.savez to `path`, atomically (the archive is built in memory first)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  atomic_write_bytes(path, buffer.getvalue())


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
  atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + '\n')


def atomic_write_jsonl(path: str | os.PathLike[str], rows: Iterable[Any]) -> None:
  atomic_write_text(path, ''.join(json.dumps(r, sort_keys=True) + '\n' for r in rows))


def append_jsonl(path: str | os.PathLike[str], row: Any) -> None:
  """Appends one line; a line is written whole with one write call and flushed."""
  with open(path, 'a', encoding='utf-8') as f:
    f.write(json.dumps(row, sort_keys=True) + '\n')
    f.flush()
