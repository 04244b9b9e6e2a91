"""Generic training-loop pieces shared by the reward-model, SFT and PPO trainers.

* ``TrainState``: params, optimizer state, step and RNG key as one PyTree.
* ``EpochBatchSchedule``: which examples form the batch of step s, derived from s alone
  (a seeded permutation per epoch), so resuming needs nothing but the step.
* ``check_finite``: the NaN/Inf guard.
* ``PreemptionGuard``: turns SIGTERM into a flag the loop checks at step boundaries.
* ``run_training``: resume, steps, metrics, progress, periodic/final/preemption saves.

Step numbering: ``step`` counts completed updates. The initial state has step 0; update s
(s = 1..total_steps) uses ``batch_fn(s)``, logs its metrics under s and yields the state saved as
checkpoint s. Resuming from checkpoint s continues with update s + 1.
"""
from __future__ import annotations

import dataclasses
import enum
import functools
import logging
import math
import signal
import threading
import time
from typing import Any, Callable, Generic, Iterator, Mapping, TypeVar

from flax import struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lsc_align import checkpointing
from lsc_align import training_log as metrics_lib

State = TypeVar('State')
Batch = Any

# sysexits.h EX_TEMPFAIL: "temporary failure; the user is invited to retry" (i.e. resubmit).
EXIT_CODE_PREEMPTED = 75


class TrainState(struct.PyTreeNode):
  """Params, optimizer state, completed-step counter and RNG key of one model."""
  step: jax.Array
  params: Any
  opt_state: optax.OptState
  rng: jax.Array
  tx: optax.GradientTransformation = struct.field(pytree_node=False)

  @classmethod
  def create(cls, params: Any, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
    """A step-0 state; ``rng`` may be a typed key (jax.random.key) or a raw uint32 key."""
    return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=rng,
               tx=tx)

  def apply_gradients(self, grads: Any) -> TrainState:
    """One optimizer update; the step counter advances by one."""
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates),
                        opt_state=opt_state)


@dataclasses.dataclass(frozen=True)
class DataPosition:
  """Where the data stream stands after ``step`` completed updates."""
  epoch: int
  data_position: int  # examples of `epoch` already consumed


@dataclasses.dataclass(frozen=True)
class EpochBatchSchedule:
  """Batches of example indices over an in-memory data set, reshuffled every epoch.

  The batch of update s (1-based) is slice ``(s - 1) % steps_per_epoch`` of epoch
  ``(s - 1) // steps_per_epoch``'s permutation, seeded by (seed, epoch). The last
  ``num_examples % batch_size`` examples of each permutation are dropped (fixed batch shape).
  """
  num_examples: int
  batch_size: int
  seed: int = 0

  def __post_init__(self) -> None:
    if self.batch_size < 1 or self.num_examples < self.batch_size:
      raise ValueError(f'need 1 <= batch_size <= num_examples, got batch_size={self.batch_size},'
                       f' num_examples={self.num_examples}')

  @property
  def steps_per_epoch(self) -> int:
    return self.num_examples // self.batch_size

  def permutation(self, epoch: int) -> np.ndarray:
    """The example order of ``epoch``; int64 [num_examples]."""
    return _permutation(self.num_examples, self.seed, epoch)

  def batch_indices(self, step: int, shard_index: int = 0, num_shards: int = 1) -> np.ndarray:
    """Example indices of update ``step`` (>= 1); this shard's contiguous part of the batch.

    With ``num_shards = jax.process_count()`` and ``shard_index = jax.process_index()`` each host
    reads only its part of the global batch.
    """
    if step < 1:
      raise ValueError(f'steps are numbered from 1, got {step}')
    if self.batch_size % num_shards or not 0 <= shard_index < num_shards:
      raise ValueError(f'cannot take shard {shard_index} of {num_shards} of batch_size '
                       f'{self.batch_size}')
    epoch, batch_in_epoch = divmod(step - 1, self.steps_per_epoch)
    per_shard = self.batch_size // num_shards
    start = batch_in_epoch * self.batch_size + shard_index * per_shard
    return self.permutation(epoch)[start:start + per_shard]

  def iterate(self, start_step: int = 0) -> Iterator[np.ndarray]:
    """Endless batches for updates start_step + 1, start_step + 2, ..."""
    step = start_step
    while True:
      step += 1
      yield self.batch_indices(step)

  def position(self, step: int) -> DataPosition:
    """The data position after ``step`` completed updates."""
    epoch, batch_in_epoch = divmod(step, self.steps_per_epoch)
    return DataPosition(epoch=epoch, data_position=batch_in_epoch * self.batch_size)

  def host_state(self, step: int) -> dict[str, int]:
    """JSON-able state saved with checkpoint ``step`` (see ``check_host_state``)."""
    return {**dataclasses.asdict(self.position(step)), 'num_examples': self.num_examples,
            'batch_size': self.batch_size, 'seed': self.seed}

  def check_host_state(self, host_state: Mapping[str, Any]) -> None:
    """Raises ValueError if a checkpoint's data state does not match this schedule.

    Catches resuming with a different data set size, batch size or seed, which would silently
    change the batches.
    """
    expected = self.host_state(int(host_state['step']))
    wrong = {k: (host_state.get(k), v) for k, v in expected.items() if host_state.get(k) != v}
    if wrong:
      raise ValueError('checkpoint data state does not match the batch schedule '
                       f'(saved, now): {wrong}')


