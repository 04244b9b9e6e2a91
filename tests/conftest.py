"""Test session set-up: 8 fake CPU devices, so sharding is tested against 1 device.

XLA_FLAGS must be set before jax is first imported; conftest.py is imported by pytest before any
test module, so every test sees 8 CPU devices and builds 1-device meshes from jax.devices()[:1].
"""
import os
import signal

os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import pathlib  # pylint: disable=g-import-not-at-top
import socket  # pylint: disable=g-import-not-at-top

import pytest  # pylint: disable=g-import-not-at-top

REPO = pathlib.Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / 'shared' / 'data'


@pytest.fixture(scope='session')
def shared_data() -> pathlib.Path:
  """../shared/data, read in place; tests that need it are skipped only if it is truly absent."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f'{SHARED_DATA} not found (it sits beside the repository in CI)')
  return SHARED_DATA




TINY_EXPERIMENT = 'experiments/tiny.gin'  # the demo's stages at toy sizes


def parse_tiny_experiment_gin() -> None:
  """Binds configs/experiments/tiny.gin (what the stage and run functions read as defaults)."""
  from lsc_align import gin_utils  # pylint: disable=g-import-not-at-top
  from lsc_align.pipeline import demo  # pylint: disable=g-import-not-at-top,unused-import
  gin_utils.parse([TINY_EXPERIMENT])


@pytest.fixture
def tiny_gin():
  """The tiny experiment's gin bound for one test, cleared after it."""
  import gin  # pylint: disable=g-import-not-at-top
  parse_tiny_experiment_gin()
  yield
  gin.clear_config()


@pytest.fixture(scope='session')
def tiny_experiment(tmp_path_factory) -> str:
  """A tiny experiment directory: world, reward models, π0 and pools (gin cleared after).

  Shared by the pipeline and notebook tests; tests add their own runs under EXP/runs/.
  """
  import gin  # pylint: disable=g-import-not-at-top
  from lsc_align.pipeline import experiment  # pylint: disable=g-import-not-at-top
  parse_tiny_experiment_gin()
  try:
    exp = experiment.prepare(str(tmp_path_factory.mktemp('tiny_experiment') / 'exp'),
                             log=lambda _: None)
  finally:
    gin.clear_config()
  return exp.root


@pytest.fixture(scope='session')
def reference_experiment(tiny_experiment, tmp_path_factory) -> str:
  """A copy of the tiny experiment with trained predictors (the copy keeps the shared one as
  the other tests expect it)."""
  import shutil  # pylint: disable=g-import-not-at-top
  import gin  # pylint: disable=g-import-not-at-top
  from lsc_align.pipeline import reference_stage  # pylint: disable=g-import-not-at-top
  root = str(tmp_path_factory.mktemp('ref_exp') / 'exp')
  shutil.copytree(tiny_experiment, root, ignore=shutil.ignore_patterns('runs', 'checkpoints'))
  parse_tiny_experiment_gin()
  try:
    reference_stage.prepare_references(root, log=lambda _: None)
  finally:
    gin.clear_config()
  return root


TINY_PPO = {'objective': 'combined_lsc_sum', 'kl_coef': 0.05}


@pytest.fixture(scope='session')
def tiny_ppo_run(tiny_experiment):
  """(run directory, RunResult) of one PPO run on the tiny experiment (TINY_PPO), made once
  for the pipeline and notebook tests."""
  import gin  # pylint: disable=g-import-not-at-top
  from lsc_align.pipeline import experiment, runs  # pylint: disable=g-import-not-at-top
  parse_tiny_experiment_gin()
  run_dir = os.path.join(tiny_experiment, 'runs', 'ppo_combined_lsc_sum_g0.05_s0')
  try:
    result = runs.run_learner(tiny_experiment, experiment.load_objective(TINY_PPO['objective']),
                          kl_coef=TINY_PPO['kl_coef'], run_dir=run_dir)
  finally:
    gin.clear_config()
  return run_dir, result


@pytest.fixture(scope='session', autouse=True)
def compilation_cache(tmp_path_factory):
  """One persistent XLA compilation cache for the whole session.

  Trainers and stages jit fresh closures on every call, and the tiny experiment, the bucket
  test, the HH pipeline and the README's commands build the same programs; with the cache each
  distinct program is compiled once. Subprocesses share it when their environment asks for it
  (worker_env(..., compilation_cache=True)).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental.compilation_cache import compilation_cache as cache  # pylint: disable=all
  directory = str(tmp_path_factory.mktemp('xla_cache'))
  os.environ['JAX_COMPILATION_CACHE_DIR'] = directory
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  jax.config.update('jax_compilation_cache_dir', directory)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  cache.reset_cache()
  yield directory


@pytest.fixture(scope='module')
def tiny_world(tmp_path_factory) -> pathlib.Path:
  """A world written with configs/world/tiny.gin (gin cleared after)."""
  import gin  # pylint: disable=g-import-not-at-top
  from lsc_align import gin_utils  # pylint: disable=g-import-not-at-top
  from lsc_align.world import dataset as world  # pylint: disable=g-import-not-at-top
  out = tmp_path_factory.mktemp('world_tiny')
  try:
    gin_utils.parse(['world/tiny.gin'], finalize=False)
    world.build_world(str(out))
  finally:
    gin.clear_config()
  return out


def free_port() -> int:
  """A free localhost TCP port (for a jax.distributed coordinator)."""
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


CACHE_VARS = ('JAX_COMPILATION_CACHE_DIR', 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS')


def worker_env(devices: int, compilation_cache: bool = False, **extra: str) -> dict[str, str]:
  """Environment of a CPU worker subprocess with `devices` fake devices and no cluster vars.

  The session's compilation cache reaches the worker only when asked: multi-process workers
  (jax.distributed) compile on their own, as they always did.
  """
  env = {k: v for k, v in os.environ.items() if not k.startswith(('LSC_ALIGN_', 'TPU_'))
         and (compilation_cache or k not in CACHE_VARS)}
  env.update(XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}', JAX_PLATFORMS='cpu',
             TF_CPP_MIN_LOG_LEVEL='3', PYTHONUNBUFFERED='1')
  env.update(extra)
  return env


@pytest.fixture
def clean_gin():
  """No gin bindings before or after the test."""
  import gin  # pylint: disable=g-import-not-at-top
  from lsc_align import gin_utils  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  gin_utils.reset_parse_record()
  yield
  gin.clear_config()
  gin_utils.reset_parse_record()


def communicate_all(procs, timeout_s: float) -> list[tuple[int, str]]:
  """(returncode, stdout) of each subprocess; any still running at the end is killed."""
  results = []
  try:
    for p in procs:
      stdout, _ = p.communicate(timeout=timeout_s)
      results.append((p.returncode, stdout))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  return results


def preempt_at(monkeypatch, step: int) -> None:
  """The next loop.run_training gets a real SIGTERM right after update `step`."""
  from lsc_align.train import loop  # pylint: disable=g-import-not-at-top
  original = loop.run_training

  def wrapped(*args, step_callback=None, **kwargs):
    def callback(s, state, metrics):
      if step_callback is not None:
        step_callback(s, state, metrics)
      if s == step:
        os.kill(os.getpid(), signal.SIGTERM)  # handled by loop.PreemptionGuard
    return original(*args, step_callback=callback, **kwargs)

  monkeypatch.setattr(loop, 'run_training', wrapped)
