"""Experiments whose directory is a gs:// URL: every byte goes through etils.epath, none to os.

There is no bucket here, so gs:// is served by a stand-in etils.epath backend that keeps each
object under a local root. Anything that bypassed epath (os.makedirs, open, np.load on the URL
string) would either fail to find what epath wrote or leave a stray ``gs:`` directory in the
working directory; the test checks both. Orbax's own GCS code (TensorStore's gcs driver, bucket
metadata calls) cannot run without a bucket, so only there the URL is mapped to the local root
before it reaches Orbax: what is tested is that our code hands Orbax the URL untouched.
"""
import dataclasses
import json
import os

from etils.epath import backend as epath_backend
from etils.epath import gpath
import numpy as np
import pytest

from lsc_align import io_utils

PREFIX = 'gs://'


@dataclasses.dataclass(eq=False)
class _LocalBucket(epath_backend._OsPathBackend):  # pylint: disable=protected-access
  """gs://bucket/key stored as ROOT/bucket/key."""
  root: str = ''

  def local(self, path) -> str:
    path = os.fspath(path)
    if path.startswith(self.root + os.sep):  # the base class calls its own methods on these
      return path
    assert path.startswith(PREFIX), path
    return os.path.join(self.root, path[len(PREFIX):])

  def url(self, local: str) -> str:
    return PREFIX + os.path.relpath(local, self.root)

  def open(self, path, mode):
    if 'w' in mode or 'a' in mode:  # like gfile: writing creates the object's "directories"
      os.makedirs(os.path.dirname(self.local(path)), exist_ok=True)
    return super().open(self.local(path), mode)

  def exists(self, path):
    return super().exists(self.local(path))

  def isdir(self, path):
    return super().isdir(self.local(path))

  def listdir(self, path):
    return super().listdir(self.local(path))

  def glob(self, path):
    return [self.url(p) for p in super().glob(self.local(path))]

  def walk(self, top, *, top_down=True, on_error=None):
    for root, dirs, files in super().walk(self.local(top), top_down=top_down, on_error=on_error):
      yield self.url(root), dirs, files

  def makedirs(self, path, *, exist_ok=False, mode=None):
    return super().makedirs(self.local(path), exist_ok=exist_ok)

  def mkdir(self, path, *, exist_ok=False, mode=None):
    return super().mkdir(self.local(path), exist_ok=exist_ok)

  def rmtree(self, path):
    return super().rmtree(self.local(path))

  def remove(self, path):
    return super().remove(self.local(path))

  def rename(self, path, dst):
    return super().rename(self.local(path), self.local(dst))

  def replace(self, path, dst):
    return super().replace(self.local(path), self.local(dst))

  def copy(self, path, dst, *, overwrite):
    return super().copy(self.local(path), self.local(dst), overwrite=overwrite)

  def stat(self, path):
    return super().stat(self.local(path))


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  """gs:// served from tmp_path/bucket; the test runs in tmp_path/cwd to catch os-level leaks."""
  store = _LocalBucket(root=str(tmp_path / 'bucket'))
  os.makedirs(store.root)
  real_backend = gpath.PosixGPath._backend  # pylint: disable=protected-access
  monkeypatch.setattr(gpath.PosixGPath, '_backend', property(
      # pylint: disable-next=protected-access
      lambda self: store if self._uri_scheme == 'gs' else real_backend.fget(self)))
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  real_manager = ocp.CheckpointManager

  def manager(directory, *args, **kwargs):
    assert os.fspath(directory).startswith(PREFIX), directory
    return real_manager(store.local(directory), *args, **kwargs)

  monkeypatch.setattr(ocp, 'CheckpointManager', manager)
  from lsc_align import checkpointing  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(checkpointing, 'require_gcs_client', lambda directory: None)
  import tensorboardX.record_writer as record_writer  # pylint: disable=g-import-not-at-top

  class _Factory:

    def open(self, path):
      os.makedirs(os.path.dirname(store.local(path)), exist_ok=True)
      return open(store.local(path), 'wb')  # pylint: disable=consider-using-with

    def directory_check(self, path):
      os.makedirs(store.local(path), exist_ok=True)

  monkeypatch.setitem(record_writer.REGISTERED_FACTORIES, 'gs', _Factory())
  cwd = tmp_path / 'cwd'
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  yield store
  assert not os.listdir(cwd), f'files written outside epath: {os.listdir(cwd)}'


def test_gs_checkpoints_without_the_storage_client_fail_up_front(monkeypatch):
  import importlib.util  # pylint: disable=g-import-not-at-top
  from lsc_align import checkpointing  # pylint: disable=g-import-not-at-top
  checkpointing.require_gcs_client('/local/dir')  # local: no client needed
  monkeypatch.setattr(importlib.util, 'find_spec', lambda name: None)
  with pytest.raises(ImportError, match='gs://b/run/checkpoints: Orbax needs the google-cloud'):
    checkpointing.TrainCheckpointer('gs://b/run/checkpoints')


