"""Runs argv lists for the launcher: streams output line by line with a prefix, or only prints.

`Executor(dry_run=True)` prints each command as one shell-quoted line (`shlex.join`) and runs
nothing. Otherwise commands run without a local shell; stdout and stderr are merged and passed
through line by line as `[PREFIX] line`, one whole line at a time even when several jobs stream
from threads. The `gcloud` binary is replaced by ``gcloud`` (a path), which is how tests point
the launcher at a fake script.
"""
from __future__ import annotations

import shlex
import subprocess
import sys
import threading
from typing import Sequence, TextIO

from launch import gcloud as gcloud_lib

NOT_FOUND_EXIT = 127  # the shell's code for "command not found"


class Executor:
  """Runs (or, in dry-run mode, prints) argv lists whose first word may be `gcloud`."""

  def __init__(self, gcloud: str = gcloud_lib.GCLOUD, dry_run: bool = False,
               out: TextIO | None = None):
    self.gcloud = gcloud
    self.dry_run = dry_run
    self._out = out
    self._lock = threading.Lock()

  @property
  def out(self) -> TextIO:
    return self._out if self._out is not None else sys.stdout  # sys.stdout read late (capsys)

  def resolve(self, argv: Sequence[str]) -> list[str]:
    """argv with a leading `gcloud` replaced by this executor's gcloud path."""
    argv = list(argv)
    if argv and argv[0] == gcloud_lib.GCLOUD:
      argv[0] = self.gcloud
    return argv

  def emit(self, line: str) -> None:
    """Writes one whole line (thread-safe) and flushes, so logs appear as they come."""
    with self._lock:
      self.out.write(line + '\n')
      self.out.flush()

  def show(self, argv: Sequence[str]) -> None:
    """Prints the command as a line that a shell splits back into the same argv."""
    self.emit(shlex.join(self.resolve(argv)))

  def stream(self, argv: Sequence[str], prefix: str) -> int:
    """Runs argv, passing its merged output through as `PREFIX line`; returns its exit code.

    In dry-run mode only prints the command and returns 0.
    """
    argv = self.resolve(argv)
    if self.dry_run:
      self.show(argv)
      return 0
    self.emit(f'{prefix}$ {shlex.join(argv)}')
    try:
      process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, errors='replace', bufsize=1)
    except FileNotFoundError:
      self.emit(f'{prefix}error: {argv[0]!r} not found (install the Google Cloud CLI or pass '
                '--gcloud PATH)')
      return NOT_FOUND_EXIT
    assert process.stdout is not None
    with process.stdout:
      for line in process.stdout:
        self.emit(prefix + line.rstrip('\r\n'))
    return process.wait()

  def capture(self, argv: Sequence[str]) -> subprocess.CompletedProcess:
    """Runs argv and returns its output (not streamed); exit code 127 if the program is missing.

    Not for dry-run mode: the caller decides what to print instead.
    """
    if self.dry_run:
      raise RuntimeError('capture() runs a command; in dry-run mode print it with show()')
    argv = self.resolve(argv)
    try:
      return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            errors='replace', check=False)
    except FileNotFoundError:
      return subprocess.CompletedProcess(argv, NOT_FOUND_EXIT, '', f'{argv[0]!r} not found')
