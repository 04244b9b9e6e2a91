"""Tests for launch/: gcloud command construction, dry-run output, quoting through two shells,
sweep expansion, flag errors, and real runs against a fake `gcloud` script (streamed, prefixed
logs; exit codes; reuse of a READY VM; install unpacking a real `git archive`)."""
import argparse
import io
import json
import os
import pathlib
import shlex
import subprocess
import sys
import textwrap
import time

import pytest

from launch import gcloud
from launch import runner
from launch import sweep
from launch import tpu

REPO = pathlib.Path(__file__).resolve().parent.parent
VM = gcloud.Tpu(name='lsc-test', zone='us-central2-b')
VM_IN_PROJECT = gcloud.Tpu(name='lsc-test', zone='us-central2-b', project='my-proj')

# Gin bindings that break naive quoting: quotes of both kinds, spaces, $, backslashes, ...
NASTY_BINDINGS = [
    "train_reward_model.property_name = 'harmless'",
    'run.data_dir = "gs://b/x"',
    'run.data_dir = \\"gs://b/x\\"',
    "ppo.note = 'it''s $HOME and `date` and $(whoami)'",
    'ppo.path = "C:\\\\dir\\\\file" ; echo pwned',
    "a.b = 'tab\tand  two spaces' # not a comment",
    "a.b = 'line one\nline two'",
    "a.b = ('x', \"y\", '\"z\"')",
]


def parse_flags(*argv: str) -> argparse.Namespace:
  """FLAGS as `lsc-align launch` would parse them (an argparse parser built from FLAGS only)."""
  parser = argparse.ArgumentParser()
  for flag, kwargs in tpu.FLAGS:
    parser.add_argument(flag, **kwargs)
  return parser.parse_args(list(argv))


BASE = ('--name', 'lsc-test', '--zone', 'us-central2-b')


# ---------------------------------------------------------------- command construction

def test_create_on_demand_spot_and_preemptible():
  assert gcloud.create_command(VM, 'v4-32') == [
      'gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'lsc-test', '--zone=us-central2-b',
      '--accelerator-type=v4-32', '--version=tpu-ubuntu2204-base']
  assert gcloud.create_command(VM_IN_PROJECT, 'v5litepod-16', spot=True) == [
      'gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'lsc-test', '--zone=us-central2-b',
      '--project=my-proj', '--accelerator-type=v5litepod-16', '--version=v2-alpha-tpuv5-lite',
      '--spot']
  assert gcloud.create_command(VM, 'v6e-8', 'my-image', preemptible=True)[-2:] == [
      '--version=my-image', '--preemptible']
  with pytest.raises(ValueError, match='exclusive'):
    gcloud.create_command(VM, 'v4-8', spot=True, preemptible=True)
  with pytest.raises(ValueError, match='v4-32'):
    gcloud.create_command(VM, 'tpu-32')


@pytest.mark.parametrize('accelerator,hosts,runtime', [
    ('v4-8', 1, 'tpu-ubuntu2204-base'), ('v4-32', 4, 'tpu-ubuntu2204-base'),
    ('v3-32', 4, 'tpu-ubuntu2204-base'), ('v5p-8', 1, 'v2-alpha-tpuv5'),
    ('v5p-128', 16, 'v2-alpha-tpuv5'), ('v5litepod-8', 1, 'v2-alpha-tpuv5-lite'),
    ('v5litepod-16', 4, 'v2-alpha-tpuv5-lite'), ('v6e-256', 64, 'v2-alpha-tpuv6e')])
def test_hosts_and_runtime_per_accelerator(accelerator, hosts, runtime):
  assert gcloud.num_hosts(accelerator) == hosts
  assert gcloud.default_runtime_version(accelerator) == runtime


