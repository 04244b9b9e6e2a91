"""Tests for lsc_align.train.loop: batch schedule, NaN guard, exact resume, SIGTERM saves."""
import io
import json
import os
import signal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lsc_align import checkpointing
from lsc_align import training_log as metrics
from lsc_align.train import loop

NUM_EXAMPLES = 40
BATCH_SIZE = 8  # 5 steps per epoch, so 10 steps cross an epoch boundary
TOTAL_STEPS = 10


class TinyMLP(nn.Module):
  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.Dense(1)(nn.relu(nn.Dense(16)(x)))[..., 0]


MODEL = TinyMLP()
TX = optax.adam(3e-2)
_data_rng = np.random.default_rng(0)
INPUTS = _data_rng.normal(size=(NUM_EXAMPLES, 4)).astype(np.float32)
TARGETS = (INPUTS @ np.array([1.0, -2.0, 0.5, 3.0], np.float32)).astype(np.float32)
SCHEDULE = loop.EpochBatchSchedule(NUM_EXAMPLES, BATCH_SIZE, seed=3)


def init_state() -> loop.TrainState:
  params = MODEL.init(jax.random.key(0), jnp.zeros((1, 4)))['params']
  return loop.TrainState.create(params, TX, jax.random.key(42))


def batch_fn(step: int) -> dict[str, np.ndarray]:
  idx = SCHEDULE.batch_indices(step)
  return {'x': INPUTS[idx], 'y': TARGETS[idx]}


def poisoned_batch_fn(bad_step: int):
  def fn(step):
    batch = batch_fn(step)
    if step == bad_step:
      batch['x'] = np.full_like(batch['x'], np.nan)
    return batch
  return fn


@jax.jit
def _train_step(state, batch):
  # Input noise from the state's key, so the key stream must survive a resume too.
  rng, noise_rng = jax.random.split(state.rng)
  x = batch['x'] + 0.1 * jax.random.normal(noise_rng, batch['x'].shape)

  def loss_fn(params):
    return jnp.mean((MODEL.apply({'params': params}, x) - batch['y'])**2)

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  state = state.apply_gradients(grads).replace(rng=rng)
  return state, {'loss': loss, 'grad_norm': optax.global_norm(grads)}


# Donating the state checks that async checkpoint saves are done with the buffers in time.
train_step = jax.jit(_train_step, donate_argnums=0)


def run(run_dir, total_steps=TOTAL_STEPS, resume=False, save_every=4, log_every=2, **kwargs):
  """A run with fresh checkpointer/writer objects, as a new process would create them."""
  ckpt = checkpointing.TrainCheckpointer(run_dir / 'ckpt', save_interval_steps=save_every,
                                         max_to_keep=None)
  writer = metrics.MetricsWriter(run_dir, is_writer=True)
  kwargs.setdefault('batch_fn', batch_fn)
  kwargs.setdefault('host_state_fn', SCHEDULE.host_state)
  kwargs.setdefault('load_host_state', SCHEDULE.check_host_state)
  try:
    result = loop.run_training(
        init_state(), train_step, total_steps=total_steps, checkpointer=ckpt,
        metrics_writer=writer, log_every=log_every, resume=resume,
        progress=metrics.ProgressPrinter(total_steps, stream=io.StringIO(), enabled=True),
        **kwargs)
  finally:
    ckpt.close()
    writer.close()
  return result


def metric_rows(run_dir) -> dict[int, dict]:
  rows = [json.loads(line) for line in (run_dir / 'metrics.jsonl').read_text().splitlines()]
  steps = [r['step'] for r in rows]
  assert len(steps) == len(set(steps)), f'duplicate steps in metrics.jsonl: {steps}'
  for r in rows:
    del r['wall_time']  # the only field allowed to differ between runs
  return {r.pop('step'): r for r in rows}


def params_of(state):
  return [np.asarray(x) for x in jax.tree.leaves(state.params)]


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """The uninterrupted 10-step run."""
  run_dir = tmp_path_factory.mktemp('reference')
  result = run(run_dir)
  assert result.status is loop.TrainStatus.COMPLETED and result.step == TOTAL_STEPS
  return result, metric_rows(run_dir)


def assert_same_as_reference(result, run_dir, reference, from_step):
  ref_result, ref_rows = reference
  assert result.step == TOTAL_STEPS
  for got, want in zip(params_of(result.state), params_of(ref_result.state)):
    np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(jax.random.key_data(result.state.rng),
                                jax.random.key_data(ref_result.state.rng))
  rows = metric_rows(run_dir)
  assert sorted(rows) == list(range(1, TOTAL_STEPS + 1))
  for step in range(from_step, TOTAL_STEPS + 1):
    assert rows[step] == ref_rows[step], step


def test_schedule_is_a_seeded_permutation_per_epoch():
  epoch0 = np.concatenate([SCHEDULE.batch_indices(s) for s in range(1, 6)])
  epoch1 = np.concatenate([SCHEDULE.batch_indices(s) for s in range(6, 11)])
  assert sorted(epoch0) == list(range(NUM_EXAMPLES)) == sorted(epoch1)
  assert not np.array_equal(epoch0, epoch1)
  np.testing.assert_array_equal(epoch0, np.random.default_rng([3, 0]).permutation(NUM_EXAMPLES))
  other_seed = loop.EpochBatchSchedule(NUM_EXAMPLES, BATCH_SIZE, seed=4)
  assert not np.array_equal(other_seed.batch_indices(1), SCHEDULE.batch_indices(1))
  # Uneven sizes drop the remainder of each epoch.
  uneven = loop.EpochBatchSchedule(10, 4, seed=0)
  assert uneven.steps_per_epoch == 2
  assert set(uneven.batch_indices(3)) <= set(range(10))


