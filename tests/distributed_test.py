"""Tests for lsc_align.distributed: environment detection, host slices, main-process writes,
a real 2-process jax.distributed run on CPU (gloo collectives) against the 1-process result,
and SIGTERM preemption of a training subprocess followed by an exact resume."""
import importlib.util
import json
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import communicate_all, free_port, worker_env  # pylint: disable=g-bad-import-order

from lsc_align import distributed
from lsc_align.train import loop

TESTS = pathlib.Path(__file__).resolve().parent
WORKER = TESTS / 'distributed_worker.py'
SUBPROCESS_TIMEOUT_S = 90


def load_worker():
  spec = importlib.util.spec_from_file_location('distributed_worker', WORKER)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# ------------------------------------------------------------------ environment detection

def test_single_host_environments_are_no_ops():
  assert distributed.detect_cluster({}) is None
  assert distributed.detect_cluster({'TPU_WORKER_HOSTNAMES': 'localhost'}) is None
  assert distributed.detect_cluster({'CLOUD_TPU_TASK_ID': '0'}) is None
  explicit_one = {'LSC_ALIGN_COORDINATOR_ADDRESS': 'h:1', 'LSC_ALIGN_NUM_PROCESSES': '1',
                  'LSC_ALIGN_PROCESS_ID': '0'}
  assert distributed.detect_cluster(explicit_one) is None
  pod = {'TPU_WORKER_HOSTNAMES': 'a,b,c,d', 'LSC_ALIGN_DISTRIBUTED': 'off'}
  assert distributed.detect_cluster(pod) is None


def test_pod_and_explicit_environments():
  pod = distributed.detect_cluster({'TPU_WORKER_HOSTNAMES': 'w-0,w-1,w-2,w-3'})
  assert pod == distributed.ClusterSpec(source='TPU_WORKER_HOSTNAMES')
  assert distributed.detect_cluster({'MEGASCALE_COORDINATOR_ADDRESS': 'x:8080'}).source == (
      'MEGASCALE_COORDINATOR_ADDRESS')
  auto = distributed.detect_cluster({'LSC_ALIGN_DISTRIBUTED': 'auto',
                                     'LSC_ALIGN_INIT_TIMEOUT_S': '60'})
  assert auto == distributed.ClusterSpec(source='LSC_ALIGN_DISTRIBUTED', initialization_timeout=60)
  explicit = distributed.detect_cluster({
      'LSC_ALIGN_COORDINATOR_ADDRESS': 'localhost:1234', 'LSC_ALIGN_NUM_PROCESSES': '2',
      'LSC_ALIGN_PROCESS_ID': '1', 'LSC_ALIGN_LOCAL_DEVICE_IDS': '0,1'})
  assert explicit == distributed.ClusterSpec(
      source='LSC_ALIGN_COORDINATOR_ADDRESS', coordinator_address='localhost:1234',
      num_processes=2, process_id=1, local_device_ids=(0, 1))


@pytest.mark.parametrize('environ, match', [
    ({'LSC_ALIGN_COORDINATOR_ADDRESS': 'h:1'}, 'LSC_ALIGN_NUM_PROCESSES'),
    ({'LSC_ALIGN_COORDINATOR_ADDRESS': 'h:1', 'LSC_ALIGN_NUM_PROCESSES': 'two',
      'LSC_ALIGN_PROCESS_ID': '0'}, "LSC_ALIGN_NUM_PROCESSES='two'"),
    ({'LSC_ALIGN_COORDINATOR_ADDRESS': 'h:1', 'LSC_ALIGN_NUM_PROCESSES': '2',
      'LSC_ALIGN_PROCESS_ID': '2'}, 'LSC_ALIGN_PROCESS_ID=2'),
    ({'LSC_ALIGN_DISTRIBUTED': 'maybe'}, 'LSC_ALIGN_DISTRIBUTED'),
])
def test_malformed_environment_names_the_variable(environ, match):
  with pytest.raises(ValueError, match=match):
    distributed.detect_cluster(environ)


