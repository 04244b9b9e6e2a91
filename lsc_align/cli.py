"""The `lsc-align` command line: parses flags and gin, then calls one library function.

Every sub-command takes `--gin_file` (repeatable; a path, or a name relative to configs/) and
`--gin_param` (repeatable bindings such as `train_reward_model/TrainerSettings.steps = 200`).
The table below names each command's function itself; importing them registers every gin
configurable any command may reach, before gin parses. TensorFlow (seqio) loads only when
`vocab` runs. Packages above the library add commands through the `lsc_align.commands` entry
point group (the TPU launcher adds `launch`), so the library never imports them.

Paths given as flags may be relative to the working directory; they are made absolute here
(URLs such as gs://... pass unchanged), and path-valued gin bindings are made absolute by the
functions that take them. A user error (bad data, a bad path, flag or gin binding, an
out-of-range value, a missing checkpoint) ends with exit status 2 and one line,
`lsc-align <command>: error: ...`; `--debug` (or LSC_ALIGN_DEBUG=1) shows the traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import os
import sys
from typing import Any, Callable, Sequence

from lsc_align import distributed
from lsc_align import gin_utils
from lsc_align import io_utils
from lsc_align.eval import report
from lsc_align.eval import rm_diagnostics
from lsc_align.pipeline import commands as stages
from lsc_align.pipeline import demo
from lsc_align.pipeline import ppo_flags
from lsc_align.pipeline import worlds
from lsc_align.rewards import example
from lsc_align.train import reference_trainer
from lsc_align.train import reward_model_trainer
from lsc_align.train import sft_trainer
from lsc_align.world import dataset as world_dataset
from lsc_align.world import stats as world_stats


@dataclasses.dataclass(frozen=True)
class Command:
  run: Callable[[argparse.Namespace], int | None]
  help: str
  flags: tuple[tuple[str, dict[str, Any]], ...] = ()
  default_gin_files: tuple[str, ...] = ()  # used when no --gin_file is given


# setup.py's entry points of this group are commands added from above the library (name =
# module:Command), such as the TPU launcher's `launch`.
PLUGIN_GROUP = 'lsc_align.commands'

EXIT_USER_ERROR = 2  # as argparse's own usage errors
DEBUG_ENV = 'LSC_ALIGN_DEBUG'


def _path(flag: str, **kwargs: Any) -> tuple[str, dict[str, Any]]:
  """A path flag: relative to the working directory as typed, absolute once parsed."""
  return flag, {**kwargs, 'type': io_utils.abspath}


_RUN_DIR = _path('--run_dir', required=True, help='run directory (checkpoints, metrics, ...)')
_RESUME = ('--resume', {'action': 'store_true', 'help': 'continue from the latest checkpoint'})
_LENIENT = ('--lenient', {'action': 'store_true', 'default': None,
                          'help': 'skip bad data lines (counted, listed in the output directory) '
                                  'instead of stopping at the first'})

def _vocab(args: argparse.Namespace) -> int:
  """lsc_align.data.vocab.main, imported when the command runs: seqio and TensorFlow take
  seconds to load, too long for every command and --help."""
  from lsc_align.data import vocab  # pylint: disable=g-import-not-at-top
  return vocab.main(args)


_EXP_DIR = _path('--exp_dir', required=True,
                 help='experiment directory (lsc_align.pipeline.layout)')
_OBJECTIVE = ('--objective', {'required': True,
                              'help': 'objective name under configs/objectives/, or a .gin path'})

COMMANDS: dict[str, Command] = {
    'example': Command(example.main,
                       'print the reward library on the paper\'s worked examples'),
    'world': Command(world_dataset.main,
                     'write the embedded preference world (HH layout) to --out',
                     (_path('--out', required=True, help='output directory'),)),
    'world-stats': Command(world_stats.stats_main,
                           'print the world\'s measured properties (Bayes accuracy, ...)',
                           (_path('--data', required=True, help='world directory'),)),
    'vocab': Command(_vocab,
                     'train a SentencePiece vocabulary on HH-layout training text', (
                         _path('--data_dir', required=True),
                         _path('--out', required=True, help='path of the .model file'),
                         ('--vocab_size', {'type': int, 'default': 8000}),
                         ('--subsets', {'default': 'helpful-base,harmless-base'}),
                         ('--split', {'default': 'train'}),
                         ('--model_type', {'default': 'unigram',
                                           'choices': ('unigram', 'bpe')}),
                         ('--character_coverage', {'type': float, 'default': 0.9995}),
                         ('--num_threads', {'type': int, 'default': 1}),
                         _LENIENT,
                     )),
    'train-rm': Command(reward_model_trainer.main,
                        'train a Bradley-Terry reward model for one property',
                        (_RUN_DIR, _RESUME, _LENIENT,
                         _path('--init_t5x_checkpoint', default=None,
                               help='start the encoder from this T5X checkpoint'),
                         _path('--init_hf_t5_checkpoint', default=None,
                               help='start the encoder from this Hugging Face T5 checkpoint'))),
    'train-reference': Command(
        reference_trainer.main,
        'train the reference-reward predictor r_mean(x), r_std(x) of one property', (
            _RUN_DIR, _RESUME,
            _path('--pool_file', default=None,
                  help='npz with prompt_ids and reward_<property> (default: gin)'),
            _path('--reward_model_dir', default=None,
                  help='the reward model run that scored the pool (default: gin)'),
            ('--property_name', {'default': None, 'choices': ('helpful', 'harmless')}))),
    'references': Command(stages.references_main,
                          'reference pool, predictors and their calibration for an experiment',
                          (_EXP_DIR, ('--properties', {
                              'default': None,
                              'help': 'comma-separated (default: helpful,harmless)'}))),
    'rm-diagnose': Command(rm_diagnostics.main,
                           'which gold terms a world reward model gets wrong (JSON)', (
                               _RUN_DIR,
                               _path('--data', default=None,
                                     help='world directory (default: the run\'s)'),
                               ('--split', {'default': 'test'}),
                           )),
    'sft': Command(sft_trainer.main,
                   'train the SFT policy pi0 on the SFT task', (_RUN_DIR, _RESUME, _LENIENT)),
    'pools': Command(stages.pools_main,
                     'world, reward models, pi0 and the pi0 sample pools of an experiment',
                     (_EXP_DIR, _LENIENT)),
    'bok': Command(stages.bok_main,
                   'best-of-k for each k of run_best_of_k.ks on an experiment\'s pool',
                   (_EXP_DIR, _OBJECTIVE)),
    'optimum': Command(stages.optimum_main,
                       'the closed-form KL-regularised optimum for each gamma',
                       (_EXP_DIR, _OBJECTIVE)),
    'ppo': Command(stages.ppo_main,
                   'PPO with a transformed / aggregated reward, then its evaluation', (
                       _EXP_DIR, _OBJECTIVE, _RESUME,
                       ('--kl_coef', {'type': float, 'default': None, 'help': 'gamma'}),
                       ('--alpha', {'type': float, 'default': None,
                                    'help': 'alpha = gamma / (1 + gamma)'}),
                       ('--seed', {'type': int, 'default': None}),
                       _path('--run_dir', default=None,
                             help='default EXP/runs/ppo_<objective>_g<gamma>_s<seed>'),
                       ppo_flags.LEARNER_FLAG,
                   )),
    'eval': Command(stages.eval_main,
                    'evaluate a PPO run directory from its checkpoint (win rates, KL, shortcuts)',
                    (_path('--run_dir', required=True),
                     ('--step', {'type': int, 'default': None,
                                 'help': 'checkpoint step (default: the latest)'}))),
    'sweep': Command(stages.sweep_main,
                     'run every point of the bound run_sweep that has no results yet',
                     (_EXP_DIR,)),
    'demo': Command(demo.demo_main,
                    'the main job: world, reward models, pi0, best-of-k, PPO raw vs LSC, report',
                    (_path('--out', default='lsc_demo', help='experiment directory'),),
                    ('experiments/demo.gin',)),
    'reproduce': Command(demo.reproduce_main,
                         'the paper\'s experiments on the world, several seeds, with the report',
                         (_path('--out', default='lsc_reproduce', help='experiment directory'),),
                         ('experiments/reproduce.gin',)),
    'claims': Command(worlds.claims_main,
                      'LSC sum vs the best weighted raw sum (AND win rate) over several worlds', (
                          _path('--out', default='lsc_claims',
                                help='output root (one experiment directory per world)'),
                          ('--world', {'action': 'append', 'default': None,
                                       'help': 'one world: WorldConfig bindings separated by ";" '
                                               '("" = default world); repeatable, replaces '
                                               'run_claims.worlds'}),
                          ('--ppo', {'action': 'store_true', 'default': None,
                                     'help': 'also PPO per world (costly)'})),
                      ('experiments/worlds.gin',)),
    'report': Command(report.main,
                      'write report.md and figures from the eval results of a sweep', (
                          _path('--sweep_dir', required=True),
                          _path('--out_dir', default=None),
                          ('--matched_kl', {'type': float, 'default': None}),
                          ('--comparison_kls', {'type': float, 'nargs': '+', 'default': None}),
                      )),
}


def plugin_commands() -> dict[str, Command]:
  """The commands of the PLUGIN_GROUP entry points of the installed packages, by name."""
  found = {}
  for entry in importlib.metadata.entry_points(group=PLUGIN_GROUP):
    if entry.name in COMMANDS:
      raise ValueError(f'entry point {entry.value}: {entry.name!r} is a library command')
    found[entry.name] = entry.load()
  return found


def build_parser() -> argparse.ArgumentParser:
  """The `lsc-align` parser: every command of COMMANDS and of plugin_commands()."""
  parser = argparse.ArgumentParser(prog='lsc-align', description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest='command', required=True)
  for name, command in {**COMMANDS, **plugin_commands()}.items():
    p = sub.add_parser(name, help=command.help, description=command.help)
    p.add_argument('--gin_file', action='append', default=[],
                   help='gin file (path, or name under configs/); repeatable')
    p.add_argument('--gin_param', action='append', default=[],
                   help='gin binding, e.g. "train_reward_model/TrainerSettings.steps = 200"; '
                        'repeatable')
    p.add_argument('--debug', action='store_true',
                   help=f'show the traceback of an error (also: {DEBUG_ENV}=1)')
    for flag, kwargs in command.flags:
      p.add_argument(flag, **kwargs)
    p.set_defaults(_command=command)
  return parser


_PROJECT_ROOTS = tuple(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), d)
                      + os.sep for d in ('lsc_align', 'launch'))
_STDLIB = os.path.dirname(os.__file__) + os.sep
_SITE_PACKAGES = ('site-packages', 'dist-packages')


def _raised_here(error: BaseException) -> bool:
  """Whether the innermost frame that raised `error`, not counting the standard library, is this
  project's code (lsc_align, launch).

  Errors the project raises on purpose (or lets os/json raise on a bad path or file) name what
  is wrong; the same exception types raised inside a library (jax, orbax, ...) are bugs to show
  in full.
  """
  frames = []
  tb = error.__traceback__
  while tb is not None:
    name = tb.tb_frame.f_code.co_filename
    frames.append(name if name.startswith('<') else os.path.abspath(name))  # '<frozen os>'
    tb = tb.tb_next
  for path in reversed(frames):
    if path.startswith(_PROJECT_ROOTS):
      return True
    is_stdlib = path.startswith(_STDLIB) and not any(d in path for d in _SITE_PACKAGES)
    if not is_stdlib and not path.startswith('<'):  # a third-party library raised it
      return False
  return False


# What a user can cause and fix: bad input, paths, flags, bindings, values; missing files.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
               IsADirectoryError, PermissionError, FloatingPointError, ImportError)
_GIN_REQUIRED = 'Required bindings for'


def is_user_error(error: BaseException) -> bool:
  """A deliberate, explained error of this project (shown as one line) rather than a bug."""
  if isinstance(error, RuntimeError) and str(error).startswith(_GIN_REQUIRED):
    return True  # gin: a gin.REQUIRED parameter nobody bound
  if io_utils.is_storage_error(error):
    return True  # a full disk, a read-only filesystem, a path too long: wherever it surfaced
  return isinstance(error, USER_ERRORS) and _raised_here(error)


def error_message(error: BaseException) -> str:
  """The error's text on one line (gin appends "In call to configurable ..." lines)."""
  lines = [line.strip() for line in str(error).splitlines()]
  lines = [line for line in lines if line and not line.startswith('In call to configurable')]
  text = ' '.join(lines) or type(error).__name__
  if isinstance(error, OSError) and error.filename and error.strerror:
    text = f'{error.filename}: {error.strerror}'
  if text.startswith(_GIN_REQUIRED):  # "... for `fn` not provided in config: ['a', 'b']"
    text += ('; bind them with --gin_param "FUNCTION.NAME = VALUE" or a --gin_file that '
             'does')
  return text


