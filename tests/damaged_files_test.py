"""Damaged files are one-line errors naming the file; a damaged checkpoint falls back to an older one."""
import os

import jax.numpy as jnp
import numpy as np
import pytest

from lsc_align import checkpointing
from lsc_align import io_utils


def test_truncated_npz_names_the_file_and_what_to_do(tmp_path):
  path = tmp_path / 'eval.npz'
  io_utils.atomic_save_npz(path, {'pool_responses': np.arange(1000)})
  path.write_bytes(path.read_bytes()[:300])
  with pytest.raises(io_utils.DamagedFileError,
                     match=rf'{path}: damaged or incomplete .npz .*delete it and rerun'):
    io_utils.load_npz(path)


def test_npz_with_flipped_bytes(tmp_path):
  path = tmp_path / 'eval.npz'
  io_utils.atomic_save_npz(path, {'a': np.arange(1000, dtype=np.int64)})
  data = bytearray(path.read_bytes())
  data[100:140] = b'\xff' * 40
  path.write_bytes(bytes(data))
  with pytest.raises(io_utils.DamagedFileError, match=str(path)):
    io_utils.load_npz(path)


def test_npz_missing_required_arrays(tmp_path):
  path = tmp_path / 'pool.npz'
  io_utils.atomic_save_npz(path, {'prompt_ids': np.zeros(3)})
  assert set(io_utils.load_npz(path, required=('prompt_ids',))) == {'prompt_ids'}
  with pytest.raises(io_utils.DamagedFileError,
                     match=r'pool.npz: missing array\(s\) pool_responses, rewards'):
    io_utils.load_npz(path, required=('pool_responses', 'rewards', 'prompt_ids'))


def test_missing_npz_stays_file_not_found(tmp_path):
  with pytest.raises(FileNotFoundError):
    io_utils.load_npz(tmp_path / 'nothing.npz')


def test_malformed_json_names_file_line_and_column(tmp_path):
  path = tmp_path / 'run.json'
  path.write_text('{\n  "hp": {\n    "lr": 1e-3,\n  }\n}\n')
  with pytest.raises(io_utils.DamagedFileError, match=rf'{path}:4:3: not valid JSON'):
    io_utils.read_json(path)


def test_json_missing_keys_and_wrong_type(tmp_path):
  path = tmp_path / 'reward_model.json'
  path.write_text('{"property": "helpful"}')
  with pytest.raises(io_utils.DamagedFileError, match=r'reward_model.json: missing key\(s\) '
                     r'config'):
    io_utils.read_json(path, required=('config', 'property'))
  path.write_text('[1, 2]')
  with pytest.raises(io_utils.DamagedFileError, match='expected a JSON object, got list'):
    io_utils.read_json(path, required=('config',))
  path.write_bytes(b'\xff\xfe{')
  with pytest.raises(io_utils.DamagedFileError, match='not UTF-8'):
    io_utils.read_json(path)


def _damage(step_dir):
  """Truncates every array file of a checkpoint step, as a crash of the disk would."""
  for root, _, files in os.walk(step_dir / 'state'):
    for name in files:
      with open(os.path.join(root, name), 'r+b') as f:
        f.truncate(3)


def _saved_steps(directory, steps):
  ckpt = checkpointing.TrainCheckpointer(directory, save_interval_steps=1, max_to_keep=None)
  for step in steps:
    ckpt.save(step, {'w': jnp.full((4,), float(step))}, {'epoch': 0}, force=True)
  ckpt.wait_until_finished()
  return ckpt


def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
  ckpt = _saved_steps(tmp_path / 'checkpoints', [1, 2, 3])
  _damage(tmp_path / 'checkpoints' / '3')
  template = {'w': jnp.zeros((4,))}
  with caplog.at_level('WARNING'):
    state, host = ckpt.restore(template)
  assert host['step'] == 2 and float(state['w'][0]) == 2.0
  assert 'restored checkpoint 2' in caplog.text and 'newer 3 could not be read' in caplog.text
  with pytest.raises(ValueError, match=r'checkpoints/3: damaged checkpoint'):
    ckpt.restore(template, step=3)
  ckpt.close()


def test_every_checkpoint_damaged_is_one_error(tmp_path):
  ckpt = _saved_steps(tmp_path / 'checkpoints', [1, 2])
  for step in (1, 2):
    _damage(tmp_path / 'checkpoints' / str(step))
  with pytest.raises(ValueError, match=r'no readable checkpoint \(steps \[1, 2\] are all '
                     r'damaged\); delete the directory'):
    ckpt.restore({'w': jnp.zeros((4,))})
  ckpt.close()