def test_describe_scp_ssh_delete_and_archive():
  assert gcloud.describe_command(VM_IN_PROJECT, fmt='value(state)') == [
      'gcloud', 'compute', 'tpus', 'tpu-vm', 'describe', 'lsc-test', '--zone=us-central2-b',
      '--project=my-proj', '--format=value(state)']
  assert gcloud.scp_command(VM, '/tmp/a.tar.gz') == [
      'gcloud', 'compute', 'tpus', 'tpu-vm', 'scp', '/tmp/a.tar.gz', 'lsc-test:lsc_align.tar.gz',
      '--zone=us-central2-b', '--worker=all', '--quiet']
  assert gcloud.ssh_command(VM, 'echo hi') == [
      'gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'lsc-test', '--zone=us-central2-b',
      '--worker=all', '--quiet', '--command=echo hi']
  assert gcloud.delete_command(VM) == [
      'gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', 'lsc-test', '--zone=us-central2-b',
      '--quiet']
  assert gcloud.archive_command('/r', '/tmp/a.tar.gz', 'abc123') == [
      'git', '-C', '/r', 'archive', '--format=tar.gz', '--output=/tmp/a.tar.gz', 'abc123']


def test_install_script_unpacks_then_installs_project_and_jax_tpu():
  words = shlex.split(gcloud.install_script())
  assert words[:8] == ['rm', '-rf', 'lsc_align', '&&', 'mkdir', '-p', 'lsc_align', '&&']
  script = gcloud.install_script(setup='sudo apt-get install -y python3.11')
  assert script.startswith('{ sudo apt-get install -y python3.11; } && rm -rf lsc_align')
  assert script.endswith("python3 -m pip install -e . && python3 -m pip install 'jax[tpu]==0.10.2'")
  assert gcloud.install_script('~/venv/bin/python').endswith(
      "~/venv/bin/python -m pip install 'jax[tpu]==0.10.2'")


def test_jax_tpu_pin_matches_requirements():
  pins = [l for l in (REPO / 'requirements.txt').read_text().splitlines() if l.startswith('jax==')]
  assert pins == [gcloud.JAX_TPU_REQUIREMENT.replace('[tpu]', '')]


def test_worker_env_uses_distributed_module_names():
  from lsc_align import distributed  # pylint: disable=g-import-not-at-top
  assert gcloud.DISTRIBUTED_ENV == distributed.ENV_MODE
  pod = gcloud.worker_env('v4-32', {'XLA_FLAGS': '--x=1'})
  assert pod == {distributed.ENV_MODE: 'auto', 'XLA_FLAGS': '--x=1'}
  spec = distributed.detect_cluster(pod)
  assert spec is not None and spec.source == distributed.ENV_MODE
  assert gcloud.worker_env('v4-8') == {}
  assert distributed.detect_cluster(gcloud.worker_env('v5litepod-8')) is None


def test_run_script_exports_env_and_chains_jobs():
  script = gcloud.run_script([(None, ['-m', 'lsc_align.cli', 'sft', '--run_dir', 'gs://b/r'])],
                             env={'LSC_ALIGN_DISTRIBUTED': 'auto', 'XLA_FLAGS': 'a b'})
  assert script == ("cd lsc_align && export LSC_ALIGN_DISTRIBUTED=auto && "
                    "export XLA_FLAGS='a b' && python3 -m lsc_align.cli sft --run_dir gs://b/r")
  with pytest.raises(ValueError, match='--env'):
    gcloud.parse_env(['1BAD=x'])


# ---------------------------------------------------------------- quoting: two shell layers

def write_fake_python(bin_dir: pathlib.Path, fail_on: str | None = None) -> pathlib.Path:
  """A `python3` that appends its argv (JSON) to $FAKE_PYTHON_LOG; exits 7 if argv has fail_on."""
  path = bin_dir / 'python3'
  path.write_text(textwrap.dedent(f"""\
      #!{sys.executable}
      import json, os, sys
      with open(os.environ['FAKE_PYTHON_LOG'], 'a') as f:
        f.write(json.dumps(sys.argv[1:]) + '\\n')
      sys.exit(7 if {fail_on!r} is not None and any({fail_on!r} in a for a in sys.argv) else 0)
      """))
  path.chmod(0o755)
  return path


