"""File helpers that take local paths and object-store URLs (gs://, ...) alike.

Run directories, pools, caches and data may live in a bucket on a pod: every read, write and
directory operation on them goes through here. Local paths use the os module (fast, atomic
rename); URLs go through etils.epath (TensorFlow's gfile or fsspec underneath). Writes are
atomic either way: a temporary name then a rename locally, one whole-object upload on a store.
Paths are strings; ``os.path.join``/``dirname``/``basename`` work on URL strings too, but
``os.path.abspath`` does not, hence ``abspath`` here.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from typing import IO, Any, Iterable, Mapping


PathLike = str | os.PathLike[str]


def is_url(path: PathLike) -> bool:
  """True for object-store URLs such as gs://bucket/dir (anything with a scheme)."""
  return '://' in os.fspath(path)


def _epath(path: PathLike):
  from etils import epath  # pylint: disable=g-import-not-at-top  (keeps `import lsc_align` light)
  return epath.Path(os.fspath(path))


def abspath(path: PathLike) -> str:
  """An absolute local path (`~` expanded, relative to the working directory); URLs unchanged.

  Every path a user gives (a flag, a gin binding) goes through here where it enters the
  library, so what is written into a run directory, and what Orbax receives, is absolute.
  """
  path = os.fspath(path)
  return path if is_url(path) else os.path.abspath(os.path.expanduser(path))


def optional_abspath(path: PathLike | None) -> str | None:
  """abspath, passing None through (optional path arguments)."""
  return None if path is None else abspath(path)


def exists(path: PathLike) -> bool:
  return _epath(path).exists() if is_url(path) else os.path.exists(path)


def isdir(path: PathLike) -> bool:
  return _epath(path).is_dir() if is_url(path) else os.path.isdir(path)


def isfile(path: PathLike) -> bool:
  if is_url(path):
    p = _epath(path)
    return p.exists() and not p.is_dir()
  return os.path.isfile(path)


def makedirs(path: PathLike) -> None:
  """mkdir -p (a no-op on stores without directories beyond creating the marker)."""
  if is_url(path):
    _epath(path).mkdir(parents=True, exist_ok=True)
  else:
    os.makedirs(path, exist_ok=True)


def listdir(path: PathLike) -> list[str]:
  """Sorted entry names of a directory."""
  if is_url(path):
    return sorted(p.name for p in _epath(path).iterdir())
  return sorted(os.listdir(path))


def open_file(path: PathLike, mode: str = 'r', encoding: str | None = None) -> IO[Any]:
  """open() for local paths and URLs ('r', 'rb', 'w', 'wb'; text is UTF-8 by default)."""
  if is_url(path):
    return _epath(path).open(mode)
  if 'b' not in mode and encoding is None:
    encoding = 'utf-8'
  return open(path, mode, encoding=encoding)  # pylint: disable=unspecified-encoding


def read_bytes(path: PathLike) -> bytes:
  if is_url(path):
    return _epath(path).read_bytes()
  with open(path, 'rb') as f:
    return f.read()


def read_text(path: PathLike) -> str:
  return read_bytes(path).decode('utf-8')


def load_npz(path: PathLike) -> dict[str, Any]:
  """All arrays of an .npz file, read into memory (the file is closed on return)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  source = io.BytesIO(read_bytes(path)) if is_url(path) else path
  with np.load(source, allow_pickle=False) as archive:
    return {name: archive[name] for name in archive.files}


def file_digest(path: PathLike) -> str:
  """SHA-256 hex digest of a file's bytes (read in 1 MiB blocks)."""
  digest = hashlib.sha256()
  with open_file(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def file_signature(path: PathLike) -> tuple[int, int]:
  """(size in bytes, modification time in ns): what a cache key needs to notice an edit."""
  if is_url(path):
    stat = _epath(path).stat()
    return int(stat.length), int(float(stat.mtime) * 1e9)
  stat = os.stat(path)
  return stat.st_size, stat.st_mtime_ns


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
  """Writes bytes so a reader sees either the old file or the whole new one, never a part.

  Local paths: a temporary file in the same directory, fsync, rename. Object stores (gs://, ...)
  publish an object whole, so those are written directly through etils.epath.
  """
  path = os.fspath(path)
  if is_url(path):
    _epath(path).parent.mkdir(parents=True, exist_ok=True)
    _epath(path).write_bytes(data)
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
  """Appends one line; a line is written whole with one write call and flushed.

  Object stores cannot append: there the object is read and rewritten whole (still atomic for
  readers; the cost grows with the file, fine for the periodic sample logs this serves).
  """
  if is_url(path):
    before = read_text(path) if exists(path) else ''
    atomic_write_text(path, before + json.dumps(row, sort_keys=True) + '\n')
    return
  with open(path, 'a', encoding='utf-8') as f:
    f.write(json.dumps(row, sort_keys=True) + '\n')
    f.flush()
