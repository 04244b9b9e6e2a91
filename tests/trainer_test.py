"""The trainer skeleton's checks before a run directory gets anything (lsc_align.train.trainer).

Training itself through the skeleton is tested by the reward-model and SFT trainer tests (end to
end, exact resume after SIGTERM and after a crash).
"""
import json

import pytest

from lsc_align.train import trainer

GOOD = {'chosen': '\n\nHuman: Hi?\n\nAssistant: Hello there.',
        'rejected': '\n\nHuman: Hi?\n\nAssistant: Go away.'}
ARGS = dict(steps=3, batch_size=8, learning_rate=1e-3, warmup_steps=0, schedule='constant',
            weight_decay=0.0, grad_clip_norm=1.0, eval_every=0, eval_batch_size=8, log_every=1,
            checkpoint_every=2, seed=0, mesh_shape=(-1, 1), resume=False)


def _hh(root, body: bytes):
  (root / 'helpful-base').mkdir(parents=True)
  (root / 'helpful-base' / 'test.jsonl').write_bytes(body)
  return str(root)


def test_settings_come_from_the_trainers_arguments():
  settings = trainer.Settings.of('train_x', {**ARGS, 'unrelated': 1})
  assert settings.function == 'train_x' and settings.steps == 3 and settings.mesh_shape == (-1, 1)
  with pytest.raises(KeyError, match='resume'):
    trainer.Settings.of('train_x', {k: v for k, v in ARGS.items() if k != 'resume'})


def test_bad_data_leaves_no_run_directory(tmp_path):
  data = _hh(tmp_path / 'hh', (json.dumps(GOOD) + '\n').encode() * 2 + b'{oops\n')
  settings = trainer.Settings.of('train_x', ARGS)
  with pytest.raises(ValueError, match='test.jsonl:3: not JSON'):
    trainer.prepare_run_dir(settings, str(tmp_path / 'run'), 'final.msgpack', data, ['sft'],
                            'validation', lenient=False)
  assert not (tmp_path / 'run').exists()


def test_lenient_lists_what_it_skipped_in_the_run_directory(tmp_path, capsys):
  data = _hh(tmp_path / 'hh', (json.dumps(GOOD) + '\n').encode() * 2 + b'{oops\n')
  settings = trainer.Settings.of('train_x', ARGS)
  trainer.prepare_run_dir(settings, str(tmp_path / 'run'), 'final.msgpack', data, ['sft'],
                          'validation', lenient=True)
  skipped = json.loads((tmp_path / 'run' / 'skipped_lines.json').read_text())
  assert [(s['line'], s['reason']) for s in skipped['skipped']] == [
      (3, 'not JSON (Expecting property name enclosed in double quotes at column 2)')]
  assert 'skipped 1 bad lines of 3' in capsys.readouterr().out


def test_batch_sizes_must_split_over_the_mesh(tmp_path):
  settings = trainer.Settings.of('train_x', {**ARGS, 'batch_size': 12})  # 8 fake devices
  with pytest.raises(ValueError, match='train_x.batch_size = 12'):
    trainer.prepare_run_dir(settings, str(tmp_path / 'run'), 'final.msgpack', str(tmp_path),
                            ['sft'], 'validation', lenient=False)


def test_a_finished_run_needs_resume(tmp_path):
  (tmp_path / 'run').mkdir()
  (tmp_path / 'run' / 'final.msgpack').write_bytes(b'')
  settings = trainer.Settings.of('train_x', ARGS)
  with pytest.raises(ValueError, match='already holds a finished run'):
    trainer.prepare_run_dir(settings, str(tmp_path / 'run'), 'final.msgpack', str(tmp_path),
                            ['sft'], 'validation', lenient=False)