FAKE_GCLOUD = f"""\
#!{sys.executable}
# Fake gcloud: logs argv; describe answers $FAKE_STATE (absent: NOT_FOUND); scp copies into
# $FAKE_REMOTE_HOME; ssh runs --command with bash there (as sshd would) or prints two lines.
import json, os, shutil, subprocess, sys, time
args = sys.argv[1:]
with open(os.environ['FAKE_GCLOUD_LOG'], 'a') as f:
  f.write(json.dumps(args) + '\\n')
verb = args[3]
home = os.environ.get('FAKE_REMOTE_HOME')
if verb == 'describe':
  if 'FAKE_STATE' not in os.environ:
    print("ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND: Resource 'x' was not found",
          file=sys.stderr)
    sys.exit(1)
  print(os.environ['FAKE_STATE'])
elif verb == 'scp' and home:
  shutil.copy(args[4], os.path.join(home, args[5].split(':', 1)[1]))
elif verb == 'ssh':
  command = next(a[len('--command='):] for a in args if a.startswith('--command='))
  if home:
    sys.exit(subprocess.call(['bash', '-c', command], cwd=home))
  print('worker 0: first line', flush=True)
  time.sleep(float(os.environ.get('FAKE_PAUSE', '0')))
  print('worker 1: second line', file=sys.stderr, flush=True)
  sys.exit(int(os.environ.get('FAKE_RC', '0')))
else:
  print('fake gcloud', verb)
"""


@pytest.fixture
def fake(tmp_path, monkeypatch):
  """A fake gcloud and python3 on PATH, a fake remote home; returns a namespace of paths."""
  bin_dir = tmp_path / 'bin'
  home = tmp_path / 'remote_home'
  bin_dir.mkdir()
  (home / 'lsc_align').mkdir(parents=True)
  gcloud_path = bin_dir / 'gcloud'
  gcloud_path.write_text(FAKE_GCLOUD)
  gcloud_path.chmod(0o755)
  write_fake_python(bin_dir)
  logs = argparse.Namespace(gcloud=str(gcloud_path), home=home, bin=bin_dir,
                            gcloud_log=tmp_path / 'gcloud.jsonl',
                            python_log=tmp_path / 'python.jsonl')
  monkeypatch.setenv('PATH', f'{bin_dir}{os.pathsep}{os.environ["PATH"]}')
  monkeypatch.setenv('FAKE_GCLOUD_LOG', str(logs.gcloud_log))
  monkeypatch.setenv('FAKE_PYTHON_LOG', str(logs.python_log))
  for name in ('FAKE_STATE', 'FAKE_REMOTE_HOME', 'FAKE_RC', 'FAKE_PAUSE'):
    monkeypatch.delenv(name, raising=False)
  return logs


def read_jsonl(path: pathlib.Path) -> list[list[str]]:
  return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize('binding', NASTY_BINDINGS)
def test_binding_survives_local_shell_and_remote_bash(binding, fake, monkeypatch, capsys):
  args = parse_flags('--action', 'run', *BASE, '--accelerator_type', 'v4-8', '--subcommand',
                     'train-rm', '--run_dir', 'gs://b/run dir', '--job_gin_param', binding,
                     '--dry_run')
  assert tpu.main(args) == 0
  line = capsys.readouterr().out.strip()
  job = ['-m', 'lsc_align.cli', 'train-rm', '--run_dir', 'gs://b/run dir',
         '--gin_param', binding]
  # Layer 1, local shell: the printed line splits back into gcloud's argv.
  argv = shlex.split(line)
  script = argv[-1][len('--command='):]
  assert argv[:-1] == gcloud.ssh_command(VM, '')[:-1]
  # Layer 2, remote bash: the script splits into cd/&&/python3 + exactly the job's argv.
  assert shlex.split(script) == ['cd', 'lsc_align', '&&', 'python3', *job]
  # Both layers for real: bash runs the printed line; fake gcloud runs --command with bash.
  monkeypatch.setenv('FAKE_REMOTE_HOME', str(fake.home))
  line = line.replace('gcloud', shlex.quote(fake.gcloud), 1)
  subprocess.run(['bash', '-c', line], check=True)
  assert read_jsonl(fake.python_log) == [job]


# ---------------------------------------------------------------- dry run

