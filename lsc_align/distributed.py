"""Multi-host start-up and per-process helpers: who initialises, which rows, who writes.

On a TPU pod slice every host runs the same program (`gcloud compute tpus tpu-vm ssh --worker=all`)
and `maybe_initialize()` connects the processes with `jax.distributed.initialize()`; it must run
before any other JAX call (first thing in `main`). The environment decides:

* ``LSC_ALIGN_DISTRIBUTED=auto`` (set by launch/tpu.py on multi-host slices): initialise with
  JAX's own cluster detection (GCE TPU metadata, GKE, Slurm, ...). ``off`` never initialises.
* ``LSC_ALIGN_COORDINATOR_ADDRESS``, ``LSC_ALIGN_NUM_PROCESSES``, ``LSC_ALIGN_PROCESS_ID`` (and
  optionally ``LSC_ALIGN_LOCAL_DEVICE_IDS`` = "0,1"): an explicit cluster, e.g. several CPU
  processes on one machine (tests/distributed_test.py).
* ``TPU_WORKER_HOSTNAMES`` / ``TPU_PROCESS_ADDRESSES`` listing more than one host, or
  ``MEGASCALE_COORDINATOR_ADDRESS`` (multislice): a pod; JAX detects the rest.
  ``CLOUD_TPU_TASK_ID`` alone is not used: single-host VMs set it too, and a worker-0 that skipped
  initialisation would hang the other hosts.

Anything else (one host, a laptop, CI) is a no-op. ``LSC_ALIGN_INIT_TIMEOUT_S`` (default 300)
bounds the wait for the other processes.

Rows: with P processes, process p reads rows ``host_slice(global_batch)`` = the p-th contiguous
block, which is what `partitioning.shard_batch` (``jax.make_array_from_process_local_data``)
expects. Writes: reports and summaries go through ``write_on_main`` so only process 0 writes;
paths may be local or ``gs://`` (``lsc_align.io_utils``).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Any, Callable, Mapping, TypeVar

import jax
import numpy as np

from lsc_align import io_utils

ENV_MODE = 'LSC_ALIGN_DISTRIBUTED'
ENV_COORDINATOR = 'LSC_ALIGN_COORDINATOR_ADDRESS'
ENV_NUM_PROCESSES = 'LSC_ALIGN_NUM_PROCESSES'
ENV_PROCESS_ID = 'LSC_ALIGN_PROCESS_ID'
ENV_LOCAL_DEVICE_IDS = 'LSC_ALIGN_LOCAL_DEVICE_IDS'
ENV_INIT_TIMEOUT = 'LSC_ALIGN_INIT_TIMEOUT_S'

_ON = ('1', 'auto', 'on', 'true', 'yes')
_OFF = ('0', 'off', 'false', 'no')

T = TypeVar('T')


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
  """Arguments for ``jax.distributed.initialize``; None fields are left to JAX's detection."""
  source: str  # the environment variable that asked for a multi-process run
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  local_device_ids: tuple[int, ...] | None = None
  initialization_timeout: int = 300


def _int_var(environ: Mapping[str, str], name: str) -> int:
  try:
    return int(environ[name])
  except ValueError as e:
    raise ValueError(f'{name}={environ[name]!r} is not an integer') from e


def _host_list(value: str | None) -> list[str]:
  return [h for h in (value or '').split(',') if h.strip()]


