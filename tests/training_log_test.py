"""Tests for lsc_align.training_log: metrics.jsonl, TensorBoard events, truncation, progress lines."""
import io
import json
import math
import pathlib
import struct

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from lsc_align import training_log as metrics


def read_events(directory: pathlib.Path) -> list[event_pb2.Event]:
  """Parses every TFRecord event file in directory (length, crc, payload, crc per record)."""
  events = []
  for path in sorted(directory.glob('events.out.tfevents.*')):
    data = path.read_bytes()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack('<Q', data[offset:offset + 8])
      payload = data[offset + 12:offset + 12 + length]
      assert len(payload) == length, f'truncated record in {path}'
      events.append(event_pb2.Event.FromString(payload))
      offset += 12 + length + 4
  return events


def scalar_events(events) -> dict[str, list[tuple[int, float]]]:
  out = {}
  for event in events:
    for value in event.summary.value:
      out.setdefault(value.tag, []).append((event.step, value.simple_value))
  return out


def test_writes_jsonl_rows_and_tensorboard_scalars(tmp_path):
  with metrics.MetricsWriter(tmp_path, is_writer=True) as writer:
    for step in range(1, 4):
      record = writer.write(step, {'loss': jnp.float32(1.0 / step), 'tokens': np.int32(8 * step)})
      assert record.step == step
  lines = (tmp_path / 'metrics.jsonl').read_text().splitlines()
  rows = [json.loads(line) for line in lines]
  assert [r['step'] for r in rows] == [1, 2, 3]
  assert [r['tokens'] for r in rows] == [8, 16, 24]
  assert all(isinstance(r['tokens'], int) for r in rows)
  np.testing.assert_allclose([r['loss'] for r in rows], [1.0, 0.5, 1.0 / 3], rtol=1e-6)
  assert all(r['wall_time'] > 1.6e9 for r in rows)
  assert metrics.read_metrics(tmp_path / 'metrics.jsonl')[1].scalars['tokens'] == 16

  scalars = scalar_events(read_events(tmp_path))
  assert [s for s, _ in scalars['loss']] == [1, 2, 3]
  np.testing.assert_allclose([v for _, v in scalars['loss']], [1.0, 0.5, 1.0 / 3], rtol=1e-6)
  np.testing.assert_allclose([v for _, v in scalars['tokens']], [8, 16, 24])


def test_truncate_after_drops_later_rows_and_purges_tensorboard(tmp_path):
  with metrics.MetricsWriter(tmp_path, is_writer=True) as writer:
    for step in range(1, 9):
      writer.write(step, {'loss': float(step)})
  # A resumed run from checkpoint 5: rows 6..8 of the interrupted run must go.
  with metrics.MetricsWriter(tmp_path, is_writer=True) as writer:
    assert writer.truncate_after(5) == 3
    for step in range(6, 8):
      writer.write(step, {'loss': 10.0 * step})
  records = metrics.read_metrics(tmp_path / 'metrics.jsonl')
  assert [r.step for r in records] == [1, 2, 3, 4, 5, 6, 7]
  assert [r.scalars['loss'] for r in records] == [1, 2, 3, 4, 5, 60, 70]
  # TensorBoard is told to hide steps >= 6 of the earlier file (a SessionLog.START at 6).
  events = read_events(tmp_path)
  starts = [e.step for e in events if e.session_log.status == event_pb2.SessionLog.START]
  assert starts == [6]


def test_buffered_mode_for_object_stores(tmp_path, monkeypatch):
  # gs:// cannot append; the writer then rewrites the whole file on flush. Exercise that path.
  monkeypatch.setattr(metrics.io_utils, 'is_url', lambda path: True)
  (tmp_path / 'metrics.jsonl').write_text(
      ''.join(json.dumps({'step': s, 'wall_time': 1.0, 'loss': s}) + '\n' for s in (1, 2, 3)))
  writer = metrics.MetricsWriter(tmp_path, is_writer=True, tensorboard=False)
  assert writer.truncate_after(2) == 1
  writer.write(3, {'loss': 30})
  writer.write(4, {'loss': 40})
  assert [r.step for r in metrics.read_metrics(tmp_path / 'metrics.jsonl')] == [1, 2]
  writer.flush()
  records = metrics.read_metrics(tmp_path / 'metrics.jsonl')
  assert [(r.step, r.scalars['loss']) for r in records] == [(1, 1), (2, 2), (3, 30), (4, 40)]
  writer.close()


def test_non_writer_process_writes_nothing(tmp_path):
  with metrics.MetricsWriter(tmp_path / 'out', is_writer=False) as writer:
    assert writer.write(1, {'loss': 1.0}) is None
    assert writer.truncate_after(0) == 0
  assert not (tmp_path / 'out').exists()


def test_to_scalars_rejects_arrays_and_reserved_names():
  assert metrics.to_scalars({'a': jnp.array(2.5), 'b': 3}) == {'a': 2.5, 'b': 3}
  with pytest.raises(ValueError, match="'v'"):
    metrics.to_scalars({'v': jnp.ones(3)})
  with pytest.raises(ValueError, match='reserved'):
    metrics.to_scalars({'step': 1})


def test_read_metrics_names_bad_line(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"step": 1, "wall_time": 0.0, "loss": 1}\nnot json\n')
  with pytest.raises(ValueError, match=r'metrics.jsonl:2'):
    metrics.read_metrics(path)


class FakeClock:
  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def test_progress_lines_report_rate_elapsed_and_eta():
  clock = FakeClock()
  stream = io.StringIO()
  progress = metrics.ProgressPrinter(100, keys=('loss', 'acc'), stream=stream, enabled=True,
                                     clock=clock)
  progress.start(0)
  clock.now += 30.0  # first interval includes compilation: 10 steps in 30 s
  line1 = progress.update(10, {'loss': 0.5, 'acc': 0.25, 'other': 1.0})
  clock.now += 5.0  # then 10 steps in 5 s
  line2 = progress.update(20, {'loss': 0.25})
  clock.now += 5.0
  line3 = progress.update(30, {'loss': 0.125})
  assert line1 == ('step  10/100 (10%) | loss 0.5 | acc 0.25 | 0.333 steps/s | elapsed 0:00:30 '
                   '| eta 0:04:30')
  # ETA from the mean rate since the first line (2 steps/s): 80 steps -> 40 s.
  assert line2 == 'step  20/100 (20%) | loss 0.25 | 2 steps/s | elapsed 0:00:35 | eta 0:00:40'
  assert line3 == 'step  30/100 (30%) | loss 0.125 | 2 steps/s | elapsed 0:00:40 | eta 0:00:35'
  assert stream.getvalue().splitlines() == [line1, line2, line3]


def test_progress_disabled_prints_nothing():
  stream = io.StringIO()
  progress = metrics.ProgressPrinter(10, stream=stream, enabled=False)
  assert progress.update(1, {'loss': 1.0}) is None
  assert stream.getvalue() == ''


def test_format_duration():
  assert metrics.format_duration(3723.4) == '1:02:03'
  assert metrics.format_duration(math.inf) == '--'
  assert metrics.format_duration(math.nan) == '--'
