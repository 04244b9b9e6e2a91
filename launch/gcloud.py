"""Command lines for Cloud TPU VMs, as argv lists: pure functions, nothing here runs a process.

`launch/tpu.py` runs these lists with `subprocess` (no local shell), and `--dry_run` prints them
with `shlex.join`, so a printed line pasted into a shell gives back the same argv. The one string
that crosses a shell is the remote script of `gcloud ... ssh --command`: the remote login shell
runs it with `bash -c`, so every word that comes from a user (gin bindings, run directories,
environment values) goes through `shlex.quote` / `shlex.join` here, and nowhere else.
"""
from __future__ import annotations

import dataclasses
import re
import shlex
from typing import Mapping, Sequence

GCLOUD = 'gcloud'
TPU_VM = ('compute', 'tpus', 'tpu-vm')
REMOTE_DIR = 'lsc_align'  # under the worker's home directory; replaced on every install
REMOTE_TARBALL = 'lsc_align.tar.gz'
# The pin of requirements.txt with the TPU extra (libtpu); tests/launch_test.py checks they agree.
JAX_TPU_REQUIREMENT = 'jax[tpu]==0.10.2'
# lsc_align.distributed.ENV_MODE, not imported here because that module imports jax.
DISTRIBUTED_ENV = 'LSC_ALIGN_DISTRIBUTED'
MIN_PYTHON = (3, 11)

# TPU software versions for JAX per generation (cloud.google.com/tpu/docs/runtimes).
RUNTIME_VERSIONS = {
    'v2': 'tpu-ubuntu2204-base',
    'v3': 'tpu-ubuntu2204-base',
    'v4': 'tpu-ubuntu2204-base',
    'v5p': 'v2-alpha-tpuv5',
    'v5litepod': 'v2-alpha-tpuv5-lite',
    'v6e': 'v2-alpha-tpuv6e',
}

_ACCELERATOR = re.compile(r'^(v2|v3|v4|v5p|v5litepod|v6e)-(\d+)$')
_TPU_NAME = re.compile(r'^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$')
_ENV_NAME = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*$')


@dataclasses.dataclass(frozen=True)
class Tpu:
  """Which TPU VM: its name, zone and (optionally) project; gcloud's default project if None."""
  name: str
  zone: str
  project: str | None = None

  def location_flags(self) -> list[str]:
    flags = [f'--zone={self.zone}']
    if self.project:
      flags.append(f'--project={self.project}')
    return flags


def validate_name(name: str) -> str:
  """Returns ``name`` if it is a valid TPU name (lower-case letters, digits, '-'; <= 63 chars).

  Raises:
    ValueError: it is not.
  """
  if not _TPU_NAME.match(name):
    raise ValueError(f'TPU name {name!r} must be 1-63 characters of a-z, 0-9 and "-", start with '
                     'a letter and not end with "-"')
  return name


def parse_accelerator(accelerator_type: str) -> tuple[str, int]:
  """'v4-32' -> ('v4', 32).

  Raises:
    ValueError: not one of v2/v3/v4/v5p/v5litepod/v6e followed by '-N'.
  """
  match = _ACCELERATOR.match(accelerator_type)
  if not match:
    raise ValueError(f'accelerator type {accelerator_type!r} is not GENERATION-SIZE with '
                     f'GENERATION one of {", ".join(RUNTIME_VERSIONS)} (e.g. v4-32, v5litepod-16)')
  return match.group(1), int(match.group(2))


