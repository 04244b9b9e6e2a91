"""Per-op time of compiled XLA programs on this backend, from a jax.profiler trace.

The CPU runtime records one trace event per executed HLO instruction (thunk), named after the
instruction. `op_times` runs a function under a trace, keeps the events whose names are
instructions of the given compiled programs, and sums their durations per instruction; `describe`
says what an instruction is (opcode, fusion contents, shape, and the jax source of its root), read
from the compiled HLO text. Control-flow instructions (while, conditional, call) contain others
and are left out, so the times add up to the time spent in leaf ops.
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import tempfile
from typing import Any, Callable, Iterable

import jax

_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+) = (\S+(?: \S+)*?) ([a-z][\w\-]*)\(')
_COMPUTATION = re.compile(r'^%?([\w.\-]+) \(.*\) -> .* \{$')
_CALLS = re.compile(r'calls=%?([\w.\-]+)')
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CONTAINERS = {'while', 'conditional', 'call', 'async-start', 'async-done'}
_NOTABLE = {'dot', 'convolution', 'reduce', 'exponential', 'log', 'tanh', 'logistic', 'rsqrt',
            'gather', 'scatter', 'dynamic-update-slice', 'dynamic-slice', 'sort',
            'rng-bit-generator', 'select', 'concatenate', 'transpose', 'copy', 'sine', 'cosine', 'divide', 'power',
            'reduce-window', 'pad', 'iota', 'compare', 'maximum', 'shift-right-logical', 'xor'}


class HloIndex:
  """Instructions of compiled programs: name -> (opcode, shape, notable fused ops, source)."""

  def __init__(self, hlo_texts: Iterable[str]):
    self.instructions: dict[str, dict[str, Any]] = {}
    computations: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
    for text in hlo_texts:
      current = None
      for line in text.splitlines():
        m = _COMPUTATION.match(line)
        if m:
          current = m.group(1)
          continue
        m = _INSTRUCTION.match(line)
        if not m or current is None:
          continue
        name, shape, opcode = m.groups()
        computations[current].append((opcode, line))
        calls = _CALLS.search(line)
        op_name = _OP_NAME.search(line)
        self.instructions[name] = {
            'opcode': opcode, 'shape': shape.split('{')[0],
            'calls': calls.group(1) if calls else None,
            'source': op_name.group(1) if op_name else ''}
    for info in self.instructions.values():
      if info['opcode'] == 'fusion' and info['calls'] in computations:
        body = computations[info['calls']]
        info['fused'] = sorted({op for op, _ in body if op in _NOTABLE})
        roots = [line for _, line in body if line.lstrip().startswith('ROOT')]
        m = _OP_NAME.search(roots[0]) if roots else None
        if m:
          info['source'] = m.group(1)

  def describe(self, name: str) -> str:
    info = self.instructions[name]
    kind = info['opcode'] + (f"[{','.join(info.get('fused', []))}]" if 'fused' in info else '')
    source = '/'.join(info['source'].split('/')[-3:])
    return f'{kind} {info["shape"]} <{source}>'


def op_times(fn: Callable[[], Any], index: HloIndex, calls: int) -> dict[str, float]:
  """Seconds per call spent in each leaf instruction of `index` while `fn()` runs `calls` times."""
  directory = tempfile.mkdtemp(prefix='hlo_profile_')
  jax.profiler.start_trace(directory, create_perfetto_trace=True)
  try:
    for _ in range(calls):
      jax.block_until_ready(fn())
  finally:
    jax.profiler.stop_trace()
  paths = glob.glob(os.path.join(directory, '**', '*.trace.json.gz'), recursive=True)
  with gzip.open(sorted(paths)[-1]) as f:
    trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  totals: dict[str, float] = collections.defaultdict(float)
  for e in events:
    name = e.get('name')
    if e.get('ph') != 'X' or name not in index.instructions:
      continue
    if index.instructions[name]['opcode'] in _CONTAINERS:
      continue
    totals[name] += e.get('dur', 0.0) * 1e-6 / calls
  return dict(totals)


def top_ops(times: dict[str, float], index: HloIndex, n: int = 12) -> list[dict[str, Any]]:
  """The n instructions with most time: seconds per call, share of all ops' time, description.

  Ops run on the runtime's worker threads, independent ones concurrently, so the seconds are
  thread-seconds and their sum can exceed the wall time.
  """
  total = sum(times.values())
  ranked = sorted(times.items(), key=lambda kv: -kv[1])[:n]
  return [{'op': name, 'seconds': s, 'share_of_op_time': s / total if total else None,
           'what': index.describe(name)} for name, s in ranked]


def by_category(times: dict[str, float], index: HloIndex) -> dict[str, float]:
  """Seconds per call summed by kind: matmul fusions, reductions, gathers/scatters, the rest."""
  out: dict[str, float] = collections.defaultdict(float)
  for name, s in times.items():
    info = index.instructions[name]
    ops = set(info.get('fused', [])) | {info['opcode']}
    if ops & {'dot', 'convolution'} or name.startswith('ynn'):
      out['matmul'] += s
    elif ops & {'gather', 'scatter', 'dynamic-update-slice', 'dynamic-slice'}:
      out['gather/scatter/slice update'] += s
    elif ops & {'rng-bit-generator', 'shift-right-logical', 'xor'}:
      out['random bits'] += s
    elif ops & {'reduce', 'reduce-window'}:
      out['reduction'] += s
    elif ops & {'copy', 'transpose', 'concatenate', 'pad'}:
      out['copy/transpose/concat'] += s
    else:
      out['elementwise/other'] += s
  return dict(sorted(out.items(), key=lambda kv: -kv[1]))
