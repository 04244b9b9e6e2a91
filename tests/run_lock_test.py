"""RunLock: one process per directory, stale locks taken over, re-entrant in one process."""
import json
import os
import socket
import subprocess
import sys

import pytest

from lsc_align import run_lock


def _hold_in_child(directory, seconds=30):
  """A child process that takes the lock and sleeps; returns it once the lock exists."""
  code = ('import sys, time; from lsc_align import run_lock\n'
          f'with run_lock.RunLock({str(directory)!r}, "child"):\n'
          '  print("held", flush=True); time.sleep(%d)\n' % seconds)
  child = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, text=True)
  assert child.stdout.readline().strip() == 'held'
  return child


def test_second_process_is_refused_and_changes_nothing(tmp_path):
  child = _hold_in_child(tmp_path)
  try:
    before = (tmp_path / run_lock.LOCK_FILE).read_text()
    with pytest.raises(run_lock.RunLockedError, match=r'in use by child \(pid \d+ on '):
      run_lock.RunLock(tmp_path, 'ppo').acquire()
    assert (tmp_path / run_lock.LOCK_FILE).read_text() == before
  finally:
    child.kill()
    child.wait()


def test_lock_is_released_on_exit_and_on_error(tmp_path):
  with run_lock.RunLock(tmp_path, 'sft'):
    info = run_lock.read_lock(tmp_path)
    assert info['holder'] == 'sft' and info['pid'] == os.getpid()
    assert info['host'] == socket.gethostname()
  assert run_lock.read_lock(tmp_path) is None
  with pytest.raises(KeyError):
    with run_lock.RunLock(tmp_path, 'sft'):
      raise KeyError('boom')
  assert run_lock.read_lock(tmp_path) is None


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
  child = _hold_in_child(tmp_path)
  child.kill()  # dies holding the lock: the file stays behind
  child.wait()
  assert run_lock.read_lock(tmp_path)['holder'] == 'child'
  with caplog.at_level('WARNING'):
    with run_lock.RunLock(tmp_path, 'ppo') as lock:
      assert run_lock.read_lock(tmp_path)['holder'] == 'ppo'
      assert lock.took_over['holder'] == 'child'
  assert 'took over a stale lock of child' in caplog.text


def test_reused_pid_and_unreadable_lock_are_stale(tmp_path):
  # Our own pid, but "started" long before this process began: the pid was reused.
  (tmp_path / run_lock.LOCK_FILE).write_text(json.dumps({
      'holder': 'old', 'host': socket.gethostname(), 'pid': os.getpid(), 'started': 'then',
      'started_unix': 1.0}))
  with run_lock.RunLock(tmp_path, 'new') as lock:
    assert lock.took_over['holder'] == 'old'
  lock_file = tmp_path / run_lock.LOCK_FILE
  lock_file.write_text('{not json')  # maybe being written this instant: not taken yet
  with pytest.raises(run_lock.RunLockedError):
    run_lock.RunLock(tmp_path, 'new').acquire()
  os.utime(lock_file, (1.0, 1.0))  # an old unreadable lock is stale
  with run_lock.RunLock(tmp_path, 'new') as lock:
    assert lock.took_over == {}


def test_lock_of_another_host_is_not_taken(tmp_path):
  (tmp_path / run_lock.LOCK_FILE).write_text(json.dumps({
      'holder': 'ppo', 'host': 'another-host', 'pid': 1, 'started': 'then'}))
  with pytest.raises(run_lock.RunLockedError, match='if that process is gone, delete'):
    run_lock.RunLock(tmp_path, 'ppo').acquire()


def test_reentrant_within_one_process(tmp_path):
  with run_lock.RunLock(tmp_path, 'sweep'):
    with run_lock.RunLock(tmp_path, 'ppo'):
      assert run_lock.read_lock(tmp_path)['holder'] == 'sweep'
    assert run_lock.read_lock(tmp_path)['holder'] == 'sweep'  # still held by the outer one
  assert run_lock.read_lock(tmp_path) is None