def _run(args: argparse.Namespace) -> int:
  command: Command = args._command  # pylint: disable=protected-access
  if command.run.__module__.startswith('lsc_align.'):  # jobs, not the launcher
    distributed.maybe_initialize()  # on a pod (driven by the environment), before any JAX use
  gin_utils.parse(args.gin_file or list(command.default_gin_files), args.gin_param)
  return int(command.run(args) or 0)


def main(argv: Sequence[str] | None = None) -> int:
  """Runs one command; a user error is one line on stderr and exit status 2."""
  args = build_parser().parse_args(argv)
  debug = args.debug or os.environ.get(DEBUG_ENV, '') not in ('', '0')
  if not debug:  # TensorFlow's C++ start-up lines would bury a one-line error
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  try:
    return _run(args)
  except KeyboardInterrupt:
    if debug:
      raise
    print(f'lsc-align {args.command}: interrupted', file=sys.stderr)
    return 130
  except Exception as e:  # pylint: disable=broad-except
    exit_code = getattr(e, 'exit_code', None)  # e.g. a stage stopped by a preemption save
    if isinstance(exit_code, int):
      print(f'lsc-align {args.command}: {error_message(e)}', file=sys.stderr)
      return exit_code
    if debug or not is_user_error(e):
      raise
    print(f'lsc-align {args.command}: error: {error_message(e)}\n'
          f'  (add --debug for the traceback)', file=sys.stderr)
    return EXIT_USER_ERROR


if __name__ == '__main__':
  sys.exit(main())
