"""The one skeleton every supervised trainer runs (reward models, π0, reference predictors).

A trainer says only what differs — its model's parameters, its train step, its training arrays,
its validation — as a `TrainerSpec`; `run` does the rest the same way for all of them:

    optimizer and schedule → sharded state (optionally adjusted, e.g. T5X weights)
    → epoch batch schedule → jitted, donated train step → `session` (operative config, metrics
    writer, Orbax checkpoints) → loop.run_training (resume, preemption, NaN guard, periodic
    validation) → final validation → params file, info JSON, summary JSON, operative config.

The PPO / RLOO runs (lsc_align.pipeline.runs.run_learner) have their own state and iteration but
share `session` and `Session.train`.

`settings.TrainerSettings` holds what the trainers share (gin binds it per trainer, e.g.
`train_reward_model/TrainerSettings.steps`), and `prepare_run_dir` the checks that must come
before a run directory gets anything.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import numpy as np
import optax

from lsc_align import checkpointing
from lsc_align import gin_utils
from lsc_align import io_utils
from lsc_align import partitioning
from lsc_align import training_log
from lsc_align.data import arrays as data_arrays
from lsc_align.train import loop
from lsc_align.train import trainer_utils
from lsc_align.train.settings import TrainerSettings

TrainStep = Callable[[loop.TrainState, Mapping[str, jax.Array]],
                     tuple[loop.TrainState, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class TrainerSpec:
  """What one trainer adds to the skeleton.

  Attributes:
    init_params: key -> unboxed params of a fresh model.
    boxed_params: the abstract params with their logical-axis boxes.
    make_train_step: learning-rate schedule -> (state, batch) -> (state, metrics).
    train_arrays: the training rows, indexed by the epoch schedule.
    evaluate: (params, mesh) -> validation metrics (numbers and small JSON values).
    params_file, info_file, summary_file: names of the run directory's final files.
    progress_keys: train metrics shown on the progress line.
    adjust_state: (state, shardings) -> state after initialisation (e.g. pretrained weights).
    final_extras: (params, mesh) -> more summary entries after the final validation.
  """
  init_params: Callable[[jax.Array], Any]
  boxed_params: Any
  make_train_step: Callable[[optax.Schedule], TrainStep]
  train_arrays: Mapping[str, np.ndarray]
  evaluate: Callable[[Any, Any], dict[str, Any]]
  params_file: str
  info_file: str
  summary_file: str = 'eval.json'
  progress_keys: tuple[str, ...] = ('loss', 'accuracy')
  adjust_state: Callable[[loop.TrainState, loop.TrainState], loop.TrainState] | None = None
  final_extras: Callable[[Any, Any], dict[str, Any]] | None = None


def prepare_run_dir(settings: TrainerSettings, run_dir: str, params_file: str,
                    data_dir: str | None, kinds: Sequence[str] = (), eval_split: str = 'test', *,
                    resume: bool = False, lenient: bool = False) -> Any:
  """Checks that come before a run directory gets anything; returns the mesh.

  A directory that already holds a run needs resume; batch sizes must split over the mesh;
  every line of an HH-layout data_dir is read (strict unless lenient, which lists skipped lines
  in run_dir). A trainer whose data is not HH-layout text (data_dir None) checks it itself.
  """
  trainer_utils.check_run_dir(run_dir, resume, params_file)
  mesh = partitioning.create_mesh(tuple(settings.mesh_shape))
  trainer_utils.check_batch_sizes(mesh, settings.binding, batch_size=settings.batch_size,
                                  eval_batch_size=settings.eval_batch_size)
  if data_dir is not None:
    data_arrays.check_data(data_dir, kinds, ('train', eval_split), lenient=lenient,
                           out_dir=run_dir)
  io_utils.makedirs(run_dir)
  return mesh


@dataclasses.dataclass
class Session:
  """A run directory's live metrics writer and Orbax checkpointer (see `session`)."""
  writer: training_log.MetricsWriter
  checkpointer: checkpointing.TrainCheckpointer

  def train(self, state: Any, train_step: Callable[[Any, Any], tuple[Any, dict[str, Any]]],
            batch_fn: Callable[[int], Any], total_steps: int, *, schedule: loop.EpochBatchSchedule,
            log_every: int, resume: bool, progress_keys: Sequence[str],
            step_callback: Callable[[int, Any, Any], None] | None = None) -> loop.TrainResult:
    """loop.run_training with this session's writer, checkpointer and a progress line; the data
    position is the epoch schedule's (checked on resume)."""
    return loop.run_training(
        state, train_step, batch_fn, total_steps=total_steps, checkpointer=self.checkpointer,
        metrics_writer=self.writer, log_every=log_every, resume=resume,
        progress=training_log.ProgressPrinter(total_steps, tuple(progress_keys)),
        host_state_fn=schedule.host_state, load_host_state=schedule.check_host_state,
        step_callback=step_callback)


