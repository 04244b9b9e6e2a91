"""User errors through `lsc-align`: exit status 2, one line naming what is wrong, no traceback.

Each case runs `cli.main` in-process (the same parser and error handling as the console script)
with bad data, gin files or bindings, flags, paths or resume state, and checks the message a
user sees. Cases that fail on bad input also check that nothing was left behind that a rerun
would take for a finished stage.
"""
import dataclasses
import gzip
import json
import os
import pathlib
import subprocess
import sys

import pytest

from lsc_align import cli
from lsc_align import gin_utils

GOOD = {'chosen': '\n\nHuman: How do I boil an egg?\n\nAssistant: Put it in boiling water.',
        'rejected': '\n\nHuman: How do I boil an egg?\n\nAssistant: No idea.'}


def _line(record) -> bytes:
  return (json.dumps(record) + '\n').encode()


def _hh(root: pathlib.Path, body: bytes, subset: str = 'helpful-base',
        name: str = 'train.jsonl') -> pathlib.Path:
  """An HH-layout directory whose one file holds `body`."""
  path = root / subset / name
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(body)
  return root


def _truncated_gzip(root: pathlib.Path) -> pathlib.Path:
  data = gzip.compress(b''.join(_line(GOOD) for _ in range(50)))
  return _hh(root, data[:len(data) // 2], name='train.jsonl.gz')


DATA_FILES = {  # name -> (file body, message fragment)
    'not_json': (_line(GOOD) + b'{"chosen": oops\n', 'train.jsonl:2: not JSON'),
    'empty_file': (b'', 'no preference pairs in'),
    'missing_key': (_line({'chosen': GOOD['chosen']}), ':1: missing key "rejected"'),
    'empty_response': (_line({**GOOD,
                              'rejected': '\n\nHuman: How do I boil an egg?\n\nAssistant: '}),
                       ':1: empty rejected response'),
    'identical': (_line({**GOOD, 'rejected': GOOD['chosen']}), ':1: chosen and rejected dialogues'),
    'not_utf8': (b'\xff\xfe' + _line(GOOD), ':1: not UTF-8'),
    'not_object': (b'[1, 2]\n', ':1: not a JSON object'),
    'different_prompts': (_line({**GOOD, 'rejected': '\n\nHuman: Other?\n\nAssistant: No.'}),
                          'different prompts'),
    'non_string': (_line({**GOOD, 'chosen': 3}), ':1: "chosen" is not a string'),
}


def _run(argv, capsys) -> tuple[int, str, str]:
  argv = [str(a) for a in argv]
  code = cli.main(argv)
  out, err = capsys.readouterr()
  if os.environ.get('LSC_ALIGN_ERROR_LOG'):  # collects what users see, for a table of cases
    with open(os.environ['LSC_ALIGN_ERROR_LOG'], 'a', encoding='utf-8') as log:
      log.write(json.dumps({'argv': argv, 'code': code, 'stderr': err}) + '\n')
  return code, out, err


def _assert_user_error(code: int, err: str, command: str, fragment: str) -> None:
  assert code == cli.EXIT_USER_ERROR, err
  assert 'Traceback' not in err
  lines = err.strip().splitlines()
  assert 1 <= len(lines) <= 2, err
  assert lines[0].startswith(f'lsc-align {command}: error: '), err
  assert fragment in lines[0], err


@pytest.fixture(autouse=True)
def _clean_gin(clean_gin):  # pylint: disable=unused-argument
  yield


# --- data faults -----------------------------------------------------------------------------

@pytest.mark.parametrize('case', sorted(DATA_FILES))
def test_vocab_on_bad_data_names_file_and_line(case, tmp_path, capsys):
  body, fragment = DATA_FILES[case]
  data = _hh(tmp_path / 'hh', body)
  out = tmp_path / 'v.model'
  code, _, err = _run(['vocab', '--data_dir', data, '--out', out, '--subsets', 'helpful-base',
                       '--vocab_size', 8], capsys)
  _assert_user_error(code, err, 'vocab', fragment)
  assert not out.exists()


def test_truncated_gzip(tmp_path, capsys):
  data = _truncated_gzip(tmp_path / 'hh')
  code, _, err = _run(['vocab', '--data_dir', data, '--out', tmp_path / 'v.model',
                       '--subsets', 'helpful-base'], capsys)
  _assert_user_error(code, err, 'vocab', 'train.jsonl.gz')
  assert 'unreadable file' in err


def test_vocabulary_too_large_for_the_text(tmp_path, capsys):
  data = _hh(tmp_path / 'hh', _line(GOOD))
  code, _, err = _run(['vocab', '--data_dir', data, '--out', tmp_path / 'v.model',
                       '--subsets', 'helpful-base', '--vocab_size', 300], capsys)
  _assert_user_error(code, err, 'vocab', 'Vocabulary size too high (300)')
  assert 'lower --vocab_size' in err


def test_lenient_skips_counts_and_lists(tmp_path, capsys):
  words = 'the quick brown fox jumps over lazy dogs while seven wizards box'.split()
  pairs = [{'chosen': f'\n\nHuman: {a} {b}?\n\nAssistant: {b} {a} {a}.',
            'rejected': f'\n\nHuman: {a} {b}?\n\nAssistant: {a}.'} for a in words for b in words]
  data = _hh(tmp_path / 'hh', _line(pairs[0]) + b'not json\n' + b''.join(map(_line, pairs[1:])))
  code, out, err = _run(['vocab', '--data_dir', data, '--out', tmp_path / 'v.model',
                         '--subsets', 'helpful-base', '--vocab_size', 40, '--lenient'], capsys)
  assert code == 0, err
  assert f'skipped 1 bad lines of {len(pairs) + 1}' in out
  skipped = json.loads((tmp_path / 'v.skipped_lines.json').read_text())
  assert [s['line'] for s in skipped['skipped']] == [2]
  assert (tmp_path / 'v.model').exists()


def test_lenient_with_no_good_line_is_still_an_error(tmp_path, capsys):
  data = _hh(tmp_path / 'hh', b'x\ny\n')
  code, _, err = _run(['vocab', '--data_dir', data, '--out', tmp_path / 'v.model',
                       '--subsets', 'helpful-base', '--lenient'], capsys)
  _assert_user_error(code, err, 'vocab', 'no preference pairs in')
  assert 'all skipped' in err


@pytest.mark.parametrize('flags,fragment', [
    (['--vocab_size', 2], '--vocab_size 2: must be at least 4'),
    (['--subsets', ','], '--subsets'),
    (['--split', 'validation'], 'no split "validation"'),
    (['--subsets', 'red-team'], 'red-team: not a directory'),
])
def test_vocab_bad_flags(flags, fragment, tmp_path, capsys):
  data = _hh(tmp_path / 'hh', _line(GOOD))
  code, _, err = _run(['vocab', '--data_dir', data, '--out', tmp_path / 'v.model',
                       '--subsets', 'helpful-base', *flags], capsys)
  _assert_user_error(code, err, 'vocab', fragment)


def test_missing_data_dir(tmp_path, capsys):
  code, _, err = _run(['vocab', '--data_dir', tmp_path / 'nowhere', '--out', tmp_path / 'v.model'],
                      capsys)
  _assert_user_error(code, err, 'vocab', 'nowhere/helpful-base: not a directory')


def _rm_argv(run_dir, data, vocabulary, *extra):
  return ['train-rm', '--run_dir', run_dir, '--gin_file', 'experiments/tiny.gin',
          '--gin_param', f"train_reward_model.data_dir = '{data}'",
          '--gin_param', f"train_reward_model.vocabulary = '{vocabulary}'", *extra]


def test_train_rm_on_a_bad_line_writes_nothing(tiny_world, tmp_path, capsys):
  data = _hh(tmp_path / 'hh', _line(GOOD) * 3 + b'{"chosen": 1}\n', name='test.jsonl')
  run_dir = tmp_path / 'rm'
  code, _, err = _run(_rm_argv(run_dir, data, tiny_world / 'vocab.txt'), capsys)
  _assert_user_error(code, err, 'train-rm', 'test.jsonl:4: "chosen" is not a string')
  assert not run_dir.exists()  # a rerun after the fix cannot mistake it for a started stage


# --- gin faults ------------------------------------------------------------------------------

def test_missing_gin_file(tmp_path, capsys):
  code, _, err = _run(['world', '--out', tmp_path / 'w', '--gin_file', 'world/nope.gin'], capsys)
  _assert_user_error(code, err, 'world', "gin file 'world/nope.gin' not found")


def test_gin_file_syntax_error(tmp_path, capsys):
  bad = tmp_path / 'bad.gin'
  bad.write_text("WorldConfig.seed = = 3\n")
  code, _, err = _run(['world', '--out', tmp_path / 'w', '--gin_file', bad], capsys)
  _assert_user_error(code, err, 'world', f'gin file {bad}')
  assert not (tmp_path / 'w').exists()


@pytest.mark.parametrize('binding,fragment', [
    ('NoSuchThing.value = 1', "gin binding 'NoSuchThing.value = 1'"),
    ('WorldConfig.no_such_field = 1', "gin binding 'WorldConfig.no_such_field = 1'"),
    ('WorldConfig.seed = (', "gin binding 'WorldConfig.seed = ('"),
])
def test_bad_gin_binding(binding, fragment, tmp_path, capsys):
  code, _, err = _run(['world', '--out', tmp_path / 'w', '--gin_file', 'world/tiny.gin',
                       '--gin_param', binding], capsys)
  _assert_user_error(code, err, 'world', fragment)


def test_gin_import_of_a_missing_module_names_it(tmp_path, capsys):
  old = tmp_path / 'old.gin'
  old.write_text('import lsc_align.data.world_config\nWorldConfig.seed = 3\n')
  code, _, err = _run(['world', '--out', tmp_path / 'w', '--gin_file', old], capsys)
  _assert_user_error(code, err, 'world', f'gin file {old}')
  assert 'lsc_align.data.world_config' in err


def test_required_binding_missing(tmp_path, capsys):
  code, _, err = _run(['train-rm', '--run_dir', tmp_path / 'rm'], capsys)
  _assert_user_error(code, err, 'train-rm', "['data_dir', 'vocabulary']")
  assert '--gin_param' in err


@pytest.mark.parametrize('binding,fragment', [
    ("train_reward_model.world_labels = 'gold'", 'train_reward_model.world_labels'),
    ('train_reward_model/TrainerSettings.batch_size = 12',
     'train_reward_model/TrainerSettings.batch_size = 12'),
    ('train_reward_model/TrainerSettings.learning_rate = -1.0',
     'train_reward_model/TrainerSettings.learning_rate = -1.0: must be a finite number > 0'),
    ('T5EncoderConfig.vocab_size = 5', 'T5EncoderConfig.vocab_size = 5'),
    ("train_reward_model.property_name = 'honest'", 'train_reward_model.property_name'),
])
def test_bad_trainer_binding_names_it(binding, fragment, tiny_world, tmp_path, capsys):
  run_dir = tmp_path / 'rm'
  code, _, err = _run(_rm_argv(run_dir, tiny_world, tiny_world / 'vocab.txt',
                               '--gin_param', binding), capsys)
  _assert_user_error(code, err, 'train-rm', fragment)
  assert not (run_dir / 'rm_final.msgpack').exists()


def test_unknown_objective(tmp_path, capsys):
  code, _, err = _run(['bok', '--exp_dir', tmp_path, '--objective', 'helpful_lsd'], capsys)
  _assert_user_error(code, err, 'bok', "'objectives/helpful_lsd' not found")


@pytest.mark.parametrize('text,fragment', [
    ("make_objective.name = 'q'\nmake_objective.properties = ['helpful']\n"
     "make_objective.transform = 'lsc'\n"
     "make_objective.references = {'helpful': ('quantile', 1.5)}\n",
     'quantile in (0, 1), got 1.5'),
    ("make_objective.name = 'q'\nmake_objective.transform = @lsc\n", ":2: '@lsc' is not a literal"),
])
def test_bad_objective_file(text, fragment, tmp_path, capsys):
  path = tmp_path / 'objective.gin'
  path.write_text(text)
  code, _, err = _run(['bok', '--exp_dir', tmp_path, '--objective', path], capsys)
  _assert_user_error(code, err, 'bok', fragment)
  assert str(path) in err


# --- flag faults -----------------------------------------------------------------------------

@pytest.mark.parametrize('flags,fragment', [
    (['--kl_coef', 0.1, '--alpha', 0.1], 'exactly one of kl_coef'),
    (['--alpha', 1.5], 'alpha must be in (0, 1), got 1.5'),
])
def test_ppo_bad_gamma_flags(flags, fragment, tmp_path, capsys):
  code, _, err = _run(['ppo', '--exp_dir', tmp_path, '--objective', 'combined_lsc_sum', *flags],
                      capsys)
  _assert_user_error(code, err, 'ppo', fragment)


def test_unknown_flag_is_a_usage_error(capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(['world', '--out', 'x', '--outt', 'y'])
  assert exit_info.value.code == 2
  assert 'unrecognized arguments: --outt' in capsys.readouterr().err


def test_debug_shows_the_traceback(tmp_path):
  with pytest.raises(ValueError, match='must be at least 4'):
    cli.main(['vocab', '--data_dir', str(tmp_path), '--out', str(tmp_path / 'v.model'),
              '--vocab_size', '2', '--debug'])


# --- path faults -----------------------------------------------------------------------------

def test_world_out_is_a_file(tmp_path, capsys):
  (tmp_path / 'afile').write_text('')
  code, _, err = _run(['world', '--out', tmp_path / 'afile', '--gin_file', 'world/tiny.gin'],
                      capsys)
  _assert_user_error(code, err, 'world', 'afile is a file')


@pytest.mark.parametrize('name,fragment', [
    ('missing.txt', 'no such file'),
    ('vocab.json', 'expected a world vocab.txt or a SentencePiece .model'),
])
def test_bad_vocabulary_path(name, fragment, tiny_world, tmp_path, capsys):
  code, _, err = _run(_rm_argv(tmp_path / 'rm', tiny_world, tmp_path / name), capsys)
  _assert_user_error(code, err, 'train-rm', fragment)


def test_missing_t5x_checkpoint(tiny_world, tmp_path, capsys):
  code, _, err = _run(_rm_argv(tmp_path / 'rm', tiny_world, tiny_world / 'vocab.txt',
                               '--init_t5x_checkpoint', tmp_path / 'ckpt'), capsys)
  _assert_user_error(code, err, 'train-rm', 'init_t5x_checkpoint')
  assert not (tmp_path / 'rm').exists()


def test_missing_hf_t5_checkpoint(tiny_world, tmp_path, capsys):
  code, _, err = _run(_rm_argv(tmp_path / 'rm', tiny_world, tiny_world / 'vocab.txt',
                               '--init_hf_t5_checkpoint', tmp_path / 'ckpt'), capsys)
  _assert_user_error(code, err, 'train-rm', 'init_hf_t5_checkpoint')
  assert not (tmp_path / 'rm').exists()


@pytest.mark.parametrize('argv,command,fragment', [
    (['rm-diagnose', '--run_dir', '{tmp}/none'], 'rm-diagnose',
     'reward_model.json: No such file or directory'),
    (['eval', '--run_dir', '{tmp}'], 'eval', 'run.json not found'),
    (['bok', '--exp_dir', '{tmp}', '--objective', 'combined_lsc_sum_bok'], 'bok',
     'build the pools first'),
    (['world-stats', '--data', '{tmp}'], 'world-stats', 'world.json'),
    (['report', '--sweep_dir', '{tmp}'], 'report', 'no eval results found'),
    (['train-reference', '--run_dir', '{tmp}/ref', '--pool_file', '{tmp}/none.npz',
      '--reward_model_dir', '{tmp}'], 'train-reference', 'no final reward model'),
    (['references', '--exp_dir', '{tmp}'], 'references', 'has no pools yet'),
    (['references', '--exp_dir', '{tmp}', '--properties', 'funny'], 'references',
     "unknown ['funny']"),
])
def test_missing_inputs(argv, command, fragment, tmp_path, capsys):
  code, _, err = _run([a.format(tmp=tmp_path) for a in argv], capsys)
  _assert_user_error(code, err, command, fragment)


# --- resume faults ---------------------------------------------------------------------------

def test_finished_run_needs_a_new_directory(tiny_world, tmp_path, capsys):
  run_dir = tmp_path / 'rm'
  run_dir.mkdir()
  (run_dir / 'rm_final.msgpack').write_bytes(b'')
  code, _, err = _run(_rm_argv(run_dir, tiny_world, tiny_world / 'vocab.txt'), capsys)
  _assert_user_error(code, err, 'train-rm', 'already holds a finished run')


def test_checkpoints_without_resume(tiny_world, tmp_path, capsys):
  (tmp_path / 'sft' / 'checkpoints' / '5').mkdir(parents=True)
  code, _, err = _run(['sft', '--run_dir', tmp_path / 'sft', '--gin_file', 'experiments/tiny.gin',
                       '--gin_param', f"train_sft.data_dir = '{tiny_world}'",
                       '--gin_param', f"train_sft.vocabulary = '{tiny_world / 'vocab.txt'}'"],
                      capsys)
  _assert_user_error(code, err, 'sft', 'add --resume to continue it')


@pytest.mark.slow  # builds the tiny experiment
def test_resume_into_a_run_of_another_config(tiny_experiment, tmp_path, capsys):
  run_dir = tmp_path / 'ppo'
  run_dir.mkdir()
  (run_dir / 'run.json').write_text(json.dumps({'kl_coef': 0.5, 'seed': 0}))
  code, _, err = _run(['ppo', '--exp_dir', tiny_experiment, '--objective', 'combined_lsc_sum',
                       '--kl_coef', 0.05, '--run_dir', run_dir, '--resume',
                       '--gin_file', 'experiments/tiny.gin'], capsys)
  _assert_user_error(code, err, 'ppo', 'holds a PPO run of another config')
  assert 'differs in: kl_coef)' in err  # only what the saved run.json records
  assert json.loads((run_dir / 'run.json').read_text())['kl_coef'] == 0.5  # not overwritten


def test_unexpected_errors_keep_their_traceback(monkeypatch):
  """A bug (here a TypeError raised inside the command) is not dressed up as a user error."""
  def broken(_):
    raise TypeError('a bug')

  monkeypatch.setitem(cli.COMMANDS, 'example',
                      dataclasses.replace(cli.COMMANDS['example'], run=broken))
  with pytest.raises(TypeError, match='a bug'):
    cli.main(['example'])


def test_error_from_a_library_is_not_a_user_error():
  import numpy as np  # pylint: disable=g-import-not-at-top
  try:
    np.reshape(np.arange(3), (2, 2))
  except ValueError as e:
    assert not cli.is_user_error(e)
  try:
    os.makedirs(__file__)
  except FileExistsError as e:  # raised in the standard library, called from here: not ours
    assert not cli.is_user_error(e)


def test_the_table_registers_every_configurable_and_leaves_tensorflow_unloaded():
  """Importing the CLI (as `lsc-align --help` does) imports every command's function, so any
  run config parses whatever the command; seqio / TensorFlow wait for `vocab`."""
  configs = sorted(str(p.relative_to(gin_utils.CONFIG_DIR))
                   for p in gin_utils.CONFIG_DIR.rglob('*.gin') if p.parts[-2] != 'objectives')
  code = ('import sys, gin\n'
          'from lsc_align import cli, gin_utils\n'
          'cli.build_parser()\n'
          f'for name in {configs!r}:\n'
          '  gin_utils.parse([name], finalize=False)\n'
          'print(len(cli.COMMANDS), "tensorflow" in sys.modules, "seqio" in sys.modules)\n')
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.split() == [str(len(cli.COMMANDS)), 'False', 'False']
  assert len(configs) > 10
