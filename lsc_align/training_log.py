"""Training metrics: a JSONL copy and TensorBoard events per step, and a one-line progress display.

Only process 0 writes (``jax.process_index() == 0``); on other processes every method is a no-op,
so trainers call them unconditionally. TensorBoard events are written with tensorboardX, which
does not import TensorFlow.

metrics.jsonl holds one JSON object per step: ``{"step": N, "wall_time": t, <name>: value, ...}``.
On resume from checkpoint N, ``truncate_after(N)`` drops the rows of steps > N (written after
that checkpoint by the interrupted run) and purges those steps from TensorBoard, so curves have
no duplicates.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import os
import sys
import time
from typing import Any, Callable, Mapping, Sequence, TextIO

from etils import epath
import jax
import numpy as np

from lsc_align import io_utils

RESERVED_KEYS = ('step', 'wall_time')


@dataclasses.dataclass(frozen=True)
class MetricRecord:
  """One step's scalars, as stored in one line of metrics.jsonl."""
  step: int
  wall_time: float
  scalars: dict[str, float | int]

  def to_json(self) -> dict[str, Any]:
    return {'step': self.step, 'wall_time': self.wall_time, **self.scalars}

  @classmethod
  def from_json(cls, row: Mapping[str, Any]) -> MetricRecord:
    scalars = {k: v for k, v in row.items() if k not in RESERVED_KEYS}
    return cls(step=int(row['step']), wall_time=float(row['wall_time']), scalars=scalars)


def to_scalars(metrics: Mapping[str, Any]) -> dict[str, float | int]:
  """Host Python numbers from a dict of 0-d arrays/numbers (fetches jax arrays from device).

  Raises:
    ValueError: a value is not a scalar, or a key is 'step' or 'wall_time'.
  """
  scalars = {}
  for key, value in jax.device_get(dict(metrics)).items():
    if key in RESERVED_KEYS:
      raise ValueError(f'metric name {key!r} is reserved for the record itself')
    array = np.asarray(value)
    if array.shape != ():
      raise ValueError(f'metric {key!r} is not a scalar: shape {array.shape}')
    if np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
      scalars[key] = int(array)
    else:
      scalars[key] = float(array)
  return scalars


def read_metrics(path: str | os.PathLike[str]) -> list[MetricRecord]:
  """Reads a metrics.jsonl file; a ValueError names the file and line of a bad row."""
  path = epath.Path(path)
  records = []
  for line_number, line in enumerate(path.read_text().splitlines(), start=1):
    if not line.strip():
      continue
    try:
      records.append(MetricRecord.from_json(json.loads(line)))
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(f'{path}:{line_number}: bad metrics row: {e}') from e
  return records


class EventLog:
  """TensorBoard scalars written in the caller's thread (tensorboardX's event-file format).

  tensorboardX's SummaryWriter writes from a background thread: when that thread dies (a full
  disk, a read-only filesystem) the error never reaches the training loop, and once its queue is
  full every later add blocks forever. Here each write raises where it is called. With
  `purge_step`, a session START event at that step makes TensorBoard hide the events at or after
  it from earlier files (the interrupted run's steps past the restored checkpoint).
  """

  FLUSH_SECONDS = 30.0  # so a live TensorBoard sees new points between checkpoints

  def __init__(self, directory: str | os.PathLike[str], purge_step: int | None = None) -> None:
    from tensorboardX import event_file_writer  # pylint: disable=g-import-not-at-top
    from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
    self._event_pb2 = event_pb2
    self._last_flush = time.monotonic()
    self._writer = event_file_writer.EventsWriter(os.path.join(os.fspath(directory), 'events'))
    if purge_step is not None:
      self._writer.write_event(event_pb2.Event(step=purge_step, file_version='brain.Event:2'))
      self._writer.write_event(event_pb2.Event(
          step=purge_step, session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))

  def add_scalars(self, step: int, scalars: Mapping[str, float | int],
                  wall_time: float) -> None:
    from tensorboardX import summary  # pylint: disable=g-import-not-at-top
    for key, value in scalars.items():
      self._writer.write_event(self._event_pb2.Event(
          wall_time=wall_time, step=step, summary=summary.scalar(key, float(value))))
    if time.monotonic() - self._last_flush > self.FLUSH_SECONDS:
      self.flush()

  def flush(self) -> None:
    self._writer.flush()
    self._last_flush = time.monotonic()

  def close(self) -> None:
    self._writer.close()


