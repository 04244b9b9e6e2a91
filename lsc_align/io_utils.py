"""Small file helpers: atomic writes (temporary name, then rename) and JSONL."""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Iterable


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
  """Writes text so a reader sees either the old file or the whole new one, never a part."""
  path = os.fspath(path)
  directory = os.path.dirname(path) or '.'
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f'.{os.path.basename(path)}.', suffix='.tmp')
  try:
    with os.fdopen(fd, 'w', encoding='utf-8') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
  atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + '\n')


def atomic_write_jsonl(path: str | os.PathLike[str], rows: Iterable[Any]) -> None:
  atomic_write_text(path, ''.join(json.dumps(r, sort_keys=True) + '\n' for r in rows))


def append_jsonl(path: str | os.PathLike[str], row: Any) -> None:
  """Appends one line; a line is written whole with one write call and flushed."""
  with open(path, 'a', encoding='utf-8') as f:
    f.write(json.dumps(row, sort_keys=True) + '\n')
    f.flush()
