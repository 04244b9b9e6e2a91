"""Sweeps as explicit lists of gin bindings: parse `--sweep KEY=V1,V2`, expand a grid, name points.

A spec maps a gin binding key (`ppo.kl_coef`, or a macro such as `seed`) to its values, in order.
`expand` takes the Cartesian product with the last key varying fastest, so

    {'ppo.kl_coef': ['0.01', '0.05'], 'seed': ['0', '1']}

gives, in this order,

    kl_coef=0.01,seed=0   kl_coef=0.01,seed=1   kl_coef=0.05,seed=0   kl_coef=0.05,seed=1

each with bindings like ('ppo.kl_coef = 0.01', 'seed = 0'). A point's name is its run-directory
suffix; it uses the last component of each key unless two keys share it. Values given as strings
are gin literal text, used as typed (`'harmless'` with its quotes is a gin string); other Python
values are written with repr (numbers, bools, None, tuples). Values on the command line are split
on the commas outside brackets and quotes (`seed=[1,2],[3,4]` is two list values), and each must
parse as a gin value (references `@name` and macros `%NAME` are checked by the job itself).
"""
from __future__ import annotations

import dataclasses
import itertools
import re
import tokenize
from typing import Any, Mapping, Sequence

import gin

MODES = ('sequential', 'per_point')

_KEY = re.compile(r'^[A-Za-z_][A-Za-z0-9_./]*$')
_UNSAFE = re.compile(r'[^A-Za-z0-9._+-]')


class SweepError(ValueError):
  """A --sweep flag or spec is malformed; the message names the flag and the item."""


@dataclasses.dataclass(frozen=True)
class SweepPoint:
  """One point of a sweep: its position, its run-directory suffix and its gin bindings."""
  index: int
  name: str
  bindings: tuple[str, ...]


def parse_sweep_flags(flags: Sequence[str]) -> dict[str, list[str]]:
  """['ppo.kl_coef=0.01,0.05', 'seed=0,1'] -> {'ppo.kl_coef': ['0.01', '0.05'], 'seed': ['0', '1']}.

  Raises:
    SweepError: an item without '=', a bad key, an empty value or a key given twice.
  """
  spec: dict[str, list[str]] = {}
  for flag in flags:
    key, sep, values_text = flag.partition('=')
    key = key.strip()
    if not sep:
      raise SweepError(f'--sweep {flag!r}: expected KEY=V1,V2,... (e.g. ppo.kl_coef=0.01,0.05)')
    if not _KEY.match(key):
      raise SweepError(f'--sweep {flag!r}: {key!r} is not a gin binding key such as ppo.kl_coef')
    values = [v.strip() for v in _split_values(flag, values_text)]
    if not all(values):
      raise SweepError(f'--sweep {flag!r}: empty value (values are comma-separated, none empty)')
    for value in values:
      _check_gin_value(flag, value)
    if key in spec:
      raise SweepError(f'--sweep {flag!r}: {key} is swept twice; give all its values in one flag')
    spec[key] = values
  return spec


_OPEN = {'[': ']', '(': ')', '{': '}'}


def _split_values(flag: str, text: str) -> list[str]:
  """Splits on the commas outside brackets and quotes; unbalanced text is a SweepError."""
  values, current, closing, quote = [], [], [], None
  for char in text:
    if quote:
      quote = None if char == quote else quote
    elif char in '\'"':
      quote = char
    elif char in _OPEN:
      closing.append(_OPEN[char])
    elif char in _OPEN.values():
      if not closing or closing.pop() != char:
        raise SweepError(f'--sweep {flag!r}: unbalanced {char!r}')
    elif char == ',' and not closing:
      values.append(''.join(current))
      current = []
      continue
    current.append(char)
  if quote or closing:
    raise SweepError(f'--sweep {flag!r}: unclosed {quote or "bracket"} in {text!r}')
  values.append(''.join(current))
  return values


def _check_gin_value(flag: str, value: str) -> None:
  if value.startswith(('@', '%')):
    return  # a reference or macro: resolved when the job parses its bindings
  try:
    gin.config.parse_value(value)
  except (SyntaxError, ValueError, tokenize.TokenError) as e:
    hint = ' (strings need quotes, e.g. \'harmless\')' if value.isidentifier() else ''
    raise SweepError(f'--sweep {flag!r}: {value!r} is not a gin value{hint}') from e


def _literal(value: Any) -> str:
  return value if isinstance(value, str) else repr(value)


def _display(value: str) -> str:
  return _UNSAFE.sub('_', value.strip('\'"')) or '_'


def _short_keys(keys: Sequence[str]) -> list[str]:
  short = [re.split(r'[./]', key)[-1] for key in keys]
  return [s if short.count(s) == 1 else key.replace('/', '_') for s, key in zip(short, keys)]


def expand(spec: Mapping[str, Sequence[Any]]) -> list[SweepPoint]:
  """All points of the grid, last key fastest; an empty spec gives one point with no bindings.

  Raises:
    SweepError: a key has no values, or two points would get the same name.
  """
  keys = list(spec)
  for key in keys:
    if not len(spec[key]):
      raise SweepError(f'--sweep {key}: no values')
  short = _short_keys(keys)
  points = []
  for index, values in enumerate(itertools.product(*(spec[key] for key in keys))):
    literals = [_literal(v) for v in values]
    name = ','.join(f'{s}={_display(v)}' for s, v in zip(short, literals))
    bindings = tuple(f'{key} = {v}' for key, v in zip(keys, literals))
    points.append(SweepPoint(index=index, name=name, bindings=bindings))
  names = [p.name for p in points]
  if len(set(names)) != len(names):
    duplicate = next(n for n in names if names.count(n) > 1)
    raise SweepError(f'--sweep: two points would share the run directory {duplicate!r}')
  return points


def point_run_dir(base: str, point: SweepPoint) -> str:
  """`base/name` (local path or gs:// URL alike); ``base`` itself for the no-sweep point."""
  return f'{base.rstrip("/")}/{point.name}' if point.name else base


def point_vm_name(name: str, point: SweepPoint) -> str:
  """The TPU VM of a point in per_point mode: `NAME-INDEX` (TPU names allow no '=' or ',').

  The no-sweep point keeps ``name``.
  """
  return f'{name}-{point.index}' if point.name else name