def test_dry_run_all_prints_exact_commands(capsys):
  args = parse_flags('--action', 'all', *BASE, '--accelerator_type', 'v4-32', '--spot',
                     '--subcommand', 'sft', '--run_dir', 'gs://b/sft', '--job_gin_file',
                     'world/tiny.gin', '--delete_after', '--dry_run')
  assert tpu.main(args) == 0
  lines = capsys.readouterr().out.splitlines()
  tarball = tpu.tarball_path('lsc-test')
  loc = '--zone=us-central2-b'
  assert lines[:4] == [
      f"gcloud compute tpus tpu-vm describe lsc-test {loc} '--format=value(state)'",
      f'gcloud compute tpus tpu-vm create lsc-test {loc} --accelerator-type=v4-32 '
      '--version=tpu-ubuntu2204-base --spot',
      f'git -C {shlex.quote(tpu.REPO)} archive --format=tar.gz --output={tarball} HEAD',
      f'gcloud compute tpus tpu-vm scp {tarball} lsc-test:lsc_align.tar.gz {loc} --worker=all '
      '--quiet']
  assert shlex.split(lines[4]) == gcloud.ssh_command(VM, gcloud.install_script())
  assert shlex.split(lines[5]) == [
      'gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'lsc-test', loc, '--worker=all', '--quiet',
      '--command=cd lsc_align && export LSC_ALIGN_DISTRIBUTED=auto && python3 -m lsc_align.cli '
      'sft --run_dir gs://b/sft --gin_file world/tiny.gin']
  assert lines[6:] == [f'gcloud compute tpus tpu-vm delete lsc-test {loc} --quiet']


def test_dry_run_status_delete_and_gcloud_override(capsys):
  assert tpu.main(parse_flags('--action', 'status', *BASE, '--project', 'p', '--dry_run')) == 0
  assert tpu.main(parse_flags('--action', 'delete', *BASE, '--dry_run', '--gcloud',
                              '/opt/g cloud/gcloud')) == 0
  assert capsys.readouterr().out.splitlines() == [
      'gcloud compute tpus tpu-vm describe lsc-test --zone=us-central2-b --project=p',
      "'/opt/g cloud/gcloud' compute tpus tpu-vm delete lsc-test --zone=us-central2-b --quiet"]


def test_python_m_launch_tpu_entry_point():
  result = subprocess.run([sys.executable, '-m', 'launch.tpu', 'delete', *BASE, '--dry_run'],
                          cwd=REPO, capture_output=True, text=True, check=True)
  assert result.stdout == ('gcloud compute tpus tpu-vm delete lsc-test --zone=us-central2-b '
                           '--quiet\n')


def test_registers_as_lsc_align_subcommand(capsys):
  """Through the entry point setup.py declares: the library's own table does not name it."""
  import gin  # pylint: disable=g-import-not-at-top
  from lsc_align import cli  # pylint: disable=g-import-not-at-top
  assert 'launch' not in cli.COMMANDS
  assert cli.plugin_commands()['launch'].run is tpu.main
  try:
    assert cli.main(['launch', '--action', 'run', *BASE, '--accelerator_type', 'v4-8',
                     '--subcommand', 'ppo', '--job_gin_param', 'ppo.kl_coef = 0.1',
                     '--dry_run']) == 0
  finally:
    gin.clear_config()
  script = shlex.split(capsys.readouterr().out)[-1]
  assert script.endswith("python3 -m lsc_align.cli ppo --gin_param 'ppo.kl_coef = 0.1'")


# ---------------------------------------------------------------- flag errors

def test_missing_required_flag_names_it(capsys):
  with pytest.raises(SystemExit) as exit_info:
    tpu.cli(['run', '--name', 'x'])
  assert exit_info.value.code == 2
  assert '--zone' in capsys.readouterr().err
  with pytest.raises(SystemExit):
    tpu.cli(['--name', 'x', '--zone', 'z'])
  assert 'ACTION or --action' in capsys.readouterr().err


@pytest.mark.parametrize('extra,flag', [
    (('--action', 'create'), '--accelerator_type'),
    (('--action', 'run', '--accelerator_type', 'v4-8'), '--subcommand'),
    (('--action', 'run', '--accelerator_type', 'v4-8', '--subcommand', 'reward-model'),
     "--subcommand 'reward-model' is not an lsc-align command"),
    (('--action', 'create', '--accelerator_type', 'v9-8'), '--accelerator_type'),
    (('--action', 'create', '--accelerator_type', 'v4-8', '--spot', '--preemptible'), '--spot'),
    (('--action', 'status', '--sweep', 'ppo.kl_coef'), '--sweep'),
    (('--action', 'status', '--sweep', 'ppo.kl_coef=0.1,,0.2'), '--sweep'),
    (('--action', 'status', '--sweep', 'a b=1'), '--sweep'),
    (('--action', 'status', '--sweep', 'x.a=1', '--sweep', 'x.a=2'), '--sweep'),
    (('--action', 'status', '--sweep', 'x.a=1'), '--run_dir'),
    (('--action', 'status', '--env', 'NOEQUALS'), '--env'),
    (('--action', 'status', '--name', 'Bad_Name'), '--name'),
    (('--action', 'status', '--run_dir_flag', 'out'), '--run_dir_flag'),
    (('--action', 'status', '--name', 'a' * 62, '--sweep', 'x.a=1,2', '--run_dir', 'r',
      '--sweep_mode', 'per_point'), '--name'),
])
def test_bad_flags_give_an_error_naming_the_flag(extra, flag, capsys):
  assert tpu.main(parse_flags(*BASE, *extra, '--dry_run')) == 2
  captured = capsys.readouterr()
  assert captured.out == ''
  assert captured.err.startswith('error: ') and flag in captured.err


