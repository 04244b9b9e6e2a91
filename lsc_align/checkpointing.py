"""Train-state checkpoints with Orbax: the array state plus a JSON item of host-side state.

A checkpoint at step N holds two items:

* ``state``: the train state PyTree (e.g. a ``flax.struct.PyTreeNode`` with params, optimizer
  state, step and RNG key), saved with ``StandardSave`` and restored into a template with the
  template's shapes, dtypes and shardings, so a run saved on one mesh restores onto another;
* ``host``: a JSON object with everything that lives on the host, at least ``{"step": N}`` and
  typically the data position (``{"epoch": e, "data_position": k}``), so ``--resume`` continues
  with exactly the batches and RNG stream an uninterrupted run would have used.

RNG keys: typed keys (``jax.random.key``, dtype ``key<impl>``) are saved as they are; Orbax
0.12.8 stores them natively, keeps their sharding and restores their implementation (checked by
tests/checkpointing_test.py). Raw ``uint32`` keys (``jax.random.PRNGKey``) work too. The template
passed to ``restore`` must hold the same kind of key as the saved state.

Directories are ``etils.epath`` paths, so local paths and ``gs://`` buckets go through the same
code. On ``gs://`` Orbax lists checkpoint steps through the Cloud Storage client, so the
``google-cloud-storage`` package must be installed there (checked when the directory is opened).
Saving is asynchronous: ``save`` returns once the arrays are copied off the devices, and
``wait_until_finished`` blocks until the files are committed.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import shutil
from typing import Any, Callable, Mapping, TypeVar

from etils import epath
import jax
import orbax.checkpoint as ocp

State = TypeVar('State')

STATE_ITEM = 'state'
HOST_ITEM = 'host'
# Where a save in progress writes (Orbax renames it to the step's name when committed).
TMP_MARKER = '.orbax-checkpoint-tmp'
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")
_ERRNO_TEXT = {'No space left on device': errno.ENOSPC, 'Read-only file system': errno.EROFS,
               'File name too long': errno.ENAMETOOLONG, 'Permission denied': errno.EACCES,
               'Disk quota exceeded': errno.EDQUOT}


def storage_fault(error: BaseException, where: str) -> OSError | None:
  """The OSError (errno, path) behind an Orbax/tensorstore failure, if it is a storage fault.

  Orbax re-raises tensorstore's write errors as ValueError("RESOURCE_EXHAUSTED: ... No space
  left on device [os_error_code='28']") from its background threads; the CLI reports an OSError
  with an errno in one line, so the fault is translated back.
  """
  seen = set()
  e: BaseException | None = error
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno:
      return OSError(e.errno, os.strerror(e.errno), e.filename or where)
    text = str(e)
    match = _OS_ERROR_CODE.search(text)
    if match:
      code = int(match.group(1))
      return OSError(code, os.strerror(code), where)
    for phrase, code in _ERRNO_TEXT.items():
      if phrase in text:
        return OSError(code, os.strerror(code), where)
    e = e.__cause__ or e.__context__
  return None


def require_gcs_client(directory: str | os.PathLike[str]) -> None:
  """ImportError, up front, when a gs:// directory meets a Python without google-cloud-storage.

  (Orbax imports it lazily to query bucket metadata, which would otherwise fail after setup.)
  """
  if not os.fspath(directory).startswith('gs://'):
    return
  import importlib.util  # pylint: disable=g-import-not-at-top
  try:
    found = importlib.util.find_spec('google.cloud.storage') is not None
  except ModuleNotFoundError:  # no google.cloud namespace at all
    found = False
  if not found:
    raise ImportError(f'checkpoints in {os.fspath(directory)}: Orbax needs the '
                      'google-cloud-storage package for gs:// directories '
                      '(pip install google-cloud-storage on every worker)')


def _first_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return f'{type(error).__name__}: {text[0][:200]}' if text else type(error).__name__


def abstract_like(template: Any) -> Any:
  """ShapeDtypeStructs (with sharding) for each jax.Array leaf; other leaves are kept.

  numpy leaves stay numpy so Orbax restores them as numpy; ShapeDtypeStruct leaves pass through,
  so a template from ``jax.eval_shape`` with shardings attached works as it is.
  """

  def leaf(x: Any) -> Any:
    if isinstance(x, jax.Array):
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    return x

  return jax.tree.map(leaf, template)


# The subdirectory of a run directory that holds its checkpoints (every trainer, PPO / RLOO run
# and the stages that ask whether a run can resume use this name).
CHECKPOINTS_DIR = 'checkpoints'


def checkpoint_dir(run_dir: str | os.PathLike[str]) -> str:
  """Where a run directory's checkpoints live: RUN_DIR/checkpoints."""
  return os.path.join(os.fspath(run_dir), CHECKPOINTS_DIR)