def test_io_utils_round_trip_on_a_bucket(bucket):
  url = 'gs://b/dir/sub'
  assert io_utils.is_url(url) and io_utils.abspath(url) == url
  assert not io_utils.exists(url)
  io_utils.makedirs(url)
  assert io_utils.isdir(url) and not io_utils.isfile(url)
  io_utils.atomic_write_json(f'{url}/a.json', {'x': 1})
  io_utils.atomic_save_npz(f'{url}/a.npz', {'v': np.arange(3)})
  io_utils.append_jsonl(f'{url}/log.jsonl', {'i': 0})
  io_utils.append_jsonl(f'{url}/log.jsonl', {'i': 1})
  assert json.loads(io_utils.read_text(f'{url}/a.json')) == {'x': 1}
  np.testing.assert_array_equal(io_utils.load_npz(f'{url}/a.npz')['v'], np.arange(3))
  assert io_utils.read_text(f'{url}/log.jsonl').splitlines() == ['{"i": 0}', '{"i": 1}']
  assert io_utils.listdir(url) == ['a.json', 'a.npz', 'log.jsonl']
  size, _ = io_utils.file_signature(f'{url}/a.json')
  assert size == len(io_utils.read_bytes(f'{url}/a.json'))
  assert os.path.exists(os.path.join(bucket.root, 'b', 'dir', 'sub', 'a.json'))


@pytest.mark.slow  # a whole tiny experiment
def test_an_experiment_on_a_bucket_runs_resumes_and_reports(bucket, tiny_gin, monkeypatch):  # pylint: disable=unused-argument
  from lsc_align.eval import report as report_lib  # pylint: disable=g-import-not-at-top
  from lsc_align.eval import results as results_lib  # pylint: disable=g-import-not-at-top
  from lsc_align.pipeline import experiment, runs  # pylint: disable=g-import-not-at-top
  from lsc_align.train import loop  # pylint: disable=g-import-not-at-top
  from lsc_align.pipeline import layout
  exp_dir = 'gs://runs-bucket/exp'
  exp = experiment.prepare(exp_dir, log=lambda _: None)  # world, RMs, π0, pools: all on gs://
  local = bucket.local(exp_dir)
  for name in ('world/world.json', 'rm_helpful/rm_final.msgpack', 'sft/policy_final.msgpack',
               'pools/train.npz', 'pools/eval.npz', 'rm_harmless/metrics.jsonl'):
    assert os.path.exists(os.path.join(local, name)), name
  assert os.listdir(os.path.join(local, 'rm_helpful', 'checkpoints'))
  assert layout.load_npz(exp.pool('eval'))['pool_responses'].shape[:2] == (8, 8)
  before = os.path.getmtime(os.path.join(local, 'pools', 'eval.npz'))
  experiment.prepare(exp_dir, log=lambda _: None)  # every stage is found done on the bucket
  assert os.path.getmtime(os.path.join(local, 'pools', 'eval.npz')) == before

  objective = experiment.load_objective('combined_lsc_sum')
  stop_at = {'step': 2}
  real_should_stop = loop.PreemptionGuard.should_stop
  monkeypatch.setattr(loop.PreemptionGuard, 'should_stop',
                      lambda self, step: step == stop_at['step'] or real_should_stop(self, step))
  run_dir = exp.run('ppo_cut')
  assert runs.run_learner(exp_dir, objective, kl_coef=0.05, run_dir=run_dir) is None  # preempted
  stop_at['step'] = -1
  resumed = runs.run_learner(exp_dir, objective, kl_coef=0.05, run_dir=run_dir, resume=True)
  again = runs.evaluate_run(run_dir)  # from the bucket's checkpoint
  assert again.kl == resumed.kl and again.and_win_rate == resumed.and_win_rate
  assert io_utils.read_text(f'{run_dir}/{runs.SAMPLES_FILE}').count('\n') == 8
  runs.run_best_of_k(exp_dir, experiment.load_objective('combined_lsc_sum_bok'), ks=(1, 4))

  results = results_lib.load_run_results(f'{exp_dir}/runs')
  assert {r.method for r in results} == {'ppo', 'bok'}
  report = report_lib.write_report(f'{exp_dir}/runs', f'{exp_dir}/report')
  assert report == f'{exp_dir}/report/report.md'
  assert 'ppo_cut' in io_utils.read_text(report)
  assert any(f.endswith('.png') for f in os.listdir(os.path.join(local, 'report')))
