"""Multi-host PPO: 2 jax.distributed CPU processes on localhost train like 1 process.

Both runs use 4 CPU devices in all (2 processes x 2 local devices, or 1 process x 4) on the same
('data', 'model') = (4, 1) mesh, the pipeline's default layout: the batch is split over devices
of both processes and the gradient reductions cross them (gloo collectives). Each process of the
cluster feeds only its own prompt rows (`PPOSetup.batch`); the worker is
tests/distributed_ppo_worker.py. The two runs execute at the same time to keep the test short
(most of their time is compilation); a (2, 2) mesh also matches but takes ~25% longer here.
"""
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from conftest import communicate_all, free_port, worker_env  # pylint: disable=g-bad-import-order

pytestmark = pytest.mark.slow  # trains models or runs whole commands

TESTS = pathlib.Path(__file__).resolve().parent
WORKER = TESTS / 'distributed_ppo_worker.py'
STEPS = 3
MESH = '4,1'
# A hang guard, not a budget: a lost peer would otherwise block the collectives for ever.
SUBPROCESS_TIMEOUT_S = 300
# Params and continuous metrics: the same program on the same 4-device mesh; only the
# collectives' transport differs (observed bit-identical, the tolerance leaves room for a
# reduction order that is not). Clip fractions count tokens either side of a threshold.
RTOL, ATOL, FRACTION_ATOL = 1e-4, 1e-5, 0.03


def start_worker(out: pathlib.Path, env: dict[str, str]) -> subprocess.Popen:
  out.mkdir(parents=True, exist_ok=True)
  return subprocess.Popen(
      [sys.executable, str(WORKER), '--out', str(out), '--steps', str(STEPS), '--mesh', MESH],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_all(procs: list[subprocess.Popen]) -> list[tuple[int, str]]:
  """(return code, output) of each process; kills whatever is still running on the way out."""
  return communicate_all(procs, SUBPROCESS_TIMEOUT_S)


def without_gloo_chatter(output: str) -> str:
  return ''.join(line for line in output.splitlines(keepends=True)
                 if not line.startswith('[Gloo]'))[-3000:]


def test_two_cpu_processes_run_ppo_like_one(tmp_path):
  port = free_port()
  cluster = [start_worker(tmp_path / 'two', worker_env(
      2, LSC_ALIGN_COORDINATOR_ADDRESS=f'localhost:{port}', LSC_ALIGN_NUM_PROCESSES='2',
      LSC_ALIGN_PROCESS_ID=str(i), LSC_ALIGN_INIT_TIMEOUT_S='60')) for i in range(2)]
  single = start_worker(tmp_path / 'one', worker_env(4))
  results = wait_all(cluster + [single])
  for code, output in results:
    assert code == 0, without_gloo_chatter(output)

  one = json.loads((tmp_path / 'one' / 'process_0.json').read_text())
  two = [json.loads((tmp_path / 'two' / f'process_{i}.json').read_text()) for i in range(2)]
  assert (one['initialised'], one['process_count'], one['device_count']) == (False, 1, 4)
  for i, info in enumerate(two):
    assert info['initialised'] and info['process_index'] == i
    assert (info['process_count'], info['device_count'], info['local_device_count']) == (2, 4, 2)
    assert info['mesh'] == one['mesh'] == {'data': 4, 'model': 1}
    assert info['step'] == one['step'] == STEPS
    assert info['metrics_replicated']
  # Each process read its own half of every prompt batch, in process order.
  for step in range(STEPS):
    halves = [info['prompt_rows'][step] for info in two]
    assert [len(h) for h in halves] == [8, 8]
    assert halves[0] + halves[1] == one['prompt_rows'][step]
  # π is replicated: every process holds the same parameters, and they trained.
  assert two[0]['param_sum'] == two[1]['param_sum']
  assert two[0]['initial_param_sum'] == one['initial_param_sum']
  assert one['param_sum'] != one['initial_param_sum']

  want_metrics = json.loads((tmp_path / 'one' / 'metrics.json').read_text())
  got_metrics = json.loads((tmp_path / 'two' / 'metrics.json').read_text())
  assert len(got_metrics) == len(want_metrics) == STEPS
  for step, (got, want) in enumerate(zip(got_metrics, want_metrics), start=1):
    assert sorted(got) == sorted(want)
    for name in want:
      atol = FRACTION_ATOL if 'fraction' in name else ATOL
      np.testing.assert_allclose(got[name], want[name], rtol=RTOL, atol=atol,
                                 err_msg=f'step {step} {name}')
  want_params = np.load(tmp_path / 'one' / 'params.npz')
  got_params = np.load(tmp_path / 'two' / 'params.npz')
  assert sorted(got_params.files) == sorted(want_params.files)
  for name in want_params.files:
    np.testing.assert_allclose(got_params[name], want_params[name], rtol=RTOL, atol=ATOL,
                               err_msg=name)