@functools.lru_cache(maxsize=2)
def _permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  # One permutation per epoch serves all its steps; read-only because callers share it.
  order = np.random.default_rng([seed, epoch]).permutation(num_examples)
  order.setflags(write=False)
  return order


def check_finite(step: int, scalars: Mapping[str, Any]) -> None:
  """Raises FloatingPointError naming ``step`` and every key whose value is NaN or +-Inf."""
  bad = {k: v for k, v in scalars.items() if not math.isfinite(float(np.asarray(v)))}
  if bad:
    names = ', '.join(f'{k}={float(np.asarray(v))}' for k, v in sorted(bad.items()))
    raise FloatingPointError(f'non-finite metrics at step {step}: {names}')


class PreemptionGuard:
  """Context manager: after SIGTERM, ``should_stop(step)`` is True at the next step boundary.

  Single process: a Python SIGTERM handler sets a flag (installed only in the main thread; the
  previous handler is restored on exit). Multi-process (pods): JAX's preemption service turns
  SIGTERM on any host into one agreed step for all hosts (``reached_preemption_sync_point``), so
  every host saves the same checkpoint; no Python handler is installed then.
  """

  def __init__(self, enabled: bool = True) -> None:
    self.enabled = enabled
    self._flag = threading.Event()
    self._previous_handler: Any = None
    self._installed = False

  def __enter__(self) -> PreemptionGuard:
    if (self.enabled and jax.process_count() == 1 and
        threading.current_thread() is threading.main_thread()):
      self._previous_handler = signal.signal(signal.SIGTERM, self._handle)
      self._installed = True
    return self

  def __exit__(self, *exc_info: Any) -> None:
    if self._installed:
      signal.signal(signal.SIGTERM, self._previous_handler)
      self._installed = False

  def _handle(self, signum: int, frame: Any) -> None:
    del frame
    logging.warning('signal %d received: saving a checkpoint at the next step boundary', signum)
    self._flag.set()

  def should_stop(self, step: int) -> bool:
    if not self.enabled:
      return False
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return multihost_utils.reached_preemption_sync_point(step)
    return self._flag.is_set()


class TrainStatus(enum.Enum):
  COMPLETED = 'completed'
  PREEMPTED = 'preempted'


@dataclasses.dataclass
class TrainResult(Generic[State]):
  """What ``run_training`` ends with."""
  state: State
  step: int  # completed updates
  status: TrainStatus
  start_step: int  # 0, or the checkpoint step resumed from
  last_metrics: dict[str, float | int]

  @property
  def exit_code(self) -> int:
    """0 when finished; EXIT_CODE_PREEMPTED after a preemption save (resubmit with --resume)."""
    return EXIT_CODE_PREEMPTED if self.status is TrainStatus.PREEMPTED else 0


class Preempted(Exception):
  """A stage stopped on SIGTERM after saving a checkpoint; re-run the command to resume."""
  exit_code = EXIT_CODE_PREEMPTED  # the CLI exits with it


def check_completed(result: Any, run_dir: str) -> None:
  """Raises Preempted unless `result` (a TrainResult or None) finished its run."""
  if result is None or getattr(result, 'exit_code', 0):
    raise Preempted(f'{run_dir}: stopped after a preemption save; re-run to resume')