def test_schedule_resumes_identically_from_the_step_alone():
  uninterrupted = [b for _, b in zip(range(12), SCHEDULE.iterate(0))]
  fresh = loop.EpochBatchSchedule(NUM_EXAMPLES, BATCH_SIZE, seed=3)  # a new object, as on resume
  resumed = [b for _, b in zip(range(5), fresh.iterate(7))]
  for got, want in zip(resumed, uninterrupted[7:]):
    np.testing.assert_array_equal(got, want)
  assert fresh.position(7) == loop.DataPosition(epoch=1, data_position=16)
  assert fresh.host_state(7) == {'epoch': 1, 'data_position': 16, 'num_examples': 40,
                                 'batch_size': 8, 'seed': 3}
  fresh.check_host_state({'step': 7, **fresh.host_state(7)})
  with pytest.raises(ValueError, match='seed'):
    fresh.check_host_state({'step': 7, **fresh.host_state(7), 'seed': 9})


def test_schedule_shards_split_the_global_batch():
  shards = [SCHEDULE.batch_indices(4, shard_index=i, num_shards=4) for i in range(4)]
  np.testing.assert_array_equal(np.concatenate(shards), SCHEDULE.batch_indices(4))
  with pytest.raises(ValueError, match='cannot take shard 0 of 3'):
    SCHEDULE.batch_indices(4, shard_index=0, num_shards=3)
  with pytest.raises(ValueError, match='steps are numbered from 1, got 0'):
    SCHEDULE.batch_indices(0)
  with pytest.raises(ValueError, match='need 1 <= batch_size <= num_examples'):
    loop.EpochBatchSchedule(4, 8)


def test_check_finite_names_step_and_keys():
  loop.check_finite(3, {'loss': 1.0, 'n': 4})
  with pytest.raises(FloatingPointError, match=r'step 12: grad_norm=inf, loss=nan'):
    loop.check_finite(12, {'loss': float('nan'), 'grad_norm': np.float32(np.inf), 'ok': 0.0})


def test_training_reduces_loss_and_writes_metrics(reference, tmp_path):
  result, rows = reference
  assert rows[TOTAL_STEPS]['loss'] < rows[1]['loss']
  assert result.last_metrics == rows[TOTAL_STEPS]
  assert result.exit_code == 0
  assert int(result.state.step) == TOTAL_STEPS


@pytest.mark.parametrize('interruption', ['stop_at_6', 'crash_at_8'])
def test_resume_is_bitwise_exact(reference, tmp_path, interruption):
  if interruption == 'stop_at_6':
    first = run(tmp_path, total_steps=6)
    assert first.step == 6
  else:
    # Checkpoints at 3 and 6; metrics of steps 7 and 8 are written, then the run dies.
    def crash(step, state, step_metrics):
      if step == 8:
        raise RuntimeError('simulated crash')
    with pytest.raises(RuntimeError, match='simulated crash'):
      run(tmp_path, save_every=3, step_callback=crash)
    assert max(json.loads(l)['step'] for l in open(tmp_path / 'metrics.jsonl')) == 8
  assert checkpointing.TrainCheckpointer(tmp_path / 'ckpt').latest_step() == 6
  resumed = run(tmp_path, resume=True)
  assert resumed.start_step == 6
  assert_same_as_reference(resumed, tmp_path, reference, from_step=7)


def test_nan_guard_raises_and_keeps_last_good_checkpoint(tmp_path):
  # Saves (2, 4, 6, 8) off the log steps (5, 10): the guard must run before every save.
  with pytest.raises(FloatingPointError, match=r'step 7: .*loss=nan'):
    run(tmp_path, save_every=2, log_every=5, batch_fn=poisoned_batch_fn(7))
  ckpt = checkpointing.TrainCheckpointer(tmp_path / 'ckpt')
  assert ckpt.all_steps() == [2, 4, 6]
  state, host = ckpt.restore(init_state())
  assert host['step'] == 6 and int(state.step) == 6
  assert all(np.isfinite(p).all() for p in params_of(state))
  assert sorted(metric_rows(tmp_path)) == [1, 2, 3, 4, 5, 6]


def test_sigterm_saves_at_step_boundary_and_resumes_exactly(reference, tmp_path):
  handler_before = signal.getsignal(signal.SIGTERM)

  def preempt(step, state, step_metrics):
    if step == 5:
      os.kill(os.getpid(), signal.SIGTERM)

  first = run(tmp_path, step_callback=preempt)
  assert first.status is loop.TrainStatus.PREEMPTED
  assert first.exit_code == loop.EXIT_CODE_PREEMPTED
  assert first.step == 5
  assert signal.getsignal(signal.SIGTERM) is handler_before
  assert checkpointing.TrainCheckpointer(tmp_path / 'ckpt').all_steps() == [4, 5]
  resumed = run(tmp_path, resume=True)
  assert resumed.status is loop.TrainStatus.COMPLETED
  assert_same_as_reference(resumed, tmp_path, reference, from_step=1)


def test_fresh_run_refuses_existing_checkpoints(tmp_path):
  run(tmp_path, total_steps=4)
  with pytest.raises(ValueError, match='already has checkpoints'):
    run(tmp_path, total_steps=6)
  # Resuming past the end does nothing.
  done = run(tmp_path, total_steps=4, resume=True)
  assert done.step == 4 and done.start_step == 4


def test_resume_with_changed_schedule_is_refused(tmp_path):
  run(tmp_path, total_steps=4)
  other = loop.EpochBatchSchedule(NUM_EXAMPLES, 4, seed=3)
  with pytest.raises(ValueError, match='batch_size'):
    run(tmp_path, resume=True, load_host_state=other.check_host_state)
