"""Subprocess side of tests/distributed_test.py: a toy MLP trained data-parallel.

    python tests/distributed_worker.py train --out DIR --steps N
        one process of a cluster described by LSC_ALIGN_* variables (or a single process);
        each process feeds its own rows (distributed.host_slice) to partitioning.shard_batch.
    python tests/distributed_worker.py preempt --run_dir DIR --steps N [--resume]
        run_training with checkpoints; prints "step s" after each update and sleeps, so the
        test can SIGTERM it mid-run; exits with the run's exit code (75 after preemption).

The test process imports this file too, to compute the single-process references with the
very same model, data and step function.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

if __name__ == '__main__':  # the test runs this file directly; make lsc_align importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from lsc_align import distributed  # pylint: disable=g-import-not-at-top
from lsc_align import io_utils  # pylint: disable=g-import-not-at-top

NUM_EXAMPLES = 64
GLOBAL_BATCH = 16
FEATURES = 4


def dataset():
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  inputs = rng.normal(size=(NUM_EXAMPLES, FEATURES)).astype(np.float32)
  targets = np.sin(inputs @ np.array([1.0, -2.0, 0.5, 3.0], np.float32)).astype(np.float32)
  return inputs, targets


def make_training(devices=None):
  """(initial state, jitted train step, step -> this process's batch rows, mesh)."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from lsc_align import partitioning  # pylint: disable=g-import-not-at-top
  from lsc_align.train import loop  # pylint: disable=g-import-not-at-top

  class ToyMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(1)(nn.tanh(nn.Dense(32)(x)))[..., 0]

  model = ToyMLP()
  mesh = partitioning.create_mesh((-1, 1), devices=devices)
  replicated = partitioning.replicated(mesh)

  def init_state():
    params = model.init(jax.random.key(0), jnp.zeros((1, FEATURES)))['params']
    return loop.TrainState.create(params, optax.adam(1e-2), jax.random.key(7))

  # Built inside jit: device_put cannot target devices of other processes.
  state = jax.jit(init_state, out_shardings=replicated)()
  inputs, targets = dataset()
  schedule = loop.EpochBatchSchedule(NUM_EXAMPLES, GLOBAL_BATCH, seed=1)

  def step_fn(state, batch):
    rng, noise_rng = jax.random.split(state.rng)
    x = batch['x'] + 0.05 * jax.random.normal(noise_rng, batch['x'].shape)

    def loss_fn(p):
      return jnp.mean((model.apply({'params': p}, x) - batch['y'])**2)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads).replace(rng=rng), {'loss': loss}

  train_step = jax.jit(step_fn, out_shardings=(replicated, replicated))

  def host_batch(step):
    rows = schedule.batch_indices(step)[distributed.host_slice(GLOBAL_BATCH)]
    return {'x': inputs[rows], 'y': targets[rows]}

  def batch_fn(step):
    return partitioning.shard_batch(host_batch(step), mesh)

  return state, train_step, batch_fn, schedule, mesh


def train(args) -> int:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from lsc_align import partitioning  # pylint: disable=g-import-not-at-top

  initialised = distributed.maybe_initialize()
  assert distributed.maybe_initialize() == initialised  # idempotent
  state, train_step, batch_fn, schedule, mesh = make_training()
  inputs, _ = dataset()
  gather = jax.jit(lambda a: a, out_shardings=partitioning.replicated(mesh))
  batches_match = True
  for step in range(1, args.steps + 1):
    batch = batch_fn(step)
    # The global batch assembled from the hosts' slices must be the schedule's batch, in order.
    global_x = distributed.fetch_to_host(gather(batch['x']))
    batches_match &= bool(np.array_equal(global_x, inputs[schedule.batch_indices(step)]))
    state, _ = train_step(state, batch)
  params = distributed.fetch_to_host(state.params)
  flat = {'/'.join(str(getattr(k, 'key', k)) for k in path): v
          for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  out = pathlib.Path(args.out)
  if distributed.is_main_process():
    np.savez(out / 'params.npz', **flat)
  wrote = distributed.write_on_main(out / 'report.json',
                                    json.dumps({'writer': jax.process_index()}))
  distributed.barrier('worker_done')
  info = {'initialised': initialised, 'process_index': jax.process_index(),
          'process_count': jax.process_count(), 'device_count': jax.device_count(),
          'local_device_count': jax.local_device_count(), 'batches_match': batches_match,
          'wrote_report': wrote, 'param_sum': float(sum(np.sum(v) for v in flat.values()))}
  io_utils.atomic_write_json(out / f'process_{jax.process_index()}.json', info)
  return 0


def preempt(args) -> int:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from lsc_align import checkpointing  # pylint: disable=g-import-not-at-top
  from lsc_align.train import loop  # pylint: disable=g-import-not-at-top

  multi_process = distributed.maybe_initialize()
  # One device alone, or every device of the cluster when several processes train together.
  state, train_step, batch_fn, schedule, _ = make_training(
      None if multi_process else jax.devices()[:1])

  def announce(step, state, metrics):
    print(f'step {step}', flush=True)
    time.sleep(args.step_sleep)  # leaves the test time to send SIGTERM mid-run

  run_dir = pathlib.Path(args.run_dir)
  # A long save interval: the only checkpoints are the preemption save and the final one.
  with checkpointing.TrainCheckpointer(run_dir / 'ckpt', save_interval_steps=1000) as ckpt:
    result = loop.run_training(state, train_step, batch_fn, total_steps=args.steps,
                               checkpointer=ckpt, resume=args.resume, step_callback=announce,
                               host_state_fn=schedule.host_state,
                               load_host_state=schedule.check_host_state)
  print(f'finished status={result.status.value} step={result.step} start={result.start_step}',
        flush=True)
  if result.status is loop.TrainStatus.COMPLETED:
    host = distributed.fetch_to_host(result.state.params)
    leaves = [np.asarray(x) for x in jax.tree.leaves(host)]
    if distributed.is_main_process():
      np.savez(run_dir / 'final_params.npz', *leaves)
  return result.exit_code


def main(argv=None) -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument('mode', choices=('train', 'preempt'))
  parser.add_argument('--out')
  parser.add_argument('--run_dir')
  parser.add_argument('--steps', type=int, default=4)
  parser.add_argument('--resume', action='store_true')
  parser.add_argument('--step_sleep', type=float, default=0.0)
  args = parser.parse_args(argv)
  return train(args) if args.mode == 'train' else preempt(args)


if __name__ == '__main__':
  sys.exit(main())