def run_training(
    state: State,
    train_step: Callable[[State, Batch], tuple[State, Mapping[str, Any]]],
    batch_fn: Callable[[int], Batch],
    *,
    total_steps: int,
    checkpointer: checkpointing.TrainCheckpointer | None = None,
    metrics_writer: metrics_lib.MetricsWriter | None = None,
    log_every: int = 10,
    resume: bool = False,
    progress: metrics_lib.ProgressPrinter | None = None,
    host_state_fn: Callable[[int], Mapping[str, Any]] | None = None,
    load_host_state: Callable[[Mapping[str, Any]], None] | None = None,
    step_callback: Callable[[int, State, Mapping[str, Any]], None] | None = None,
    handle_sigterm: bool = True,
) -> TrainResult[State]:
  """Runs updates up to ``total_steps`` with resume, metrics, NaN guard and checkpoints.

  Args:
    state: the freshly initialised (possibly sharded) state; with ``resume`` it is also the
      restore template. If it has a ``step`` field, that is the starting step.
    train_step: jitted ``(state, batch) -> (state, metrics)``; metrics are 0-d arrays.
    batch_fn: ``step -> batch`` for update ``step`` (1-based); must depend on the step only.
    total_steps: last update to run.
    checkpointer: saves on its schedule (``save_interval_steps``), at ``total_steps`` and on
      preemption; None disables checkpoints.
    metrics_writer: receives every step's metrics; None disables.
    log_every: a progress line every this many steps (and at the last step).
    resume: restore the latest checkpoint if there is one. Without it an existing checkpoint
      is an error, so a fresh run never mixes with an old one.
    progress: the progress display; default ``ProgressPrinter(total_steps, ('loss',))``.
    host_state_fn: ``step -> dict`` of JSON host state saved with each checkpoint (e.g.
      ``EpochBatchSchedule.host_state``).
    load_host_state: called with the restored JSON dict (e.g. ``check_host_state``).
    step_callback: ``(step, state, metrics)`` after each update (tests, custom hooks).
    handle_sigterm: save and stop with ``TrainStatus.PREEMPTED`` on SIGTERM.

  Returns:
    A TrainResult; ``.exit_code`` is 0 or EXIT_CODE_PREEMPTED.

  Raises:
    FloatingPointError: a metric is NaN/Inf (names the step and key). The bad state is not
      saved; the previous checkpoint stays the latest.
  """
  if log_every < 1:
    raise ValueError(f'log_every must be >= 1, got {log_every}')
  start_step = int(jax.device_get(state.step)) if hasattr(state, 'step') else 0
  if checkpointer is not None:
    latest = checkpointer.latest_step()
    if latest is not None and not resume:
      raise ValueError(f'{checkpointer.directory} already has checkpoints (latest step {latest});'
                       ' resume, or start in a new directory')
    if latest is not None:  # the newest readable checkpoint (a damaged newer one is skipped)
      state, host_state = checkpointer.restore(state)
      start_step = int(host_state['step'])
      if hasattr(state, 'step') and int(jax.device_get(state.step)) != start_step:
        raise ValueError(f'checkpoint {start_step}: state.step {int(state.step)} != '
                         f'{start_step}')
      if load_host_state is not None:
        load_host_state(host_state)
      logging.info('resumed from checkpoint %d in %s', start_step, checkpointer.directory)
  if metrics_writer is not None:
    metrics_writer.truncate_after(start_step)
  if progress is None:
    progress = metrics_lib.ProgressPrinter(total_steps)
  progress.start(start_step)

  status = TrainStatus.COMPLETED
  step = start_step
  last_metrics: dict[str, float | int] = {}
  # (step, device metrics, wall time at dispatch end): not yet checked/written
  pending: list[tuple[int, Mapping[str, Any], float]] = []

  def drain() -> None:
    # One device_get for all pending steps keeps dispatch asynchronous between log points.
    nonlocal last_metrics
    fetched = jax.device_get([m for _, m, _ in pending])
    stamps = [(s, t) for s, _, t in pending]
    pending.clear()
    for (s, t), m in zip(stamps, fetched):
      scalars = metrics_lib.to_scalars(m)
      check_finite(s, scalars)
      if metrics_writer is not None:
        metrics_writer.write(s, scalars, wall_time=t)
      last_metrics = scalars

  with PreemptionGuard(enabled=handle_sigterm) as preemption:
    try:
      for step in range(start_step + 1, total_steps + 1):
        state, step_metrics = train_step(state, batch_fn(step))
        pending.append((step, step_metrics, time.time()))
        if step_callback is not None:
          step_callback(step, state, step_metrics)
        preempted = preemption.should_stop(step)
        is_last = step == total_steps
        save_now = checkpointer is not None and (
            checkpointer.should_save(step) or is_last or preempted)
        log_now = step % log_every == 0 or is_last
        if save_now or log_now or preempted:
          drain()  # the NaN guard runs before any save, so a bad state is never saved
        if log_now:
          progress.update(step, last_metrics)
        if save_now:
          host_state = dict(host_state_fn(step)) if host_state_fn is not None else {}
          checkpointer.save(step, state, host_state, force=True)
          if metrics_writer is not None:
            metrics_writer.flush()
        if preempted:
          logging.warning('preempted: stopped after step %d (checkpoint saved: %s)', step,
                          checkpointer is not None)
          status = TrainStatus.PREEMPTED
          break
    finally:
      if pending:  # only after an exception in train_step, batch_fn or a callback
        try:
          drain()  # the steps before the failure still get their metrics
        except Exception:  # pylint: disable=broad-except  (must not mask the original error)
          logging.exception('could not write the metrics of the steps before the failure')
      if checkpointer is not None:
        checkpointer.wait_until_finished()
      if metrics_writer is not None:
        metrics_writer.flush()
  return TrainResult(state=state, step=step, status=status, start_step=start_step,
                     last_metrics=last_metrics)
