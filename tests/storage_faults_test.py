"""Storage faults end a write promptly with an OSError naming the path, and leave nothing behind.

A full disk is a real 64 KiB tmpfs where this process may mount one (root on Linux, as here and
in CI), else those tests are skipped; a read-only directory and a too-long path need no mount.
"""
import errno
import os
import subprocess
import time

import jax.numpy as jnp
import numpy as np
import pytest

from lsc_align import checkpointing
from lsc_align import io_utils
from lsc_align import training_log


@pytest.fixture
def full_dir(tmp_path):
  """A directory on a tmpfs that is already full."""
  mount_point = tmp_path / 'small'
  mount_point.mkdir()
  if os.geteuid() != 0 or subprocess.run(
      ['mount', '-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', str(mount_point)],
      capture_output=True, check=False).returncode:
    pytest.skip('cannot mount a tmpfs here')
  try:
    with open(mount_point / 'filler', 'wb') as f:
      try:
        f.write(b'x' * (128 << 10))
        f.flush()
      except OSError:
        pass
    yield mount_point
  finally:
    subprocess.run(['umount', '-l', str(mount_point)], check=False)


def test_atomic_write_on_full_disk_names_the_path_and_keeps_the_old_file(full_dir):
  target = full_dir / 'results.json'
  os.unlink(full_dir / 'filler')
  io_utils.atomic_write_json(target, {'kept': True})
  with open(full_dir / 'filler', 'wb') as f:
    try:
      f.write(b'x' * (128 << 10))
    except OSError:
      pass
  with pytest.raises(OSError) as info:
    io_utils.atomic_write_bytes(target, b'y' * (64 << 10))
  assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
  assert io_utils.read_json(target) == {'kept': True}
  assert sorted(os.listdir(full_dir)) == ['filler', 'results.json']  # no temporary file


def test_metrics_on_full_disk_raise_in_the_caller(full_dir):
  writer = training_log.MetricsWriter(full_dir / 'run', tensorboard=False)
  with pytest.raises(OSError) as info:
    for step in range(1, 200):
      writer.write(step, {'loss': 1.0})
  assert info.value.errno == errno.ENOSPC


def test_tensorboard_events_on_full_disk_raise_instead_of_hanging(tmp_path, full_dir):
  log = training_log.EventLog(tmp_path)  # opened where there is space ...
  log._writer._py_recordio_writer._writer.close()  # pylint: disable=protected-access
  log._writer._py_recordio_writer._writer = open(  # pylint: disable=protected-access
      full_dir / 'events', 'wb', buffering=0)  # ... and now writing where there is none
  start = time.monotonic()
  with pytest.raises(OSError) as info:
    for step in range(1, 2000):
      log.add_scalars(step, {'loss': 1.0, 'kl': 2.0}, wall_time=0.0)
  assert info.value.errno == errno.ENOSPC and time.monotonic() - start < 5


def test_checkpoint_on_full_disk_raises_promptly_and_leaves_no_temporary(full_dir):
  ckpt = checkpointing.TrainCheckpointer(full_dir / 'checkpoints', save_interval_steps=1)
  start = time.monotonic()
  with pytest.raises(OSError) as info:
    ckpt.save(1, {'w': jnp.ones((64, 1024))}, {}, force=True)
    ckpt.wait_until_finished()
  assert info.value.errno == errno.ENOSPC
  assert str(full_dir / 'checkpoints') in str(info.value)
  assert time.monotonic() - start < 30
  assert not [n for n in os.listdir(full_dir / 'checkpoints') if 'tmp' in n]
  ckpt.close()  # closing after the fault neither hangs nor raises again


def test_read_only_directory(tmp_path):
  if os.geteuid() == 0:  # root writes anywhere; a read-only bind of tmpfs stands in
    ro = tmp_path / 'ro'
    ro.mkdir()
    if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'ro,size=16k', 'tmpfs', str(ro)],
                      capture_output=True, check=False).returncode:
      pytest.skip('cannot mount a read-only tmpfs here')
  else:
    ro = tmp_path / 'ro'
    ro.mkdir(mode=0o555)
  try:
    with pytest.raises(OSError) as info:
      io_utils.atomic_write_json(ro / 'run.json', {})
    assert info.value.errno in (errno.EROFS, errno.EACCES)
    assert io_utils.is_storage_error(info.value)
    assert str(ro) in io_utils.storage_error_message(info.value)
  finally:
    subprocess.run(['umount', '-l', str(ro)], check=False, capture_output=True)


def test_too_long_path_component(tmp_path):
  with pytest.raises(OSError) as info:
    io_utils.atomic_write_json(tmp_path / ('x' * 300) / 'run.json', {})
  assert info.value.errno == errno.ENAMETOOLONG and io_utils.is_storage_error(info.value)
  assert 'x' * 300 in io_utils.storage_error_message(info.value)


def test_files_keep_the_umask(tmp_path):
  old = os.umask(0o022)
  try:
    io_utils.atomic_write_text(tmp_path / 'a.txt', 'a')
    os.umask(0o077)
    io_utils.atomic_save_npz(tmp_path / 'b.npz', {'x': np.zeros(2)})
  finally:
    os.umask(old)
  assert (tmp_path / 'a.txt').stat().st_mode & 0o777 == 0o644
  assert (tmp_path / 'b.npz').stat().st_mode & 0o777 == 0o600


def test_cli_reports_a_storage_fault_in_one_line(tmp_path, capsys):
  from lsc_align import cli  # pylint: disable=g-import-not-at-top
  fault = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / 'checkpoints'))
  assert cli.is_user_error(fault)
  assert cli.error_message(fault) == f'{tmp_path / "checkpoints"}: No space left on device'
  assert not cli.is_user_error(OSError(errno.EBADF, 'Bad file descriptor'))  # a bug, in full
