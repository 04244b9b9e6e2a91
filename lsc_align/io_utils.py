"""File helpers that take local paths and object-store URLs (gs://, ...) alike.

Run directories, pools, caches and data may live in a bucket on a pod: every read, write and
directory operation on them goes through here. Local paths use the os module (fast, atomic
rename); URLs go through etils.epath (TensorFlow's gfile or fsspec underneath). Writes are
atomic either way: a temporary name then a rename locally, one whole-object upload on a store.
Paths are strings; ``os.path.join``/``dirname``/``basename`` work on URL strings too, but
``os.path.abspath`` does not, hence ``abspath`` here.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import tempfile
from typing import IO, Any, Collection, Iterable, Mapping


PathLike = str | os.PathLike[str]

# OS faults a user can fix (space, permissions, a path the filesystem cannot hold), as opposed to
# bugs: the CLI reports them in one line naming the path.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.ENAMETOOLONG,
                            errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.EIO})


class DamagedFileError(ValueError):
  """A file that exists but cannot be read as what it should be (truncated, corrupt, incomplete).

  The message names the file, what is wrong and what to do.
  """


def is_storage_error(error: BaseException) -> bool:
  """An OSError from the filesystem or store that the user must fix (full disk, read-only, ...)."""
  return isinstance(error, OSError) and error.errno in STORAGE_ERRNOS


def storage_error_message(error: OSError) -> str:
  """'PATH: No space left on device' (the path, or 'storage' when the OS did not name one)."""
  where = error.filename or 'storage'
  return f'{where}: {error.strerror or os.strerror(error.errno or 0)}'


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


_REBUILD = 'delete it and rerun the stage that wrote it'


def load_npz(path: PathLike, required: Collection[str] = ()) -> dict[str, Any]:
  """All arrays of an .npz file, read into memory (the file is closed on return).

  Raises:
    FileNotFoundError: no such file.
    DamagedFileError: the file is truncated or corrupt, or lacks one of the `required` arrays.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  path = os.fspath(path)
  try:
    source = io.BytesIO(read_bytes(path)) if is_url(path) else path
    with np.load(source, allow_pickle=False) as archive:
      arrays = {name: archive[name] for name in archive.files}
  except FileNotFoundError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (a damaged archive raises anything)
    if is_storage_error(e) or isinstance(e, MemoryError):
      raise
    raise DamagedFileError(f'{path}: damaged or incomplete .npz ({type(e).__name__}: {e}); '
                           f'{_REBUILD}') from e
  missing = sorted(set(required) - set(arrays))
  if missing:
    raise DamagedFileError(f'{path}: missing array(s) {", ".join(missing)}; {_REBUILD}')
  return arrays


def read_json(path: PathLike, required: Collection[str] = ()) -> Any:
  """A JSON file's value; errors name the file (and the line and column of bad JSON).

  Raises:
    FileNotFoundError: no such file.
    DamagedFileError: not valid UTF-8 JSON, or an object lacking one of the `required` keys.
  """
  path = os.fspath(path)
  try:
    value = json.loads(read_text(path))
  except json.JSONDecodeError as e:
    raise DamagedFileError(f'{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg}); '
                           f'{_REBUILD}') from e
  except UnicodeDecodeError as e:
    raise DamagedFileError(f'{path}: not UTF-8 text; {_REBUILD}') from e
  if required:
    if not isinstance(value, dict):
      raise DamagedFileError(f'{path}: expected a JSON object, got {type(value).__name__}; '
                             f'{_REBUILD}')
    missing = sorted(set(required) - set(value))
    if missing:
      raise DamagedFileError(f'{path}: missing key(s) {", ".join(missing)}; {_REBUILD}')
  return value


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


def remove(path: PathLike) -> None:
  """Deletes a file (FileNotFoundError when there is none)."""
  if is_url(path):
    p = _epath(path)
    if not p.exists():
      raise FileNotFoundError(errno.ENOENT, 'No such file', os.fspath(path))
    p.unlink()
  else:
    os.unlink(path)


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
  """Writes bytes so a reader sees either the old file or the whole new one, never a part.

  Local paths: a temporary file in the same directory, fsync, rename; the file gets the mode an
  ordinary open() would (0666 less the umask), not mkstemp's 0600. Object stores (gs://, ...)
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
    os.fchmod(fd, 0o666 & ~_umask())
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException as e:
    if os.path.exists(tmp):
      os.unlink(tmp)
    if isinstance(e, OSError) and not e.filename and e.errno:  # write() names no file
      raise OSError(e.errno, os.strerror(e.errno), path) from e
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