class TrainCheckpointer:
  """A thin wrapper over ``orbax.checkpoint.CheckpointManager`` for one run's checkpoints.

  Example:
    ckpt = TrainCheckpointer(checkpoint_dir(run_dir), save_interval_steps=500, max_to_keep=3)
    if ckpt.latest_step() is not None:
      state, host = ckpt.restore(state)          # state: the freshly initialised (sharded) state
    ...
    ckpt.save(step, state, {'epoch': 0, 'data_position': 17})   # saves when step % 500 == 0
    ckpt.wait_until_finished()
  """

  def __init__(self,
               directory: str | os.PathLike[str],
               *,
               save_interval_steps: int = 1000,
               max_to_keep: int | None = 3,
               async_save: bool = True) -> None:
    """Opens (or creates) a checkpoint directory.

    Args:
      directory: where step sub-directories go; local path or gs:// URL.
      save_interval_steps: ``save`` without ``force`` writes only when step % this == 0.
      max_to_keep: newest checkpoints kept; None keeps all.
      async_save: write files in a background thread after the device-to-host copy.
    """
    if save_interval_steps < 1:
      raise ValueError(f'save_interval_steps must be >= 1, got {save_interval_steps}')
    if max_to_keep is not None and max_to_keep < 1:
      raise ValueError(f'max_to_keep must be >= 1 or None, got {max_to_keep}')
    require_gcs_client(directory)
    # Orbax (tensorstore) needs an absolute path; a user's relative run directory is resolved.
    directory = os.fspath(directory)
    self.directory = epath.Path(directory if '://' in directory else os.path.abspath(directory))
    self.save_interval_steps = save_interval_steps
    self.max_to_keep = max_to_keep
    self._closed = False
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        # The save cadence is decided here (see should_save); Orbax saves whenever asked.
        save_interval_steps=1,
        create=True,
        # A save cut off by preemption leaves a tmp directory; it is not a checkpoint.
        cleanup_tmp_directories=True,
        enable_async_checkpointing=async_save,
    )
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=(STATE_ITEM, HOST_ITEM))

  def should_save(self, step: int) -> bool:
    """True when ``step`` is on the periodic save schedule."""
    return step > 0 and step % self.save_interval_steps == 0

  def save(self,
           step: int,
           state: Any,
           host_state: Mapping[str, Any] | None = None,
           *,
           force: bool = False) -> bool:
    """Saves ``state`` and ``{"step": step, **host_state}`` as checkpoint ``step``.

    Args:
      step: the number of completed train steps the state reflects.
      state: the train state PyTree (every process passes its shards).
      host_state: JSON-serialisable host-side state (data position, counters).
      force: save even if ``step`` is off the periodic schedule (final and preemption saves).

    Returns:
      True if a save was started; False if off schedule or ``step`` is already saved.
    """
    if not (force or self.should_save(step)):
      return False
    if step in self.all_steps():
      return False
    host = {'step': int(step), **dict(host_state or {})}
    if host['step'] != step:
      raise ValueError(f'host_state["step"] = {host["step"]} disagrees with step {step}')
    return self._guard(lambda: self._save(step, state, host))

  def _save(self, step: int, state: Any, host: dict[str, Any]) -> bool:
    self._manager.check_for_errors()  # a failed background save surfaces here, not later
    return self._manager.save(
        step,
        args=ocp.args.Composite(**{
            STATE_ITEM: ocp.args.StandardSave(state),
            HOST_ITEM: ocp.args.JsonSave(host),
        }),
        force=True)

  def _guard(self, fn: Callable[[], Any]) -> Any:
    """Runs an Orbax call; a storage fault becomes an OSError naming the directory, and the
    half-written step directories are removed so no later run trips over them."""
    try:
      return fn()
    except Exception as e:  # pylint: disable=broad-except
      fault = storage_fault(e, os.fspath(self.directory))
      if fault is None:
        raise
      # Stop the background writers before their directories are removed: the run ends here.
      for stop in (self._manager.wait_until_finished, self._manager.close):
        try:
          stop()
        except Exception:  # pylint: disable=broad-except  (the same fault, already reported)
          pass
      self._closed = True
      self.remove_partial_saves()
      raise fault from e

  def remove_partial_saves(self) -> list[str]:
    """Deletes step directories of saves that never committed (local directories only)."""
    directory = os.fspath(self.directory)
    if '://' in directory or not os.path.isdir(directory):
      return []
    removed = []
    for name in os.listdir(directory):
      if TMP_MARKER in name:
        shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
        removed.append(name)
    return removed

  def latest_step(self) -> int | None:
    """The newest committed (or in-flight) checkpoint step, or None if there is none."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """All checkpoint steps present, ascending."""
    return sorted(self._manager.all_steps())

  def restore(self, state_template: State, step: int | None = None) -> tuple[State, dict[str, Any]]:
    """Restores checkpoint ``step`` (default: the newest readable one) into the template.

    Without ``step``, a damaged newest checkpoint (truncated files, a missing item) is skipped
    with a warning naming it, and the next older one is tried, down to the oldest kept.

    Args:
      state_template: a state with the saved tree structure: concrete arrays (e.g. the freshly
        initialised, sharded state) or ``jax.ShapeDtypeStruct`` leaves with shardings. Each
        restored array gets the template leaf's shape, dtype and sharding.
      step: which checkpoint; None means ``latest_step()``.

    Returns:
      (state, host_state) where host_state is the JSON dict saved with it (has "step").

    Raises:
      FileNotFoundError: no checkpoint (at that step) under the directory.
      ValueError: the checkpoint asked for (or every checkpoint) cannot be read.
    """
    if step is not None:
      return self._restore_step(state_template, self._resolve_step(step))
    steps = self.all_steps()
    if not steps:
      raise FileNotFoundError(f'no checkpoint under {self.directory}')
    failures = []
    for candidate in reversed(steps):
      try:
        result = self._restore_step(state_template, candidate)
      except ValueError as e:
        failures.append(candidate)
        logging.warning('checkpoint %s/%d cannot be read (%s); trying an older one',
                        self.directory, candidate, _first_line(e))
        continue
      if failures:
        logging.warning('restored checkpoint %d of %s: the newer %s could not be read',
                        candidate, self.directory, ', '.join(map(str, failures)))
      return result
    raise ValueError(f'{self.directory}: no readable checkpoint (steps {steps} are all damaged);'
                     ' delete the directory to start afresh')

  def _restore_step(self, state_template: State, step: int) -> tuple[State, dict[str, Any]]:
    try:
      restored = self._read(state_template, step)
    except (ValueError, KeyError, OSError, TypeError) as e:
      if isinstance(e, OSError) and storage_fault(e, '') is not None and not isinstance(
          e, FileNotFoundError):
        raise
      raise ValueError(f'{self.directory}/{step}: damaged checkpoint ({_first_line(e)})') from e
    host = dict(restored[HOST_ITEM])
    if host.get('step') != step:
      raise ValueError(f'{self.directory}/{step}: host item has step {host.get("step")}')
    return restored[STATE_ITEM], host

  def _read(self, state_template: State, step: int) -> Any:
    return self._manager.restore(
        step,
        args=ocp.args.Composite(**{
            STATE_ITEM: ocp.args.StandardRestore(abstract_like(state_template)),
            HOST_ITEM: ocp.args.JsonRestore(),
        }))

  def restore_host_state(self, step: int | None = None) -> dict[str, Any]:
    """Only the JSON host item of checkpoint ``step`` (default: latest); no arrays are read."""
    step = self._resolve_step(step)
    restored = self._manager.restore(
        step, args=ocp.args.Composite(**{HOST_ITEM: ocp.args.JsonRestore()}))
    return dict(restored[HOST_ITEM])

  def wait_until_finished(self) -> None:
    """Blocks until every started save is committed; a failed save raises here (OSError for a
    storage fault such as a full disk, naming the directory)."""
    if not self._closed:
      self._guard(self._wait_and_check)

  def _wait_and_check(self) -> None:
    self._manager.wait_until_finished()
    self._manager.check_for_errors()

  def close(self) -> None:
    """Waits for pending saves and releases Orbax's threads (also when a save failed)."""
    if self._closed:
      return
    try:
      self.wait_until_finished()
    finally:
      if not self._closed:
        self._closed = True
        self._manager.close()

  def __enter__(self) -> TrainCheckpointer:
    return self

  def __exit__(self, *exc_info: Any) -> None:
    self.close()

  def _resolve_step(self, step: int | None) -> int:
    if step is None:
      step = self.latest_step()
      if step is None:
        raise FileNotFoundError(f'no checkpoint under {self.directory}')
    elif step not in self.all_steps():
      raise FileNotFoundError(f'no checkpoint for step {step} under {self.directory}')
    return int(step)