# ---------------------------------------------------------------- sweeps

def test_sweep_expansion_order_names_and_bindings():
  spec = sweep.parse_sweep_flags(['ppo.kl_coef=0.01, 0.05', 'seed=0,1'])
  assert spec == {'ppo.kl_coef': ['0.01', '0.05'], 'seed': ['0', '1']}
  points = sweep.expand(spec)
  assert [p.name for p in points] == ['kl_coef=0.01,seed=0', 'kl_coef=0.01,seed=1',
                                      'kl_coef=0.05,seed=0', 'kl_coef=0.05,seed=1']
  assert points[1] == sweep.SweepPoint(1, 'kl_coef=0.01,seed=1', ('ppo.kl_coef = 0.01', 'seed = 1'))
  assert sweep.expand({'ppo.kl_coef': [0.01, 0.05], 'seed': [0, 1]}) == points
  assert sweep.expand({}) == [sweep.SweepPoint(0, '', ())]
  assert sweep.point_run_dir('gs://b/runs/', points[2]) == 'gs://b/runs/kl_coef=0.05,seed=0'
  assert sweep.point_run_dir('gs://b/runs', sweep.expand({})[0]) == 'gs://b/runs'


def test_sweep_values_split_outside_brackets_and_quotes():
  spec = sweep.parse_sweep_flags(["run_learner.seed=[1,2],[3,4]", "x.mode='a,b','c'", 'y.r=@f,%M'])
  assert spec == {'run_learner.seed': ['[1,2]', '[3,4]'], 'x.mode': ["'a,b'", "'c'"],
                  'y.r': ['@f', '%M']}
  assert [p.bindings[0] for p in sweep.expand({'s': spec['run_learner.seed']})] == [
      's = [1,2]', 's = [3,4]']


@pytest.mark.parametrize('flag, message', [
    ('run_learner.seed=[1,2', "unclosed bracket in '[1,2'"),
    ('run_learner.seed=1]', "unbalanced ']'"),
    ("x.mode='a", 'unclosed \''),
    ('x.mode=harmless', "'harmless' is not a gin value (strings need quotes"),
    ('x.a=$1', "'$1' is not a gin value"),
])
def test_sweep_values_that_are_not_gin_values(flag, message):
  with pytest.raises(sweep.SweepError) as info:
    sweep.parse_sweep_flags([flag])
  assert message in str(info.value) and flag in str(info.value)


def test_sweep_names_disambiguate_and_sanitise():
  points = sweep.expand({'a/ppo.lr': ['1'], 'b/ppo.lr': ['2'], 'run.data': ["'gs://b/x'"]})
  assert points[0].name == 'a_ppo.lr=1,b_ppo.lr=2,data=gs___b_x'
  assert points[0].bindings[2] == "run.data = 'gs://b/x'"
  with pytest.raises(sweep.SweepError, match='share'):
    sweep.expand({'x.p': ["'a/b'", "'a_b'"]})


def test_sequential_sweep_is_one_vm_running_points_in_order():
  args = parse_flags('--action', 'run', *BASE, '--accelerator_type', 'v4-8', '--subcommand',
                     'ppo', '--run_dir', 'runs', '--sweep', 'ppo.kl_coef=0.01,0.05',
                     '--sweep', 'seed=0,1')
  (job,) = tpu.plan_jobs(args)
  assert job.tpu.name == 'lsc-test'
  words = shlex.split(job.script)
  assert [w for w in words if w.startswith('runs/')] == [
      'runs/kl_coef=0.01,seed=0', 'runs/kl_coef=0.01,seed=1', 'runs/kl_coef=0.05,seed=0',
      'runs/kl_coef=0.05,seed=1']
  assert words.count('&&') == 2 * 4 and ';' not in job.script


