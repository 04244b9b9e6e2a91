"""One process per run or experiment directory: a lock file holding who has it.

A stage that writes into a directory holds `RunLock(directory, holder)` for as long as it
writes. The lock is the file ``<directory>/.lsc_align.lock``, created exclusively, holding
``{"holder": ..., "host": ..., "pid": ..., "started": ...}``. A second process on the same
directory gets a `RunLockedError` (a ValueError: one line, exit 2 in the CLI) naming the holder,
and changes nothing. A lock left by a process that died (same host, pid no longer running, or the
pid reused by a process that started after the lock was written) is stale: it is taken over, and
a warning says so. A lock from another host cannot be checked from here; the error says how to
remove it by hand.

The same process may take the same directory again (nested stages, e.g. a sweep running its
points): the lock is re-entrant per process and released when the outermost holder exits.

Object stores (gs://) cannot create a file exclusively through etils.epath, so there the lock is
written and read back (a race between two writers in the same instant is not excluded); on a pod
the launcher gives each run its own directory.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import threading
import time
from typing import Any

from lsc_align import io_utils

LOCK_FILE = '.lsc_align.lock'

_held_lock = threading.Lock()
_held: dict[str, int] = {}  # lock path -> nesting depth in this process


class RunLockedError(ValueError):
  """Another live process holds the directory."""


def _process_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  return True


def _process_start_time(pid: int) -> float | None:
  """When process `pid` started (seconds since the epoch), where /proc tells; else None."""
  try:
    with open(f'/proc/{pid}/stat', encoding='utf-8') as f:
      fields = f.read().rsplit(')', 1)[1].split()
    ticks = int(fields[19])  # starttime, field 22 of stat (after pid and comm)
    with open('/proc/stat', encoding='utf-8') as f:
      boot = next(float(l.split()[1]) for l in f if l.startswith('btime '))
    return boot + ticks / os.sysconf('SC_CLK_TCK')
  except (OSError, ValueError, IndexError, StopIteration):
    return None


# An unreadable lock younger than this may be one that its process is writing right now.
_UNREADABLE_GRACE_SECONDS = 10.0


def _is_stale(info: dict[str, Any], path: str) -> bool:
  """True when the holder ran on this host and is gone (or its pid now belongs to a newer one).

  An unreadable lock is stale once it is older than a few seconds.
  """
  if not info:
    try:
      return time.time() - os.path.getmtime(path) > _UNREADABLE_GRACE_SECONDS
    except OSError:
      return not io_utils.is_url(path)
  if info.get('host') != socket.gethostname():
    return False
  pid = info.get('pid')
  if not isinstance(pid, int) or pid <= 0:
    return True
  if not _process_alive(pid):
    return True
  started = _process_start_time(pid)
  stamp = info.get('started_unix')
  # A live pid that started after the lock was written is another process that reused it.
  return started is not None and isinstance(stamp, (int, float)) and started > stamp + 1.0


def describe(info: dict[str, Any]) -> str:
  """'ppo (pid 123 on host-a since 2026-12-08T03:40:00)'."""
  return (f"{info.get('holder', '?')} (pid {info.get('pid', '?')} on {info.get('host', '?')} "
          f"since {info.get('started', '?')})")


def read_lock(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
  """The lock's contents, None without a lock; an unreadable lock reads as {} (stale)."""
  path = os.path.join(os.fspath(directory), LOCK_FILE)
  if not io_utils.exists(path):
    return None
  try:
    info = json.loads(io_utils.read_text(path))
  except (ValueError, OSError, UnicodeDecodeError):
    return {}
  return info if isinstance(info, dict) else {}


class RunLock:
  """Holds ``<directory>/.lsc_align.lock`` while the stage writes; a context manager.

  Example:
    with RunLock(run_dir, 'ppo'):
      ...  # train, write results
  """

  def __init__(self, directory: str | os.PathLike[str], holder: str) -> None:
    self.directory = io_utils.abspath(directory)
    self.path = os.path.join(self.directory, LOCK_FILE)
    self.holder = holder
    self.took_over: dict[str, Any] | None = None  # the stale lock replaced, if any

  def _payload(self) -> str:
    now = datetime.datetime.now(datetime.timezone.utc)
    return json.dumps({'holder': self.holder, 'host': socket.gethostname(), 'pid': os.getpid(),
                       'started': now.isoformat(timespec='seconds'),
                       'started_unix': now.timestamp()}, sort_keys=True) + '\n'

  def _create_local(self) -> bool:
    """Creates the lock file exclusively; False when one exists."""
    try:
      fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
      return False
    try:
      os.write(fd, self._payload().encode('utf-8'))
      os.fsync(fd)
    except BaseException:
      os.close(fd)
      os.unlink(self.path)
      raise
    os.close(fd)
    return True

  def _create_url(self) -> bool:
    if io_utils.exists(self.path):
      return False
    payload = self._payload()
    io_utils.atomic_write_text(self.path, payload)
    return io_utils.read_text(self.path) == payload

  def acquire(self) -> RunLock:
    """Takes the lock (or re-enters it); RunLockedError when a live process holds it."""
    with _held_lock:
      if _held.get(self.path):
        _held[self.path] += 1
        return self
    io_utils.makedirs(self.directory)
    create = self._create_url if io_utils.is_url(self.path) else self._create_local
    for _ in range(3):  # a stale lock removed by us may be re-taken by a third process
      if create():
        with _held_lock:
          _held[self.path] = 1
        if self.took_over is not None:
          logging.warning('%s: took over a stale lock of %s, which is no longer running',
                          self.directory, describe(self.took_over))
        return self
      info = read_lock(self.directory)
      if info is None:
        continue  # released meanwhile
      if not _is_stale(info, self.path):
        raise RunLockedError(
            f'{self.directory} is in use by {describe(info)}; wait for it to finish, or, if '
            f'that process is gone, delete {self.path}')
      self.took_over = info
      try:
        io_utils.remove(self.path)
      except FileNotFoundError:
        pass
    raise RunLockedError(f'{self.directory}: could not take the lock {self.path}')

  def release(self) -> None:
    """Drops one level of the lock; removes the file when the outermost holder leaves."""
    with _held_lock:
      depth = _held.get(self.path, 0)
      if depth > 1:
        _held[self.path] = depth - 1
        return
      _held.pop(self.path, None)
    info = read_lock(self.directory)
    if info and info.get('pid') == os.getpid() and info.get('host') == socket.gethostname():
      try:
        io_utils.remove(self.path)
      except FileNotFoundError:
        pass

  def __enter__(self) -> RunLock:
    return self.acquire()

  def __exit__(self, *exc_info: Any) -> None:
    self.release()