def num_hosts(accelerator_type: str) -> int:
  """Worker VMs in a slice of this type.

  v2/v3/v4/v5p sizes count TensorCores, 8 per host (v4-8 is one host, v4-32 four); v5litepod and
  v6e sizes count chips: up to 8 on one host, 4 per host beyond (v5litepod-16 is four hosts).
  """
  generation, size = parse_accelerator(accelerator_type)
  if generation in ('v5litepod', 'v6e'):
    return 1 if size <= 8 else size // 4
  return max(1, size // 8)


def default_runtime_version(accelerator_type: str) -> str:
  """The TPU software version to create a VM of this type with, for JAX."""
  return RUNTIME_VERSIONS[parse_accelerator(accelerator_type)[0]]


def _tpu_vm(verb: str, *args: str) -> list[str]:
  return [GCLOUD, *TPU_VM, verb, *args]


def describe_command(tpu: Tpu, fmt: str | None = None) -> list[str]:
  """`gcloud ... describe`; with fmt='value(state)' it prints only the state (READY, ...)."""
  argv = _tpu_vm('describe', tpu.name, *tpu.location_flags())
  if fmt:
    argv.append(f'--format={fmt}')
  return argv


def create_command(tpu: Tpu, accelerator_type: str, runtime_version: str | None = None,
                   spot: bool = False, preemptible: bool = False) -> list[str]:
  """`gcloud ... create`; the runtime version defaults to the generation's JAX image.

  Raises:
    ValueError: both spot and preemptible, or an unknown accelerator type.
  """
  if spot and preemptible:
    raise ValueError('--spot and --preemptible are exclusive (spot is the newer kind)')
  version = runtime_version or default_runtime_version(accelerator_type)
  parse_accelerator(accelerator_type)
  argv = _tpu_vm('create', tpu.name, *tpu.location_flags(),
                 f'--accelerator-type={accelerator_type}', f'--version={version}')
  if spot:
    argv.append('--spot')
  if preemptible:
    argv.append('--preemptible')
  return argv


def delete_command(tpu: Tpu) -> list[str]:
  """`gcloud ... delete --quiet` (no confirmation prompt)."""
  return _tpu_vm('delete', tpu.name, *tpu.location_flags(), '--quiet')


def scp_command(tpu: Tpu, local_path: str, remote_path: str = REMOTE_TARBALL) -> list[str]:
  """Copies one local file to ``remote_path`` (relative to home) on every worker."""
  return _tpu_vm('scp', local_path, f'{tpu.name}:{remote_path}', *tpu.location_flags(),
                 '--worker=all', '--quiet')


def ssh_command(tpu: Tpu, remote_script: str) -> list[str]:
  """Runs ``remote_script`` (one string, run by the remote shell) on every worker."""
  return _tpu_vm('ssh', tpu.name, *tpu.location_flags(), '--worker=all', '--quiet',
                 f'--command={remote_script}')


def archive_command(repo: str, output: str, ref: str = 'HEAD') -> list[str]:
  """`git archive` of ``ref`` (committed files only) into a .tar.gz."""
  return ['git', '-C', repo, 'archive', '--format=tar.gz', f'--output={output}', ref]


def python_check_script(python: str = 'python3') -> str:
  """Exits non-zero with a message naming the found version when Python is older than 3.11."""
  need = '.'.join(map(str, MIN_PYTHON))
  code = (f'import sys; sys.exit(0 if sys.version_info >= {MIN_PYTHON} else '
          f'"lsc_align needs Python >= {need}; this worker has " + sys.version.split()[0])')
  return f'{python} {shlex.join(["-c", code])}'


def install_script(python: str = 'python3', setup: str | None = None) -> str:
  """Remote script: unpack the tarball into ~/lsc_align (replacing it) and pip-install it.

  Args:
    python: interpreter on the workers; inserted as shell code, so `~/venv/bin/python` expands.
    setup: optional shell code run first (e.g. installing Python 3.11); the caller quotes it.
  """
  steps = [f'{{ {setup}; }}'] if setup else []
  steps += [
      f'rm -rf {REMOTE_DIR}', f'mkdir -p {REMOTE_DIR}',
      f'tar -xzf {REMOTE_TARBALL} -C {REMOTE_DIR}', f'rm -f {REMOTE_TARBALL}',
      f'cd {REMOTE_DIR}', python_check_script(python),
      f'{python} -m pip install -e .',
      f'{python} -m pip install {shlex.quote(JAX_TPU_REQUIREMENT)}',
  ]
  return ' && '.join(steps)


def job_argv(subcommand: str, gin_files: Sequence[str] = (), gin_params: Sequence[str] = (),
             run_dir: str | None = None, extra_args: Sequence[str] = (),
             run_dir_flag: str = '--run_dir') -> list[str]:
  """argv after the interpreter: `-m lsc_align.cli SUB [extra] [--run_dir D] [--gin_file F]..
  [--gin_param B]..`; ``run_dir_flag`` names the directory flag (`--out` for `demo`).

  `python -m lsc_align.cli` calls the same function as the `lsc-align` script, without relying on
  pip's script directory being on the PATH of a non-login ssh shell.
  """
  argv = ['-m', 'lsc_align.cli', subcommand, *extra_args]
  if run_dir is not None:
    argv += [run_dir_flag, run_dir]
  for name in gin_files:
    argv += ['--gin_file', name]
  for binding in gin_params:
    argv += ['--gin_param', binding]
  return argv


def parse_env(assignments: Sequence[str]) -> dict[str, str]:
  """['K=V', ...] -> {'K': 'V'} in order.

  Raises:
    ValueError: an item is not NAME=VALUE with NAME a shell variable name (names --env).
  """
  env: dict[str, str] = {}
  for item in assignments:
    key, sep, value = item.partition('=')
    if not sep or not _ENV_NAME.match(key):
      raise ValueError(f'--env {item!r}: expected NAME=VALUE with NAME like XLA_FLAGS')
    env[key] = value
  return env


def worker_env(accelerator_type: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
  """Environment for the job: LSC_ALIGN_DISTRIBUTED=auto on multi-host slices, then ``extra``.

  lsc_align.distributed.maybe_initialize() then calls jax.distributed.initialize() with JAX's own
  TPU cluster detection; on one host nothing is set and the job runs as a single process.
  """
  env = {DISTRIBUTED_ENV: 'auto'} if num_hosts(accelerator_type) > 1 else {}
  env.update(extra or {})
  return env


def run_script(jobs: Sequence[tuple[str | None, Sequence[str]]], python: str = 'python3',
               env: Mapping[str, str] | None = None) -> str:
  """Remote script running each job's argv in ~/lsc_align, in order, stopping at the first failure.

  Args:
    jobs: (label, argv) pairs; a label is echoed before its job (None: no echo).
    python: interpreter on the workers (shell code, as in install_script).
    env: exported before the first job.

  Returns:
    `cd lsc_align && export K=V && [echo LABEL &&] PYTHON ARGV && ...`: joined with `&&`, so the
    script's exit status is that of the first job that fails (0 if none does).
  """
  steps = [f'cd {REMOTE_DIR}']
  for key, value in (env or {}).items():
    if not _ENV_NAME.match(key):
      raise ValueError(f'environment variable name {key!r} is not a shell name')
    steps.append(f'export {key}={shlex.quote(value)}')
  for label, argv in jobs:
    if label is not None:
      steps.append(shlex.join(['echo', label]))
    steps.append(f'{python} {shlex.join(argv)}')
  return ' && '.join(steps)