def test_run_dir_flag_names_the_sub_command_directory_flag():
  args = parse_flags('--action', 'run', *BASE, '--accelerator_type', 'v4-8', '--subcommand',
                     'demo', '--run_dir', 'gs://b/demo', '--run_dir_flag=--out', '--sweep',
                     'WorldConfig.seed=0,1')
  (job,) = tpu.plan_jobs(args)
  words = shlex.split(job.script)
  assert [words[i + 1] for i, w in enumerate(words) if w == '--out'] == [
      'gs://b/demo/seed=0', 'gs://b/demo/seed=1']
  assert '--run_dir' not in words


def test_per_point_sweep_is_one_vm_per_point(capsys):
  args = parse_flags('--action', 'all', *BASE, '--accelerator_type', 'v4-8', '--subcommand',
                     'ppo', '--run_dir', 'runs', '--sweep', 'ppo.kl_coef=0.01,0.05',
                     '--sweep_mode', 'per_point', '--delete_after', '--dry_run')
  jobs = tpu.plan_jobs(args)
  assert [j.tpu.name for j in jobs] == ['lsc-test-0', 'lsc-test-1']
  assert "'ppo.kl_coef = 0.05'" not in jobs[0].script and 'runs/kl_coef=0.05' in jobs[1].script
  assert tpu.main(args) == 0
  lines = capsys.readouterr().out.splitlines()
  assert [l.split()[4:6] for l in lines if l.startswith('gcloud') and ' delete ' in l] == [
      ['delete', 'lsc-test-0'], ['delete', 'lsc-test-1']]
  assert len(lines) == 2 * 7


def test_sequential_script_stops_at_first_failure(fake, tmp_path):
  write_fake_python(fake.bin, fail_on='seed = 1')
  args = parse_flags('--action', 'run', *BASE, '--accelerator_type', 'v4-8', '--subcommand',
                     'ppo', '--run_dir', 'runs', '--sweep', 'seed=0,1,2')
  (job,) = tpu.plan_jobs(args)
  result = subprocess.run(['bash', '-c', job.script], cwd=fake.home, capture_output=True,
                          text=True)
  assert result.returncode == 7
  assert result.stdout.splitlines() == ['[point 1/3] seed=0', '[point 2/3] seed=1']
  assert [a[a.index('--run_dir') + 1] for a in read_jsonl(fake.python_log)] == [
      'runs/seed=0', 'runs/seed=1']


# ---------------------------------------------------------------- runs against a fake gcloud

class TimedOut(io.StringIO):
  """Records when each line was written."""

  def __init__(self):
    super().__init__()
    self.times: list[float] = []

  def write(self, s: str) -> int:
    self.times.append(time.monotonic())
    return super().write(s)


def test_run_streams_prefixed_lines_and_propagates_exit_code(fake, monkeypatch):
  monkeypatch.setenv('FAKE_RC', '3')
  monkeypatch.setenv('FAKE_PAUSE', '0.4')
  out = TimedOut()
  args = parse_flags('--action', 'run', *BASE, '--accelerator_type', 'v4-8', '--subcommand',
                     'ppo', '--gcloud', fake.gcloud)
  assert tpu.main(args, runner.Executor(gcloud=fake.gcloud, out=out)) == 3
  lines = out.getvalue().splitlines()
  assert lines[0].startswith(f'[lsc-test] $ {shlex.quote(fake.gcloud)} compute tpus tpu-vm ssh')
  assert lines[1:] == ['[lsc-test] worker 0: first line', '[lsc-test] worker 1: second line']
  assert out.times[2] - out.times[1] > 0.3  # the first line was shown before the command ended
  assert read_jsonl(fake.gcloud_log)[0][3] == 'ssh'


def test_create_reuses_a_ready_vm(fake, monkeypatch, capsys):
  monkeypatch.setenv('FAKE_STATE', 'READY')
  args = parse_flags('--action', 'create', *BASE, '--accelerator_type', 'v4-8',
                     '--gcloud', fake.gcloud)
  assert tpu.main(args) == 0
  assert [a[3] for a in read_jsonl(fake.gcloud_log)] == ['describe']
  assert 'reusing TPU VM lsc-test (READY)' in capsys.readouterr().out


