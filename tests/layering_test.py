"""The layer rule of lsc_align, written down once and checked on every module's imports.

From the bottom up (a module may import its own package and anything on a lower floor; nothing
imports upward, and no two packages import each other, directly or through others):

    0  core modules: conventions, io_utils, stats, tf_import (and the configs package); above them
       gin_utils, partitioning, distributed, checkpointing, training_log
    1  rewards/   the transform, aggregation and reference math
    1  models/    T5 encoder reward model, decoder policy, sampling
    1  world/     the embedded preference world: data, gold, judge, diagnostics' gold
    2  data/      HH loaders, tfds builder, seqio tasks, vocabularies, array caches
    3  train/     the trainer skeleton, the loop, the reward-model and SFT trainers
    3½ align/     PPO / RLOO math, scoring step and learners, critic, best-of-k, the optimum,
                  π0 pools and references
    4  eval/      judging, win rates, reports, plots, run inspection, RM diagnostics
    5  pipeline/  experiment layout, stages, sweeps, the commands' functions
    6  cli        the flag table
    7  launch/, benchmarks/  beside the library, above it: they may import lsc_align, nothing
                  in lsc_align imports them, and they do not import each other (the launcher
                  adds its command to the CLI through an entry point, lsc_align.cli)

Imports inside functions count too: a late import is still a dependency.
"""
import ast
import collections
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / 'lsc_align'
# Top-level packages beside lsc_align whose imports are checked too (unit = the package).
OUTSIDE = ('launch', 'benchmarks')

FLOORS = {
    'lsc_align.io_utils': 0, 'lsc_align.stats': 0, 'lsc_align.tf_import': 0,
    'lsc_align.conventions': 0,
    'lsc_align.configs': 0, 'lsc_align': 0,
    # core modules that use io_utils
    'lsc_align.gin_utils': 0.5, 'lsc_align.partitioning': 0.5, 'lsc_align.distributed': 0.5,
    'lsc_align.checkpointing': 0.5, 'lsc_align.training_log': 0.5, 'lsc_align.run_lock': 0.5,
    'lsc_align.rewards': 1, 'lsc_align.models': 1, 'lsc_align.world': 1,
    'lsc_align.data': 2,
    'lsc_align.train': 3,
    'lsc_align.align': 3.5,
    'lsc_align.eval': 4,
    'lsc_align.pipeline': 5,
    'lsc_align.cli': 6,
    'launch': 7, 'benchmarks': 7,
}
# Packages on one floor that may import one another, in this direction only.
SIDEWAYS = {('lsc_align.models', 'lsc_align.rewards')}


def unit(module: str) -> str:
  """The package (lsc_align.<pkg>, launch, benchmarks) or top-level module a dotted module
  name belongs to."""
  parts = module.split('.')
  if parts[0] in OUTSIDE:
    return parts[0]
  if len(parts) >= 2 and (PACKAGE / parts[1]).is_dir():
    return '.'.join(parts[:2])
  return '.'.join(parts[:2]) if len(parts) >= 2 else module


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def source_files() -> list[pathlib.Path]:
  """The .py files of lsc_align and of the packages beside it (OUTSIDE)."""
  files = list(PACKAGE.rglob('*.py'))
  for name in OUTSIDE:
    files += (PACKAGE.parent / name).rglob('*.py')
  return sorted(files)


def imported_modules(path: pathlib.Path) -> set[str]:
  """Every lsc_align, launch or benchmarks module a file imports, anywhere in it (dotted)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      found.add(node.module)
      found.update(f'{node.module}.{a.name}' for a in node.names
                   if (PACKAGE.parent / f'{node.module}.{a.name}'.replace('.', '/')).exists()
                   or (PACKAGE.parent / (f'{node.module}.{a.name}'.replace('.', '/') + '.py'))
                   .exists())
  return {m for m in found
          if any(m == top or m.startswith(f'{top}.') for top in ('lsc_align', *OUTSIDE))}


def package_edges() -> dict[str, set[str]]:
  edges = collections.defaultdict(set)
  for path in source_files():
    source = unit(module_name(path))
    for target in map(unit, imported_modules(path)):
      if target != source:
        edges[source].add(target)
  return edges


def test_every_unit_has_a_floor():
  units = {unit(module_name(p)) for p in source_files()}
  assert units <= set(FLOORS), sorted(units - set(FLOORS))


def test_no_upward_imports():
  upward = []
  for path in source_files():
    source = unit(module_name(path))
    for module in sorted(imported_modules(path)):
      target = unit(module)
      if target == source or target == 'lsc_align':
        continue
      if FLOORS[target] > FLOORS[source] or (
          FLOORS[target] == FLOORS[source] and (source, target) not in SIDEWAYS):
        upward.append(f'{path.relative_to(PACKAGE.parent)} imports {module}')
  assert not upward, '\n'.join(upward)


def test_no_cycles_between_packages():
  edges = package_edges()
  state: dict[str, int] = {}

  def visit(node: str, trail: list[str]) -> None:
    state[node] = 1
    for nxt in sorted(edges.get(node, ())):
      if state.get(nxt) == 1:
        pytest.fail('import cycle: ' + ' -> '.join(trail[trail.index(nxt):] + [nxt])
                    if nxt in trail else f'import cycle through {nxt}')
      if nxt not in state:
        visit(nxt, trail + [nxt])
    state[node] = 2

  for node in sorted(edges):
    if node not in state:
      visit(node, [node])


def test_the_rule_catches_an_upward_import(tmp_path, monkeypatch):
  """The checks can fail: an upward import in a scratch package is reported."""
  fake = tmp_path / 'lsc_align'
  (fake / 'models').mkdir(parents=True)
  (fake / 'eval').mkdir()
  (fake / 'models' / 'bad.py').write_text('from lsc_align.eval import report\n')
  (fake / 'eval' / 'report.py').write_text('')
  monkeypatch.setattr(__import__(__name__), 'PACKAGE', fake)
  with pytest.raises(AssertionError, match='models/bad.py imports lsc_align.eval.report'):
    test_no_upward_imports()


def test_the_rule_catches_the_library_importing_the_launcher(tmp_path, monkeypatch):
  """lsc_align may not import launch/ (or benchmarks/), even inside a function."""
  fake = tmp_path / 'lsc_align'
  fake.mkdir()
  (fake / 'cli.py').write_text('def f():\n  from launch import tpu\n')
  (tmp_path / 'launch').mkdir()
  (tmp_path / 'launch' / 'tpu.py').write_text('from lsc_align import cli\n')
  (tmp_path / 'benchmarks').mkdir()
  monkeypatch.setattr(__import__(__name__), 'PACKAGE', fake)
  with pytest.raises(AssertionError, match='lsc_align/cli.py imports launch.tpu'):
    test_no_upward_imports()
