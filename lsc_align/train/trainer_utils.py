"""Pieces shared by the reward-model and SFT trainers: optimizer, sharded state, eval, files.

* ``make_optimizer``: AdamW with linear warm-up to a constant (the paper's schedule) or cosine
  decay, global-norm clipping, weight decay on matrices only.
* ``init_sharded_state``: a ``loop.TrainState`` created directly in its NamedShardings (params
  by the logical-axis rules, optimizer moments like their params, scalars replicated).
* ``batched_apply``: a jitted per-row function over all rows of in-memory arrays, padded to
  whole batches on the mesh.
* ``check_batch_sizes``: batch settings that split over the mesh's data axis, checked up front.
* ``save_params`` / ``load_params``: one msgpack file of numpy arrays, written atomically.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping

from flax import linen as nn
from flax import serialization
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import numpy as np
import optax

from lsc_align import checkpointing
from lsc_align import io_utils
from lsc_align import partitioning
from lsc_align.train import loop
from lsc_align.train.settings import SCHEDULES



def learning_rate_schedule(learning_rate: float, warmup_steps: int, total_steps: int,
                           schedule: str = 'constant') -> optax.Schedule:
  """Linear warm-up from 0 over warmup_steps, then constant or cosine decay to 10%."""
  if schedule not in SCHEDULES:
    raise ValueError(f'schedule {schedule!r} must be one of {SCHEDULES}')
  warmup_steps = max(int(warmup_steps), 0)
  if schedule == 'constant':
    after = optax.constant_schedule(learning_rate)
  else:
    after = optax.cosine_decay_schedule(learning_rate, max(total_steps - warmup_steps, 1),
                                        alpha=0.1)
  if warmup_steps == 0:
    return after
  warmup = optax.linear_schedule(0.0, learning_rate, warmup_steps)
  return optax.join_schedules([warmup, after], [warmup_steps])


def make_optimizer(learning_rate: float, *, warmup_steps: int, total_steps: int,
                   weight_decay: float = 0.0, schedule: str = 'constant',
                   grad_clip_norm: float | None = 1.0, b2: float = 0.999
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(AdamW, its learning-rate schedule); weight decay applies to kernels/embeddings (ndim >= 2)."""
  lr = learning_rate_schedule(learning_rate, warmup_steps, total_steps, schedule)
  adamw = optax.adamw(lr, b2=b2, weight_decay=weight_decay,
                      mask=lambda params: jax.tree.map(lambda p: p.ndim >= 2, params))
  if grad_clip_norm is None:
    return adamw, lr
  return optax.chain(optax.clip_by_global_norm(grad_clip_norm), adamw), lr


def state_shardings(abstract_state: loop.TrainState, boxed_params: Any,
                    mesh: Mesh) -> loop.TrainState:
  """NamedShardings of a TrainState: params by logical axes, optimizer moments like params."""
  param_sh = partitioning.logical_shardings(boxed_params, mesh)
  replicated = partitioning.replicated(mesh)
  opt_sh = optax.tree_map_params(abstract_state.tx, lambda _, sharding: sharding,
                                 abstract_state.opt_state, param_sh,
                                 transform_non_params=lambda _: replicated)
  return abstract_state.replace(step=replicated, params=param_sh, opt_state=opt_sh,
                                rng=replicated)


def init_sharded_state(init_params: Callable[[jax.Array], Any], boxed_params: Any,
                       tx: optax.GradientTransformation, seed: int,
                       mesh: Mesh) -> tuple[loop.TrainState, loop.TrainState]:
  """(state, shardings): a step-0 TrainState built by one jit straight into its shardings.

  Args:
    init_params: rng -> unboxed params (e.g. from a model's init, or loaded weights).
    boxed_params: the abstract params with their logical-axis boxes (jax.eval_shape of init).
    tx: the optimizer.
    seed: params come from key(seed); the state's own rng (dropout etc.) from key(seed + 1).
    mesh: the device mesh.
  """

  def create(seed_key: jax.Array) -> loop.TrainState:
    params_key, state_key = jax.random.split(seed_key)
    return loop.TrainState.create(init_params(params_key), tx, state_key)

  key = jax.random.key(seed)
  abstract = jax.eval_shape(create, key)
  shardings = state_shardings(abstract, boxed_params, mesh)
  with partitioning.activate(mesh):
    state = jax.jit(create, out_shardings=shardings)(key)
  return state, shardings