class MetricsWriter:
  """Writes each step's scalars to ``<directory>/metrics.jsonl`` and TensorBoard event files.

  Local files are appended to line by line (a crash loses nothing already written). Object
  stores (gs://) cannot append, so there rows are kept in memory and the whole file is rewritten
  on ``flush`` (the training loop flushes at each checkpoint and at the end).
  """

  def __init__(self,
               directory: str | os.PathLike[str],
               *,
               jsonl_name: str = 'metrics.jsonl',
               tensorboard: bool = True,
               is_writer: bool | None = None) -> None:
    """Creates the directory (on the writing process); files appear on first write.

    Args:
      directory: where metrics.jsonl and the event files go (created if missing).
      jsonl_name: name of the JSONL file.
      tensorboard: also write TensorBoard event files.
      is_writer: whether this process writes; default ``jax.process_index() == 0``.
    """
    self.directory = epath.Path(directory)
    self.jsonl_path = self.directory / jsonl_name
    self.is_writer = jax.process_index() == 0 if is_writer is None else is_writer
    self._tensorboard = tensorboard
    self._tb_writer = None
    self._purge_step: int | None = None
    self._append = not io_utils.is_url(self.directory)
    self._buffered_rows: list[dict[str, Any]] | None = None
    if self.is_writer:
      self.directory.mkdir(parents=True, exist_ok=True)

  def truncate_after(self, step: int) -> int:
    """Drops rows with step > ``step`` (resume from checkpoint ``step``); returns how many.

    TensorBoard events from steps > ``step`` are purged too (tensorboardX ``purge_step``).
    ``truncate_after(0)`` starts a fresh run's curves.
    """
    if not self.is_writer:
      return 0
    rows = self._all_rows()
    kept = [r for r in rows if r['step'] <= step]
    if len(kept) != len(rows) or not self._append:
      self._rewrite(kept)
    self._buffered_rows = None if self._append else kept
    # Events after `step` are hidden by TensorBoard when the next writer starts with purge_step.
    self._purge_step = step + 1
    if self._tb_writer is not None:
      self._tb_writer.close()
      self._tb_writer = None
    return len(rows) - len(kept)

  def write(self, step: int, metrics: Mapping[str, Any],
            wall_time: float | None = None) -> MetricRecord | None:
    """Records one step's scalars (jax/numpy 0-d arrays or numbers); None on non-writers."""
    if not self.is_writer:
      return None
    record = MetricRecord(step=int(step),
                          wall_time=time.time() if wall_time is None else float(wall_time),
                          scalars=to_scalars(metrics))
    row = record.to_json()
    if self._append:
      with self.jsonl_path.open('a') as f:
        f.write(json.dumps(row, sort_keys=True) + '\n')
    else:
      if self._buffered_rows is None:
        self._buffered_rows = self._all_rows()
      self._buffered_rows.append(row)
    writer = self._tb() if self._tensorboard else None
    if writer is not None:
      writer.add_scalars(record.step, record.scalars, record.wall_time)
    return record

  def flush(self) -> None:
    """Makes everything written so far visible in storage."""
    if not self.is_writer:
      return
    if not self._append and self._buffered_rows is not None:
      self._rewrite(self._buffered_rows)
    if self._tb_writer is not None:
      self._tb_writer.flush()

  def close(self) -> None:
    self.flush()
    if self._tb_writer is not None:
      self._tb_writer.close()
      self._tb_writer = None

  def __enter__(self) -> MetricsWriter:
    return self

  def __exit__(self, *exc_info: Any) -> None:
    self.close()

  def _tb(self) -> Any:
    if self._tb_writer is None:
      try:
        self._tb_writer = EventLog(self.directory, purge_step=self._purge_step)
      except ImportError as e:
        # tensorboardX writes gs:// only with google-cloud-storage; the JSONL copy still works.
        logging.warning('TensorBoard events disabled for %s: %s', self.directory, e)
        self._tensorboard = False
    return self._tb_writer

  def _all_rows(self) -> list[dict[str, Any]]:
    if self._buffered_rows is not None:
      return list(self._buffered_rows)
    if not self.jsonl_path.exists():
      return []
    return [r.to_json() for r in read_metrics(self.jsonl_path)]

  def _rewrite(self, rows: Sequence[Mapping[str, Any]]) -> None:
    io_utils.atomic_write_jsonl(self.jsonl_path, rows)  # readers never see a half-written file


def format_duration(seconds: float) -> str:
  """'1:02:03' for 3723 s; '--' when unknown (inf/nan)."""
  if not math.isfinite(seconds):
    return '--'
  return str(datetime.timedelta(seconds=int(round(max(seconds, 0.0)))))


class ProgressPrinter:
  """Prints one line per call on stderr: step/total, chosen metrics, steps/s, elapsed, ETA.

  steps/s is measured over the interval since the previous line; the ETA uses the mean rate
  since the first line, which leaves out compilation time spent before it.
  """

  def __init__(self,
               total_steps: int,
               keys: Sequence[str] = ('loss',),
               *,
               stream: TextIO | None = None,
               enabled: bool | None = None,
               clock: Callable[[], float] = time.monotonic) -> None:
    self.total_steps = total_steps
    self.keys = tuple(keys)
    self.stream = stream
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._clock = clock
    self._start: tuple[int, float] | None = None
    self._first: tuple[int, float] | None = None
    self._last: tuple[int, float] | None = None

  def start(self, step: int) -> None:
    """Marks the step the run starts (or resumes) from, and the time."""
    self._start = self._last = (step, self._clock())
    self._first = None

  def update(self, step: int, scalars: Mapping[str, Any]) -> str | None:
    """Prints and returns the progress line for ``step``; None when disabled."""
    if not self.enabled:
      return None
    now = self._clock()
    if self._start is None:
      self.start(0)
    start_step, start_time = self._start
    last_step, last_time = self._last
    rate = (step - last_step) / (now - last_time) if now > last_time else math.nan
    if self._first is None:
      self._first = (step, now)
      mean_rate = (step - start_step) / (now - start_time) if now > start_time else math.nan
    else:
      first_step, first_time = self._first
      mean_rate = (step - first_step) / (now - first_time) if now > first_time else rate
    self._last = (step, now)
    remaining = self.total_steps - step
    eta = remaining / mean_rate if mean_rate and mean_rate > 0 else math.nan
    width = len(str(self.total_steps))
    parts = [f'step {step:>{width}}/{self.total_steps} ({100.0 * step / self.total_steps:.0f}%)']
    parts += [f'{k} {float(scalars[k]):.4g}' for k in self.keys if k in scalars]
    parts += [f'{rate:.3g} steps/s', f'elapsed {format_duration(now - start_time)}',
              f'eta {format_duration(eta if remaining > 0 else 0.0)}']
    line = ' | '.join(parts)
    stream = self.stream or sys.stderr
    print(line, file=stream, flush=True)
    return line