def test_create_when_absent_and_refuse_other_states(fake, monkeypatch, capsys):
  args = parse_flags('--action', 'create', *BASE, '--accelerator_type', 'v4-8', '--spot',
                     '--gcloud', fake.gcloud)
  assert tpu.main(args) == 0
  logged = read_jsonl(fake.gcloud_log)
  assert [a[3] for a in logged] == ['describe', 'create']
  assert logged[1] == gcloud.create_command(VM, 'v4-8', spot=True)[1:]
  monkeypatch.setenv('FAKE_STATE', 'PREEMPTED')
  assert tpu.main(args) == 1
  assert 'state PREEMPTED' in capsys.readouterr().out
  assert [a[3] for a in read_jsonl(fake.gcloud_log)] == ['describe', 'create', 'describe']


def test_delete_after_runs_even_when_the_job_fails(fake, monkeypatch):
  monkeypatch.setenv('FAKE_RC', '5')
  args = parse_flags('--action', 'run', *BASE, '--accelerator_type', 'v4-8', '--subcommand',
                     'ppo', '--delete_after', '--gcloud', fake.gcloud)
  assert tpu.main(args, runner.Executor(gcloud=fake.gcloud, out=io.StringIO())) == 5
  assert [a[3] for a in read_jsonl(fake.gcloud_log)] == ['ssh', 'delete']


def test_install_ships_git_archive_and_pip_installs_on_workers(fake, monkeypatch):
  monkeypatch.setenv('FAKE_REMOTE_HOME', str(fake.home))
  (fake.home / 'lsc_align' / 'stale.txt').write_text('from an old install')
  args = parse_flags('--action', 'install', '--name', 'lsc-install-test', '--zone', 'z',
                     '--gcloud', fake.gcloud)
  assert tpu.main(args, runner.Executor(gcloud=fake.gcloud, out=io.StringIO())) == 0
  assert [a[3] for a in read_jsonl(fake.gcloud_log)] == ['scp', 'ssh']
  installed = fake.home / 'lsc_align'
  assert (installed / 'setup.py').is_file() and (installed / 'lsc_align' / 'cli.py').is_file()
  assert not (installed / 'stale.txt').exists() and not (fake.home / 'lsc_align.tar.gz').exists()
  assert not os.path.exists(tpu.tarball_path('lsc-install-test'))
  calls = read_jsonl(fake.python_log)
  assert calls[0][0] == '-c' and 'sys.version_info >= (3, 11)' in calls[0][1]
  assert calls[1:] == [['-m', 'pip', 'install', '-e', '.'],
                       ['-m', 'pip', 'install', 'jax[tpu]==0.10.2']]


def test_per_point_runs_every_vm_and_returns_the_first_failure(fake, monkeypatch, capsys):
  monkeypatch.setenv('FAKE_REMOTE_HOME', str(fake.home))
  write_fake_python(fake.bin, fail_on='seed = 1')
  args = parse_flags('--action', 'run', *BASE, '--accelerator_type', 'v4-8', '--subcommand',
                     'ppo', '--run_dir', 'runs', '--sweep', 'seed=0,1,2', '--sweep_mode',
                     'per_point', '--gcloud', fake.gcloud)
  assert tpu.main(args) == 7
  captured = capsys.readouterr()
  assert sorted(a[4] for a in read_jsonl(fake.gcloud_log)) == [
      'lsc-test-0', 'lsc-test-1', 'lsc-test-2']
  for index in range(3):
    assert f'[lsc-test-{index}] [point {index + 1}/3] seed={index}' in captured.out
  assert captured.err == '[lsc-test-1] failed with exit code 7\n'


def test_missing_gcloud_binary_is_a_clear_error(tmp_path):
  out = io.StringIO()
  ex = runner.Executor(gcloud=str(tmp_path / 'no-gcloud'), out=out)
  assert ex.stream(gcloud.delete_command(VM), '[x] ') == runner.NOT_FOUND_EXIT
  args = parse_flags('--action', 'create', *BASE, '--accelerator_type', 'v4-8')
  assert tpu.main(args, ex) == runner.NOT_FOUND_EXIT
  assert out.getvalue().count('--gcloud PATH') == 2 and ' create ' not in out.getvalue()