def detect_cluster(environ: Mapping[str, str] | None = None) -> ClusterSpec | None:
  """The multi-process set-up the environment asks for, or None for a single process.

  Raises:
    ValueError: a variable is malformed, or the explicit LSC_ALIGN_* set is incomplete.
  """
  environ = os.environ if environ is None else environ
  mode = environ.get(ENV_MODE, '').strip().lower()
  if mode in _OFF:
    return None
  if mode and mode not in _ON:
    raise ValueError(f'{ENV_MODE}={environ[ENV_MODE]!r}: expected one of {_ON + _OFF}')
  timeout = _int_var(environ, ENV_INIT_TIMEOUT) if ENV_INIT_TIMEOUT in environ else 300

  explicit = (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID)
  given = [name for name in explicit if environ.get(name)]
  if given:
    missing = [name for name in explicit if name not in given]
    if missing:
      raise ValueError(f'{", ".join(given)} set but {", ".join(missing)} missing; '
                       'an explicit cluster needs all three')
    num_processes = _int_var(environ, ENV_NUM_PROCESSES)
    process_id = _int_var(environ, ENV_PROCESS_ID)
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ValueError(f'{ENV_PROCESS_ID}={process_id} is not in [0, {ENV_NUM_PROCESSES}='
                       f'{num_processes})')
    if num_processes == 1:
      return None
    local_ids = None
    if environ.get(ENV_LOCAL_DEVICE_IDS):
      try:
        local_ids = tuple(int(i) for i in environ[ENV_LOCAL_DEVICE_IDS].split(','))
      except ValueError as e:
        raise ValueError(f'{ENV_LOCAL_DEVICE_IDS}={environ[ENV_LOCAL_DEVICE_IDS]!r} is not a '
                         'comma-separated list of integers') from e
    return ClusterSpec(source=ENV_COORDINATOR, coordinator_address=environ[ENV_COORDINATOR],
                       num_processes=num_processes, process_id=process_id,
                       local_device_ids=local_ids, initialization_timeout=timeout)
  if mode in _ON:
    return ClusterSpec(source=ENV_MODE, initialization_timeout=timeout)
  for name in ('TPU_PROCESS_ADDRESSES', 'TPU_WORKER_HOSTNAMES'):
    if len(_host_list(environ.get(name))) > 1:
      return ClusterSpec(source=name, initialization_timeout=timeout)
  if environ.get('MEGASCALE_COORDINATOR_ADDRESS'):
    return ClusterSpec(source='MEGASCALE_COORDINATOR_ADDRESS', initialization_timeout=timeout)
  return None


def maybe_initialize(environ: Mapping[str, str] | None = None) -> bool:
  """Calls ``jax.distributed.initialize`` when the environment describes a multi-process run.

  Idempotent: a second call (or a call after someone else initialised) does nothing.

  Returns:
    True if this process is part of an initialised multi-process cluster.

  Raises:
    ValueError: malformed environment (see ``detect_cluster``).
    RuntimeError: a multi-process run was asked for after JAX was already used here.
  """
  if jax.distributed.is_initialized():
    return True
  spec = detect_cluster(environ)
  if spec is None:
    return False
  kwargs: dict[str, Any] = {'initialization_timeout': spec.initialization_timeout}
  if spec.coordinator_address is not None:
    kwargs.update(coordinator_address=spec.coordinator_address,
                  num_processes=spec.num_processes, process_id=spec.process_id)
  if spec.local_device_ids is not None:
    kwargs['local_device_ids'] = list(spec.local_device_ids)
  try:
    jax.distributed.initialize(**kwargs)
  except RuntimeError as e:
    raise RuntimeError(f'{spec.source} asks for a multi-process run but jax.distributed could not '
                       f'start ({e}); call maybe_initialize() before any other JAX call') from e
  logging.info('jax.distributed initialised (%s): process %d of %d, %d local / %d global devices',
               spec.source, jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  return True


def is_main_process() -> bool:
  """True on process 0, the one that writes reports and summaries."""
  return jax.process_index() == 0


def host_slice(global_batch_size: int, process_index: int | None = None,
               process_count: int | None = None) -> slice:
  """This process's contiguous block of rows of a global batch (the order shard_batch expects).

  Raises:
    ValueError: the global batch is not divisible by the number of processes.
  """
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  if count < 1 or not 0 <= index < count:
    raise ValueError(f'process index {index} is not in [0, {count})')
  if global_batch_size % count:
    raise ValueError(f'global batch {global_batch_size} is not divisible by {count} processes')
  rows = global_batch_size // count
  return slice(index * rows, (index + 1) * rows)


def on_main_process(fn: Callable[..., T]) -> Callable[..., T | None]:
  """Decorator: ``fn`` runs on process 0 only; other processes get None."""
  @functools.wraps(fn)
  def wrapper(*args: Any, **kwargs: Any) -> T | None:
    return fn(*args, **kwargs) if is_main_process() else None
  return wrapper


def barrier(name: str) -> None:
  """Waits until every process reaches ``name`` (e.g. before reading what process 0 wrote)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def fetch_to_host(tree: Any) -> Any:
  """numpy copies of every jax.Array leaf, also for arrays spread over several processes.

  A collective when some array is sharded across processes: call it on every process.
  """
  def one(x: Any) -> Any:
    if not isinstance(x, jax.Array):
      return x
    if x.is_fully_addressable:
      return np.asarray(x)
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return jax.tree.map(one, tree)


# ---------------------------------------------------------------- writes on process 0

def write_on_main(path: str | os.PathLike[str], text: str) -> bool:
  """Writes ``text`` atomically on process 0 only; returns whether this process wrote."""
  if not is_main_process():
    return False
  io_utils.atomic_write_text(path, text)
  return True
