"""TPU pod launcher: create or reuse a TPU VM, install lsc_align on every worker, run a job, delete.

    python -m launch.tpu all --name lsc-ppo --zone us-central2-b --accelerator_type v4-32 \\
        --subcommand ppo --run_dir gs://BUCKET/runs/ppo --job_gin_file FILE.gin \\
        --job_gin_param "ppo.kl_coef = 0.05" --delete_after --dry_run

Actions (`--action A`, or the first word with `python -m launch.tpu`):
  create   `describe` the VM: READY is reused, absent is created (--spot / --preemptible);
           any other state (CREATING, PREEMPTED, ...) is an error.
  install  `git archive --git_ref` (committed files only) -> scp to every worker -> unpack into
           ~/lsc_align (replacing it) -> `pip install -e .` and `pip install "jax[tpu]==0.10.2"`.
  run      ssh --worker=all: `cd lsc_align && [export LSC_ALIGN_DISTRIBUTED=auto] && python3
           -m lsc_align.cli SUBCOMMAND [--job_arg..] [--run_dir D] [--gin_file..] [--gin_param..]`
           (`--run_dir_flag=--out` sends the directory as `--out D`, as `lsc-align demo` wants).
  delete   delete the VM.     status   `describe` it.
  all      create, install, run.  --delete_after deletes the VM after create/install/run/all,
           also when they fail.

Remote gin flags are `--job_gin_file` / `--job_gin_param` (sent to the job as --gin_file /
--gin_param): `lsc-align launch` gives every sub-command local --gin_file / --gin_param flags,
which it parses itself. Sweeps: repeated `--sweep KEY=V1,V2` (launch/sweep.py); `--sweep_mode
sequential` (default) runs all points on one VM one after another and stops at the first failure;
`per_point` runs each point on its own VM NAME-INDEX, all at once. Every point writes to
RUN_DIR/POINT_NAME. The exit code is the first failing command's (of the first failing VM).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import os
import pathlib
import sys
import tempfile
from typing import Any, Callable, Sequence

from launch import gcloud
from launch import runner
from launch import sweep

ACTIONS = ('create', 'install', 'run', 'delete', 'status', 'all')
REPO = str(pathlib.Path(__file__).resolve().parent.parent)
USAGE_EXIT = 2

FLAGS: tuple[tuple[str, dict[str, Any]], ...] = (
    ('--action', {'required': True, 'choices': ACTIONS,
                  'help': 'create | install | run | delete | status | all (create+install+run)'}),
    ('--name', {'required': True, 'help': 'TPU VM name (a-z, 0-9, "-"); per_point sweeps add -N'}),
    ('--zone', {'required': True, 'help': 'e.g. us-central2-b'}),
    ('--project', {'default': None, 'help': 'GCP project (default: gcloud\'s configured one)'}),
    ('--accelerator_type', {'default': None,
                            'help': 'e.g. v4-32, v5litepod-16; needed by create, run and all'}),
    ('--runtime_version', {'default': None,
                           'help': 'TPU software version (default: the JAX image of the type)'}),
    ('--spot', {'action': 'store_true', 'help': 'create a Spot VM'}),
    ('--preemptible', {'action': 'store_true', 'help': 'create a preemptible VM'}),
    ('--subcommand', {'default': None, 'help': 'lsc-align sub-command to run, e.g. ppo'}),
    ('--run_dir', {'default': None, 'help': 'output directory of the job; points add /POINT'}),
    ('--run_dir_flag', {'default': '--run_dir',
                        'help': 'the sub-command\'s flag for it, e.g. --run_dir_flag=--out'}),
    ('--job_gin_file', {'action': 'append', 'default': None,
                        'help': 'gin file for the remote job (--gin_file there); repeatable'}),
    ('--job_gin_param', {'action': 'append', 'default': None,
                         'help': 'gin binding for the remote job (--gin_param there); repeatable'}),
    ('--job_arg', {'action': 'append', 'default': None,
                   'help': 'extra word for the sub-command, e.g. --job_arg=--resume; repeatable'}),
    ('--env', {'action': 'append', 'default': None,
               'help': 'NAME=VALUE exported on every worker before the job; repeatable'}),
    ('--sweep', {'action': 'append', 'default': None,
                 'help': 'KEY=V1,V2,... gin values to sweep (grid over all flags); repeatable'}),
    ('--sweep_mode', {'default': 'sequential', 'choices': sweep.MODES,
                      'help': 'sequential: one VM, points in turn; per_point: one VM per point'}),
    ('--python', {'default': 'python3',
                  'help': 'interpreter on the workers (>= 3.11), as remote shell code'}),
    ('--setup', {'default': None, 'help': 'shell code run on every worker before pip install'}),
    ('--git_ref', {'default': 'HEAD', 'help': 'commit to ship (uncommitted changes are not)'}),
    ('--delete_after', {'action': 'store_true',
                        'help': 'delete the VM at the end, also on failure'}),
    ('--dry_run', {'action': 'store_true', 'help': 'print the commands, one per line; run none'}),
    ('--gcloud', {'default': gcloud.GCLOUD, 'help': 'gcloud binary to run'}),
)


class UsageError(ValueError):
  """The flags do not describe a launch; the message names the flag."""


@dataclasses.dataclass(frozen=True)
class Job:
  """One TPU VM and the remote script its `run` step sends (None if no step runs a job)."""
  tpu: gcloud.Tpu
  script: str | None


def steps_for(action: str, delete_after: bool = False) -> list[str]:
  """The steps of an action, in order: 'all' is create, install, run; then delete if asked."""
  steps = ['create', 'install', 'run'] if action == 'all' else [action]
  if delete_after and action not in ('delete', 'status'):
    steps.append('delete')
  return steps


def _items(values: Sequence[str] | None) -> list[str]:
  return list(values or [])


def plan_jobs(args: argparse.Namespace) -> list[Job]:
  """The VMs to act on and their remote scripts, from the flags; runs nothing.

  Raises:
    UsageError: a flag is missing or malformed (the message names it).
  """
  steps = steps_for(args.action, args.delete_after)
  if args.spot and args.preemptible:
    raise UsageError('--spot and --preemptible are exclusive (spot is the newer kind)')
  if {'create', 'run'} & set(steps) and not args.accelerator_type:
    raise UsageError(f'--accelerator_type is required for --action {args.action} (e.g. v4-32): it '
                     'sizes the slice and decides whether the job is multi-host')
  if args.accelerator_type:
    try:
      gcloud.parse_accelerator(args.accelerator_type)
    except ValueError as e:
      raise UsageError(f'--accelerator_type: {e}') from e
  if 'run' in steps and not args.subcommand:
    raise UsageError(f'--subcommand is required for --action {args.action}: the lsc-align '
                     'sub-command to run on every worker, e.g. ppo')
  if args.subcommand:
    from lsc_align import cli  # pylint: disable=g-import-not-at-top  (only when a job runs)
    jobs = sorted(cli.COMMANDS)  # the library's commands (launch is not one)
    if args.subcommand not in jobs:
      raise UsageError(f'--subcommand {args.subcommand!r} is not an lsc-align command; one of '
                       f'{", ".join(jobs)}')
  try:
    spec = sweep.parse_sweep_flags(_items(args.sweep))
    points = sweep.expand(spec)
    env = gcloud.parse_env(_items(args.env))
  except ValueError as e:
    raise UsageError(str(e)) from e
  if not args.run_dir_flag.startswith('-'):
    raise UsageError(f'--run_dir_flag {args.run_dir_flag!r}: expected a flag such as --out')
  if spec and not args.run_dir:
    raise UsageError('--sweep needs --run_dir: each point writes to RUN_DIR/POINT_NAME')
  per_point = args.sweep_mode == 'per_point' and bool(spec)
  names = [sweep.point_vm_name(args.name, p) for p in points] if per_point else [args.name]
  for name in names:
    try:
      gcloud.validate_name(name)
    except ValueError as e:
      raise UsageError(f'--name: {e}') from e

  def script(selected: Sequence[sweep.SweepPoint]) -> str | None:
    if 'run' not in steps:
      return None
    jobs = []
    for point in selected:
      run_dir = sweep.point_run_dir(args.run_dir, point) if args.run_dir else None
      argv = gcloud.job_argv(args.subcommand, _items(args.job_gin_file),
                             [*_items(args.job_gin_param), *point.bindings], run_dir,
                             _items(args.job_arg), args.run_dir_flag)
      label = f'[point {point.index + 1}/{len(points)}] {point.name}' if spec else None
      jobs.append((label, argv))
    return gcloud.run_script(jobs, args.python, gcloud.worker_env(args.accelerator_type, env))

  def tpu(name: str) -> gcloud.Tpu:
    return gcloud.Tpu(name=name, zone=args.zone, project=args.project)

  if per_point:
    return [Job(tpu(name), script([p])) for name, p in zip(names, points)]
  return [Job(tpu(args.name), script(points))]


def tarball_path(name: str) -> str:
  """Where `install` writes the archive for VM ``name`` (removed after the copy)."""
  return os.path.join(tempfile.gettempdir(), f'lsc_align-{name}.tar.gz')


def _create(job: Job, args: argparse.Namespace, ex: runner.Executor, prefix: str) -> int:
  describe = gcloud.describe_command(job.tpu, fmt='value(state)')
  create = gcloud.create_command(job.tpu, args.accelerator_type, args.runtime_version,
                                 spot=args.spot, preemptible=args.preemptible)
  if ex.dry_run:  # the create line runs only if describe finds no VM
    ex.show(describe)
    ex.show(create)
    return 0
  found = ex.capture(describe)
  state = found.stdout.strip()
  if found.returncode == runner.NOT_FOUND_EXIT:
    ex.emit(f'{prefix}error: {ex.gcloud!r} not found (install the Google Cloud CLI or pass '
            '--gcloud PATH)')
    return found.returncode
  if found.returncode == 0 and state == 'READY':
    ex.emit(f'{prefix}reusing TPU VM {job.tpu.name} (READY)')
    return 0
  if found.returncode == 0:
    ex.emit(f'{prefix}error: TPU VM {job.tpu.name} exists in state {state or "?"}; wait for it, '
            'or delete it (--action delete) and create it again')
    return 1
  if 'not_found' not in found.stderr.lower().replace(' ', '_'):
    for line in found.stderr.splitlines():
      ex.emit(prefix + line)
    ex.emit(f'{prefix}error: describe failed (exit {found.returncode}) for a reason other than '
            '"not found"; not creating')
    return found.returncode
  return ex.stream(create, prefix)


def _warn_uncommitted(args: argparse.Namespace, ex: runner.Executor, prefix: str) -> None:
  status = ex.capture(['git', '-C', REPO, 'status', '--porcelain'])
  if status.returncode == 0 and status.stdout.strip():
    ex.emit(f'{prefix}warning: {REPO} has uncommitted or untracked files; install ships only '
            f'git {args.git_ref}')


def _install(job: Job, args: argparse.Namespace, ex: runner.Executor, prefix: str) -> int:
  tarball = tarball_path(job.tpu.name)
  commands = (gcloud.archive_command(REPO, tarball, args.git_ref),
              gcloud.scp_command(job.tpu, tarball),
              gcloud.ssh_command(job.tpu, gcloud.install_script(args.python, args.setup)))
  if not ex.dry_run:
    _warn_uncommitted(args, ex, prefix)
  try:
    for argv in commands:
      code = ex.stream(argv, prefix)
      if code:
        return code
    return 0
  finally:
    if not ex.dry_run and os.path.exists(tarball):
      os.remove(tarball)


def _run(job: Job, args: argparse.Namespace, ex: runner.Executor, prefix: str) -> int:
  assert job.script is not None
  return ex.stream(gcloud.ssh_command(job.tpu, job.script), prefix)


def _status(job: Job, args: argparse.Namespace, ex: runner.Executor, prefix: str) -> int:
  return ex.stream(gcloud.describe_command(job.tpu), prefix)


def _delete(job: Job, args: argparse.Namespace, ex: runner.Executor, prefix: str) -> int:
  return ex.stream(gcloud.delete_command(job.tpu), prefix)


_STEPS: dict[str, Callable[[Job, argparse.Namespace, runner.Executor, str], int]] = {
    'create': _create, 'install': _install, 'run': _run, 'status': _status, 'delete': _delete}


def run_job(job: Job, args: argparse.Namespace, ex: runner.Executor) -> int:
  """Runs the action's steps on one VM, stopping at the first failure; returns its exit code.

  With --delete_after the VM is deleted at the end whatever happened before (also on Ctrl-C in
  the main thread); the remote processes of an interrupted `run` are not stopped otherwise.
  """
  prefix = f'[{job.tpu.name}] '
  steps = steps_for(args.action, args.delete_after)
  delete_at_end = steps[-1] == 'delete' and args.action != 'delete'
  code = 0
  try:
    for step in steps[:-1] if delete_at_end else steps:
      code = _STEPS[step](job, args, ex, prefix)
      if code:
        break
  finally:
    if delete_at_end:
      deleted = _delete(job, args, ex, prefix)
      code = code or deleted  # an earlier failure's code wins
  return code


def main(args: argparse.Namespace, executor: runner.Executor | None = None) -> int:
  """`lsc-align launch --action A --name N --zone Z ...` (flags: FLAGS); returns the exit code.

  Args:
    args: parsed FLAGS.
    executor: runs the commands; default `runner.Executor(args.gcloud, args.dry_run)`.
  """
  try:
    jobs = plan_jobs(args)
  except UsageError as e:
    print(f'error: {e}', file=sys.stderr)
    return USAGE_EXIT
  ex = executor or runner.Executor(gcloud=args.gcloud, dry_run=args.dry_run)
  if ex.dry_run or len(jobs) == 1:
    codes = [run_job(job, args, ex) for job in jobs]
  else:  # per_point sweep: every VM at once, output lines prefixed with the VM name
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(jobs)) as pool:
      codes = list(pool.map(lambda job: run_job(job, args, ex), jobs))
  failed = [(job, code) for job, code in zip(jobs, codes) if code]
  for job, code in failed:
    print(f'[{job.tpu.name}] failed with exit code {code}', file=sys.stderr)
  return failed[0][1] if failed else 0


def build_parser() -> argparse.ArgumentParser:
  """The `python -m launch.tpu` parser: FLAGS, with the action also accepted as the first word."""
  parser = argparse.ArgumentParser(prog='python -m launch.tpu', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('action_word', nargs='?', choices=ACTIONS, metavar='ACTION',
                      help='same as --action')
  for flag, kwargs in FLAGS:
    if flag == '--action':
      kwargs = {**kwargs, 'required': False, 'default': None}
    parser.add_argument(flag, **kwargs)
  return parser


def cli(argv: Sequence[str] | None = None) -> int:
  """Entry point of `python -m launch.tpu ACTION ...`."""
  parser = build_parser()
  args = parser.parse_args(argv)
  if args.action_word and args.action and args.action_word != args.action:
    parser.error(f'ACTION {args.action_word!r} and --action {args.action!r} disagree')
  args.action = args.action or args.action_word
  if not args.action:
    parser.error(f'an action is required: ACTION or --action, one of {", ".join(ACTIONS)}')
  return main(args)


if __name__ == '__main__':
  sys.exit(cli())
