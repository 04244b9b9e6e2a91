"""The trainer skeleton's checks before a run directory gets anything (lsc_align.train.trainer),
and the settings every trainer shares (lsc_align.train.settings).

Training itself through the skeleton is tested by the reward-model and SFT trainer tests (end to
end, exact resume after SIGTERM and after a crash).
"""
import json

import gin
import pytest

from lsc_align.train import settings as settings_lib
from lsc_align.train import trainer

GOOD = {'chosen': '\n\nHuman: Hi?\n\nAssistant: Hello there.',
        'rejected': '\n\nHuman: Hi?\n\nAssistant: Go away.'}
ARGS = dict(steps=3, batch_size=8, learning_rate=1e-3, warmup_steps=0, schedule='constant',
            weight_decay=0.0, grad_clip_norm=1.0, eval_every=0, eval_batch_size=8, log_every=1,
            checkpoint_every=2, seed=0, mesh_shape=(-1, 1))


def _hh(root, body: bytes):
  (root / 'helpful-base').mkdir(parents=True)
  (root / 'helpful-base' / 'test.jsonl').write_bytes(body)
  return str(root)


def _scoped(**args) -> settings_lib.TrainerSettings:
  with gin.config_scope('train_x'):
    return settings_lib.TrainerSettings(**{**ARGS, **args})


@pytest.mark.usefixtures('clean_gin')
def test_gin_binds_settings_per_trainer_over_its_defaults():
  gin.parse_config(['train_x/TrainerSettings.steps = 7', 'TrainerSettings.log_every = 3'])
  settings = settings_lib.configured('train_x', {'steps': 2, 'schedule': 'cosine'}, seed=5)
  assert (settings.steps, settings.schedule, settings.log_every, settings.seed) == (7, 'cosine',
                                                                                  3, 5)
  assert settings.binding == 'train_x/TrainerSettings'
  other = settings_lib.configured('train_y')  # class defaults, the unscoped binding
  assert (other.steps, other.schedule, other.log_every) == (1000, 'constant', 3)
  config = gin.operative_config_str()  # what a run's config.gin records: defaults as well
  assert "train_x/TrainerSettings.schedule = 'cosine'" in config
  assert 'train_x/TrainerSettings.steps = 7' in config
  with pytest.raises(ValueError, match=r"train_x: unknown TrainerSettings fields \['stepz'\]"):
    settings_lib.configured('train_x', {'stepz': 1})


@pytest.mark.parametrize('name,value,reason', [
    ('steps', 0, 'must be an integer >= 1'),
    ('steps', 2.5, 'must be an integer >= 1'),
    ('batch_size', True, 'must be an integer >= 1'),
    ('warmup_steps', -1, 'must be an integer >= 0'),
    ('seed', -3, 'must be an integer >= 0'),
    ('log_every', 0, 'must be an integer >= 1'),
    ('learning_rate', float('nan'), 'must be a finite number > 0'),
    ('learning_rate', 0.0, 'must be a finite number > 0'),
    ('learning_rate', '1e-3', 'must be a finite number > 0'),
    ('weight_decay', -0.1, 'must be a finite number >= 0'),
    ('grad_clip_norm', float('inf'), r'must be a finite number > 0, or None'),
    ('schedule', 'linear', r"must be one of \('constant', 'cosine'\)"),
    ('mesh_shape', (-1, -1), r'must be two integers \(data, model\)'),
    ('mesh_shape', (4,), r'must be two integers \(data, model\)'),
])
def test_settings_that_make_no_sense_are_refused_naming_the_binding(name, value, reason):
  with pytest.raises(ValueError, match=rf'^train_x/TrainerSettings\.{name} = .*: {reason}'):
    _scoped(**{name: value})
  assert _scoped(grad_clip_norm=None, mesh_shape=[2, 4]).grad_clip_norm is None  # allowed


def test_bad_data_leaves_no_run_directory(tmp_path):
  data = _hh(tmp_path / 'hh', (json.dumps(GOOD) + '\n').encode() * 2 + b'{oops\n')
  settings = _scoped()
  with pytest.raises(ValueError, match='test.jsonl:3: not JSON'):
    trainer.prepare_run_dir(settings, str(tmp_path / 'run'), 'final.msgpack', data, ['sft'],
                            'validation', lenient=False)
  assert not (tmp_path / 'run').exists()


def test_lenient_lists_what_it_skipped_in_the_run_directory(tmp_path, capsys):
  data = _hh(tmp_path / 'hh', (json.dumps(GOOD) + '\n').encode() * 2 + b'{oops\n')
  settings = _scoped()
  trainer.prepare_run_dir(settings, str(tmp_path / 'run'), 'final.msgpack', data, ['sft'],
                          'validation', lenient=True)
  skipped = json.loads((tmp_path / 'run' / 'skipped_lines.json').read_text())
  assert [(s['line'], s['reason']) for s in skipped['skipped']] == [
      (3, 'not JSON (Expecting property name enclosed in double quotes at column 2)')]
  assert 'skipped 1 bad lines of 3' in capsys.readouterr().out


def test_batch_sizes_must_split_over_the_mesh(tmp_path):
  settings = _scoped(batch_size=12)  # 8 fake devices
  with pytest.raises(ValueError, match='train_x/TrainerSettings.batch_size = 12'):
    trainer.prepare_run_dir(settings, str(tmp_path / 'run'), 'final.msgpack', str(tmp_path),
                            ['sft'], 'validation', lenient=False)


def test_a_finished_run_needs_resume(tmp_path):
  (tmp_path / 'run').mkdir()
  (tmp_path / 'run' / 'final.msgpack').write_bytes(b'')
  settings = _scoped()
  with pytest.raises(ValueError, match='already holds a finished run'):
    trainer.prepare_run_dir(settings, str(tmp_path / 'run'), 'final.msgpack', str(tmp_path),
                            ['sft'], 'validation', lenient=False)
