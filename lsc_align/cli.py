"""The `lsc-align` command line: parses flags and gin, then calls one library function.

Every sub-command takes `--gin_file` (repeatable; a path, or a name relative to configs/) and
`--gin_param` (repeatable bindings such as `train_reward_model.steps = 200`). Modules are
imported only when their command runs, so `lsc-align --help` stays fast.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from typing import Any, Sequence


@dataclasses.dataclass(frozen=True)
class Command:
  module: str
  function: str  # called as function(args: argparse.Namespace) -> int | None
  help: str
  flags: tuple[tuple[str, dict[str, Any]], ...] = ()


COMMANDS: dict[str, Command] = {
    'example': Command('lsc_align.rewards.example', 'main',
                       'print the reward library on the paper\'s worked examples'),
}


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='lsc-align', description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest='command', required=True)
  for name, command in COMMANDS.items():
    p = sub.add_parser(name, help=command.help, description=command.help)
    p.add_argument('--gin_file', action='append', default=[],
                   help='gin file (path, or name under configs/); repeatable')
    p.add_argument('--gin_param', action='append', default=[],
                   help='gin binding, e.g. "ppo.gamma = 0.05"; repeatable')
    for flag, kwargs in command.flags:
      p.add_argument(flag, **kwargs)
    p.set_defaults(_command=command)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  command: Command = args._command  # pylint: disable=protected-access
  fn = getattr(importlib.import_module(command.module), command.function)
  return int(fn(args) or 0)


if __name__ == '__main__':
  sys.exit(main())