@contextlib.contextmanager
def session(run_dir: str, mesh: Any, checkpoint_every: int) -> Iterator[Session]:
  """What every training run holds open: the operative gin config written to run_dir, a
  metrics writer (metrics.jsonl, TensorBoard), Orbax checkpoints under run_dir/checkpoints
  (the latest two kept) and the mesh activated. Trainers and the PPO / RLOO runs share it."""
  writer = training_log.MetricsWriter(run_dir)
  gin_utils.write_operative_config(run_dir)
  checkpointer = checkpointing.TrainCheckpointer(
      checkpointing.checkpoint_dir(run_dir), save_interval_steps=checkpoint_every, max_to_keep=2)
  with partitioning.activate(mesh), checkpointer, writer:
    yield Session(writer, checkpointer)


def _scalars(metrics: Mapping[str, Any]) -> dict[str, Any]:
  return {f'eval/{k}': v for k, v in metrics.items() if isinstance(v, (int, float))}


def run(spec: TrainerSpec, settings: TrainerSettings, run_dir: str, mesh: Any,
        info: Mapping[str, Any], summary: Mapping[str, Any], start_time: float, *,
        resume: bool = False) -> tuple[loop.TrainResult, dict[str, Any] | None]:
  """Trains, validates and writes the run directory; returns (result, summary or None).

  `info` goes into info_file (with the final step) next to the params; `summary` is the start
  of summary_file, completed with the final validation, the last train metrics, the step, the
  resume point, `final_extras` and the seconds since start_time. Nothing final is written after
  a preemption save.
  """
  tx, lr = trainer_utils.make_optimizer(
      settings.learning_rate, warmup_steps=settings.warmup_steps, total_steps=settings.steps,
      weight_decay=settings.weight_decay, schedule=settings.schedule,
      grad_clip_norm=settings.grad_clip_norm)
  state, shardings = trainer_utils.init_sharded_state(spec.init_params, spec.boxed_params, tx,
                                                      settings.seed, mesh)
  if spec.adjust_state is not None:
    state = spec.adjust_state(state, shardings)
  logging.info('%s', partitioning.verify_sharding(state.params, shardings.params, mesh).summary())

  train = spec.train_arrays
  schedule = loop.EpochBatchSchedule(len(next(iter(train.values()))), settings.batch_size,
                                     seed=settings.seed)
  shard, num_shards = jax.process_index(), jax.process_count()

  def batch_fn(step: int) -> dict[str, jax.Array]:
    idx = schedule.batch_indices(step, shard, num_shards)
    return partitioning.shard_batch({k: v[idx] for k, v in train.items()}, mesh)

  train_step = jax.jit(spec.make_train_step(lr),
                       in_shardings=(shardings, partitioning.batch_sharding(mesh)),
                       out_shardings=(shardings, partitioning.replicated(mesh)),
                       donate_argnums=(0,))
  steps = settings.steps

  def step_callback(step: int, state_: loop.TrainState, _: Any) -> None:
    if settings.eval_every and step % settings.eval_every == 0 and step != steps:
      scalars = _scalars(spec.evaluate(state_.params, mesh))
      live.writer.write(step, scalars)
      logging.info('step %d eval: %s', step, scalars)

  info = {**info, 'num_params': trainer_utils.count_params(state.params)}
  extras: dict[str, Any] = {}
  with session(run_dir, mesh, settings.checkpoint_every) as live:
    result = live.train(state, train_step, batch_fn, steps, schedule=schedule,
                        log_every=settings.log_every, resume=resume,
                        progress_keys=spec.progress_keys, step_callback=step_callback)
    if result.status is loop.TrainStatus.COMPLETED:
      final = spec.evaluate(result.state.params, mesh)
      live.writer.write(steps, _scalars(final))
      if spec.final_extras is not None:
        extras = spec.final_extras(result.state.params, mesh)
  if result.status is not loop.TrainStatus.COMPLETED:
    return result, None
  trainer_utils.save_params(os.path.join(run_dir, spec.params_file), result.state.params)
  io_utils.atomic_write_json(os.path.join(run_dir, spec.info_file), {**info, 'step': result.step})
  written = {**summary, 'step': result.step, **final,
             'final_train_metrics': result.last_metrics, 'num_params': info['num_params'],
             'resumed_from_step': result.start_step, **extras,
             'seconds': round(time.time() - start_time, 1)}
  io_utils.atomic_write_json(os.path.join(run_dir, spec.summary_file), written)
  gin_utils.write_operative_config(run_dir)
  return result, written