def test_maybe_initialize_is_driven_by_the_environment_and_idempotent(monkeypatch):
  calls = []
  initialised = [False]

  def fake_initialize(**kwargs):
    calls.append(kwargs)
    initialised[0] = True

  monkeypatch.setattr(jax.distributed, 'initialize', fake_initialize)
  monkeypatch.setattr(jax.distributed, 'is_initialized', lambda: initialised[0])
  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  assert distributed.maybe_initialize({}) is False
  assert not calls
  environ = {'LSC_ALIGN_COORDINATOR_ADDRESS': 'localhost:99', 'LSC_ALIGN_NUM_PROCESSES': '2',
             'LSC_ALIGN_PROCESS_ID': '1'}
  assert distributed.maybe_initialize(environ) is True
  assert distributed.maybe_initialize(environ) is True
  assert calls == [{'coordinator_address': 'localhost:99', 'num_processes': 2, 'process_id': 1,
                    'initialization_timeout': 300}]


def test_auto_mode_leaves_the_cluster_to_jax_detection(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize', lambda **kw: calls.append(kw))
  monkeypatch.setattr(jax.distributed, 'is_initialized', lambda: False)
  assert distributed.maybe_initialize({'LSC_ALIGN_DISTRIBUTED': 'auto'}) is True
  assert calls == [{'initialization_timeout': 300}]


# ------------------------------------------------------------------ rows, writes, paths

def test_host_slices_tile_the_global_batch_in_process_order():
  rows = np.arange(24)
  parts = [rows[distributed.host_slice(24, p, 4)] for p in range(4)]
  np.testing.assert_array_equal(np.concatenate(parts), rows)
  assert [len(p) for p in parts] == [6] * 4
  assert distributed.host_slice(8) == slice(0, 8)  # this test process: 1 of 1
  with pytest.raises(ValueError, match='not divisible by 3'):
    distributed.host_slice(8, 0, 3)
  with pytest.raises(ValueError, match=r'process index 3 is not in \[0, 2\)'):
    distributed.host_slice(8, 3, 2)


def test_only_the_main_process_writes(tmp_path, monkeypatch):
  report = tmp_path / 'sub' / 'report.md'
  assert distributed.is_main_process()
  assert distributed.write_on_main(report, '# ok\n') is True
  assert report.read_text() == '# ok\n'
  assert [p.name for p in report.parent.iterdir()] == ['report.md']  # no temporary left over

  @distributed.on_main_process
  def summarise(x):
    return x + 1

  assert summarise(1) == 2
  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  assert not distributed.is_main_process()
  assert distributed.write_on_main(tmp_path / 'other.md', 'x') is False
  assert not (tmp_path / 'other.md').exists()
  assert summarise(1) is None


def test_fetch_to_host_gathers_sharded_arrays():
  from lsc_align import partitioning  # pylint: disable=g-import-not-at-top
  mesh = partitioning.create_mesh((-1, 1))
  x = np.arange(16, dtype=np.float32).reshape(8, 2)
  tree = {'x': partitioning.shard_batch({'x': x}, mesh)['x'], 'n': 3}
  got = distributed.fetch_to_host(tree)
  assert got['n'] == 3 and isinstance(got['x'], np.ndarray)
  np.testing.assert_array_equal(got['x'], x)


# ------------------------------------------------------------------ real multi-process run

def run_two_processes(out: pathlib.Path, steps: int) -> list[subprocess.CompletedProcess]:
  port = free_port()
  procs = []
  for process_id in range(2):
    env = worker_env(4, LSC_ALIGN_COORDINATOR_ADDRESS=f'localhost:{port}',
                     LSC_ALIGN_NUM_PROCESSES='2', LSC_ALIGN_PROCESS_ID=str(process_id),
                     LSC_ALIGN_INIT_TIMEOUT_S='60')
    procs.append(subprocess.Popen(
        [sys.executable, str(WORKER), 'train', '--out', str(out), '--steps', str(steps)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  return [subprocess.CompletedProcess(p.args, code, out)
          for p, (code, out) in zip(procs, communicate_all(procs, SUBPROCESS_TIMEOUT_S))]


@pytest.mark.slow
def test_two_cpu_processes_train_like_one(tmp_path):
  steps = 4
  results = run_two_processes(tmp_path, steps)
  for r in results:
    assert r.returncode == 0, r.stdout[-3000:]
  infos = [json.loads((tmp_path / f'process_{i}.json').read_text()) for i in range(2)]
  for i, info in enumerate(infos):
    assert info['initialised'] and info['process_index'] == i
    assert (info['process_count'], info['device_count'], info['local_device_count']) == (2, 8, 4)
    assert info['batches_match'], 'the hosts\' slices did not assemble the global batch in order'
  assert [info['wrote_report'] for info in infos] == [True, False]
  assert json.loads((tmp_path / 'report.json').read_text()) == {'writer': 0}
  assert infos[0]['param_sum'] == infos[1]['param_sum']  # replicated state agrees across hosts

  # Reference: one process, the same 8-device data-parallel mesh, the whole batch on one host.
  worker = load_worker()
  state, train_step, batch_fn, _, _ = worker.make_training()
  initial = {k: np.asarray(v) for k, v in _flat(state.params).items()}
  for step in range(1, steps + 1):
    state, _ = train_step(state, batch_fn(step))
  want = _flat(state.params)
  got = np.load(tmp_path / 'params.npz')
  assert sorted(got.files) == sorted(want)
  for name, value in want.items():
    np.testing.assert_allclose(got[name], np.asarray(value), rtol=1e-5, atol=1e-6, err_msg=name)
    assert not np.allclose(got[name], initial[name]), f'{name} did not train'


def _flat(params) -> dict[str, jax.Array]:
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): v
          for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}


# ------------------------------------------------------------------ preemption

def start_preemptible(run_dir: pathlib.Path, steps: int, resume: bool) -> subprocess.Popen:
  argv = [sys.executable, str(WORKER), 'preempt', '--run_dir', str(run_dir), '--steps',
          str(steps), '--step_sleep', '0.3'] + (['--resume'] if resume else [])
  return subprocess.Popen(argv, env=worker_env(1), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def read_until(proc: subprocess.Popen, marker: str, deadline: float) -> list[str]:
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if line.strip() == marker or time.monotonic() > deadline:
      break
  return lines


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_exits_75_and_resume_matches(tmp_path):
  from lsc_align import checkpointing  # pylint: disable=g-import-not-at-top
  steps = 8
  proc = start_preemptible(tmp_path, steps, resume=False)
  try:
    lines = read_until(proc, 'step 2', time.monotonic() + SUBPROCESS_TIMEOUT_S)
    assert lines and lines[-1].strip() == 'step 2', ''.join(lines)[-3000:]
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=SUBPROCESS_TIMEOUT_S)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  output = ''.join(lines) + rest
  assert proc.returncode == loop.EXIT_CODE_PREEMPTED == 75, output[-3000:]
  saved = checkpointing.TrainCheckpointer(tmp_path / 'ckpt').all_steps()
  assert len(saved) == 1 and 2 <= saved[0] < steps, (saved, output[-2000:])
  assert f'finished status=preempted step={saved[0]}' in output
  assert not (tmp_path / 'final_params.npz').exists()

  resumed = start_preemptible(tmp_path, steps, resume=True)
  try:
    out, _ = resumed.communicate(timeout=SUBPROCESS_TIMEOUT_S)
  finally:
    if resumed.poll() is None:
      resumed.kill()
      resumed.wait()
  assert resumed.returncode == 0, out[-3000:]
  assert f'finished status=completed step={steps} start={saved[0]}' in out
  assert f'step {saved[0]}\n' not in out and f'step {saved[0] + 1}\n' in out

  # The uninterrupted run, in this process, with the same model, data and 1-device mesh.
  worker = load_worker()
  state, train_step, batch_fn, _, _ = worker.make_training(jax.devices()[:1])
  result = loop.run_training(state, train_step, batch_fn, total_steps=steps,
                             handle_sigterm=False)
  got = np.load(tmp_path / 'final_params.npz')
  want = [np.asarray(x) for x in jax.tree.leaves(result.state.params)]
  assert len(got.files) == len(want)
  for i, value in enumerate(want):
    np.testing.assert_array_equal(got[f'arr_{i}'], value)