def place_params(params: Any, shardings: Any) -> Any:
  """Host (numpy) params onto the mesh in the given shardings."""
  return jax.device_put(jax.tree.map(np.asarray, nn.unbox(params)), shardings)


def check_batch_sizes(mesh: Mesh, function: str, **batch_sizes: int) -> None:
  """ValueError naming `function.<name>` unless each size is a positive multiple of 'data'.

  Trainers call it before any work: an eval batch that does not split over the devices would
  otherwise fail only at the first validation, after the training steps before it.
  """
  data = mesh.shape[partitioning.DATA_AXIS]
  for name, size in batch_sizes.items():
    if size < 1 or size % data:
      raise ValueError(f'{function}.{name} = {size} must be a positive multiple of the mesh\'s '
                       f'data axis ({data} devices)')


def check_run_dir(run_dir: str, resume: bool, finished_file: str) -> None:
  """Before anything is written: a run directory that already holds a run needs --resume.

  Raises:
    ValueError: without resume, run_dir holds checkpoints or the finished run's file.
  """
  if resume:
    return
  finished = os.path.join(run_dir, finished_file)
  if io_utils.exists(finished):
    raise ValueError(f'{run_dir} already holds a finished run ({finished_file}); choose a new '
                     'run directory, or delete this one to train again')
  checkpoints = checkpointing.checkpoint_dir(run_dir)
  if io_utils.isdir(checkpoints) and any(n.isdigit() for n in io_utils.listdir(checkpoints)):
    raise ValueError(f'{run_dir} already has checkpoints of a run: add --resume to continue it '
                     '(resume=True), or choose a new run directory')


def batched_apply(fn: Callable[[Mapping[str, jax.Array]], Any],
                  arrays: Mapping[str, np.ndarray], batch_size: int, mesh: Mesh) -> Any:
  """``fn`` (jitted, per-row outputs with a leading batch axis) over all rows, as numpy.

  The last batch is padded with copies of row 0 (real tokens, so nothing degenerate is traced)
  and the padded rows are dropped from the result. ``batch_size`` must divide by the mesh's
  'data' axis.
  """
  num_rows = len(next(iter(arrays.values())))
  outputs = []
  for start in range(0, num_rows, batch_size):
    stop = min(start + batch_size, num_rows)
    batch = {}
    for name, value in arrays.items():
      chunk = value[start:stop]
      if stop - start < batch_size:
        filler = np.repeat(value[:1], batch_size - (stop - start), axis=0)
        chunk = np.concatenate([chunk, filler])
      batch[name] = chunk
    result = jax.device_get(fn(partitioning.shard_batch(batch, mesh)))
    outputs.append(jax.tree.map(lambda x, n=stop - start: np.asarray(x)[:n], result))
  return jax.tree.map(lambda *xs: np.concatenate(xs), *outputs)


def to_host(tree: Any) -> Any:
  """Numpy copies of every leaf (gathers sharded arrays)."""
  return jax.tree.map(np.asarray, jax.device_get(tree))


def save_params(path: str | os.PathLike[str], params: Any) -> None:
  """Params (a nested dict of arrays) as one msgpack file (flax.serialization)."""
  io_utils.atomic_write_bytes(path, serialization.msgpack_serialize(to_host(nn.unbox(params))))


def load_params(path: str | os.PathLike[str]) -> dict[str, Any]:
  """The nested dict of numpy arrays written by save_params."""
  path = os.fspath(path)
  data = io_utils.read_bytes(path)
  try:
    return serialization.msgpack_restore(data)
  except Exception as e:  # msgpack raises several types for a corrupt file
    raise ValueError(f'{path}: not a params msgpack file ({e})') from e


def count_params(params: Any) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nn.unbox(params))))


def as_float_dict(tree: Mapping[str, Any]) -> dict[str, Any]:
  """JSON-friendly copy: numpy scalars to Python numbers."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out[key] = as_float_dict(value)
    elif isinstance(value, (np.generic, jnp.ndarray)):
      out[key] = np.asarray(value).item()
    else:
      out[key] = value
  return out
