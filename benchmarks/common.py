"""Shared benchmark pieces: timing with warm-up and repeats, compile timing, FLOP counts,
the float32 matmul peak of this machine, model configs from gin files, and the JSON output.

Timing rules (every benchmark): compile time is measured apart (`compile_timed`), then warm-up
calls are run and discarded, then each repeat is timed with `jax.block_until_ready` around it.
Results report the median and the spread (min, max, quartiles) of the repeats: the machine may be
shared, and a single number would hide that.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO_ROOT, 'configs')


def summarize(samples: Sequence[float]) -> dict[str, Any]:
  """Median, min, max, quartiles and relative spread ((max − min) / median) of timings."""
  values = sorted(float(v) for v in samples)
  q1, q3 = (np.percentile(values, [25, 75]).tolist() if len(values) > 1 else (values[0],) * 2)
  median = statistics.median(values)
  return {'median': median, 'min': values[0], 'max': values[-1], 'q1': q1, 'q3': q3,
          'n': len(values), 'spread_rel': (values[-1] - values[0]) / median if median else None,
          'iqr_rel': (q3 - q1) / median if median else None}


def time_repeats(fn: Callable[[], Any], *, warmup: int, repeats: int,
                 calls_per_repeat: int = 1) -> list[float]:
  """Seconds per call of `fn()`, one value per repeat (warm-up calls not timed).

  Each repeat times `calls_per_repeat` calls back to back (asynchronous dispatch allowed between
  them) and blocks on the last result; the value is the repeat's time / calls_per_repeat.
  """
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    out = None
    for _ in range(calls_per_repeat):
      out = fn()
    jax.block_until_ready(out)
    times.append((time.perf_counter() - start) / calls_per_repeat)
  return times


def compile_timed(jitted: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
  """(compiled executable, seconds to lower and compile) for `jitted(*args, **kwargs)`."""
  start = time.perf_counter()
  compiled = jitted.lower(*args, **kwargs).compile()
  return compiled, time.perf_counter() - start


def compiled_flops(compiled: Any) -> float | None:
  """XLA's FLOP count of one call of a compiled executable, or None where it has none.

  Caveat: for a program with a while loop, XLA counts the loop body once, not once per trip.
  """
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  (not every backend implements it)
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  if not analysis or 'flops' not in analysis:
    return None
  flops = float(analysis['flops'])
  return flops if flops > 0 else None


def matmul_peak(sizes: Sequence[int] = (1024, 1536, 2048), *, warmup: int = 2,
                repeats: int = 7) -> dict[str, Any]:
  """This machine's float32 matmul FLOP/s: best over sizes of the fastest repeat of a jitted dot.

  A square n×n float32 matmul is 2·n³ FLOPs. The best repeat (not the median) is the peak: on a
  shared machine it is the repeat least disturbed by other work.
  """
  dot = jax.jit(jnp.dot)
  per_size = {}
  for n in sizes:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    compiled, _ = compile_timed(dot, a, b)
    times = time_repeats(lambda: compiled(a, b), warmup=warmup, repeats=repeats)
    flops = 2.0 * n ** 3
    per_size[str(n)] = {'flops': flops, 'seconds': summarize(times),
                        'best_flops_per_s': flops / min(times),
                        'median_flops_per_s': flops / statistics.median(times)}
  best = max(per_size, key=lambda k: per_size[k]['best_flops_per_s'])
  return {'peak_flops_per_s': per_size[best]['best_flops_per_s'], 'peak_size': int(best),
          'per_size': per_size, 'warmup': warmup, 'repeats': repeats}


def machine_info() -> dict[str, Any]:
  """nproc, CPU model, load average, jax/jaxlib versions, devices, date (UTC)."""
  model = None
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      for line in f:
        if line.startswith('model name'):
          model = line.split(':', 1)[1].strip()
          break
  except OSError:
    pass
  import jaxlib  # pylint: disable=g-import-not-at-top
  return {
      'date_utc': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'nproc': os.cpu_count(), 'cpu_model': model, 'loadavg_at_start': os.getloadavg(),
      'python': platform.python_version(), 'jax': jax.__version__, 'jaxlib': jaxlib.__version__,
      'backend': jax.default_backend(), 'devices': [str(d) for d in jax.devices()],
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
  }


def _proc_stat_busy_seconds() -> float | None:
  """Busy CPU seconds of the whole machine (all cpus) since boot, from /proc/stat."""
  try:
    with open('/proc/stat', encoding='utf-8') as f:
      fields = [int(x) for x in f.readline().split()[1:]]
  except (OSError, ValueError):
    return None
  idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
  return (sum(fields[:8]) - idle) / os.sysconf('SC_CLK_TCK')


class CpuShare:
  """How busy the machine was with other work while a benchmark ran.

  other_cpu_share = (machine busy CPU-seconds − this process's CPU-seconds) / (wall × nproc):
  0 means the machine was ours alone, 0.5 means other work used half of all cores on average.
  """

  def __init__(self):
    self._wall = time.perf_counter()
    self._busy = _proc_stat_busy_seconds()
    self._own = sum(os.times()[:4])

  def report(self) -> dict[str, Any]:
    wall = time.perf_counter() - self._wall
    busy = _proc_stat_busy_seconds()
    own = sum(os.times()[:4]) - self._own
    if busy is None or self._busy is None or wall <= 0:
      return {'wall_s': wall, 'own_cpu_s': own}
    ncpu = os.cpu_count() or 1
    other = max(busy - self._busy - own, 0.0)
    return {'wall_s': wall, 'own_cpu_s': own, 'other_cpu_s': other,
            'other_cpu_share': other / (wall * ncpu), 'loadavg_at_end': os.getloadavg()}


def add_common_flags(parser: argparse.ArgumentParser, *, warmup: int, repeats: int) -> None:
  parser.add_argument('--warmup', type=int, default=warmup, help='untimed calls before timing')
  parser.add_argument('--repeats', type=int, default=repeats, help='timed repeats')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--gin_param', action='append', default=[],
                      help="extra gin binding after the model files, e.g. "
                           "'PolicyConfig.emb_dim = 256' (repeatable)")


def model_configs(rm_gin: str | None, policy_gin: str | None, gin_params: Sequence[str] = ()):
  """(RewardModelConfig or None, PolicyConfig or None) bound by configs/<file> plus bindings.

  Files are relative to configs/ (e.g. 'models/t5_world.gin'); bindings such as
  'T5EncoderConfig.num_layers = 4' or 'PolicyConfig.emb_dim = 256' apply after them.
  """
  # The configurables the model files bind must be registered before parsing.
  from lsc_align.models import policy, reward_model, t5_encoder  # pylint: disable=g-import-not-at-top,unused-import
  gin.clear_config()
  files = [f for f in (rm_gin, policy_gin) if f]
  paths = [f if os.path.isabs(f) else os.path.join(CONFIG_DIR, f) for f in files]
  gin.parse_config_files_and_bindings(paths, list(gin_params))
  return (reward_model.RewardModelConfig() if rm_gin else None,
          policy.PolicyConfig() if policy_gin else None)


def count_params(params: Any) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def random_prompts(rng: np.random.Generator, batch: int, length: int, vocab_size: int,
                   min_length: int | None = None) -> np.ndarray:
  """Right-padded prompts [B, L] of random ids in [2, vocab) (0 pad, 1 EOS), lengths varying."""
  min_length = length // 2 if min_length is None else min_length
  ids = rng.integers(2, vocab_size, size=(batch, length)).astype(np.int32)
  lengths = rng.integers(min_length, length + 1, size=batch)
  ids[np.arange(length)[None, :] >= lengths[:, None]] = 0
  return ids


def emit(result: dict[str, Any]) -> None:
  """Prints the result as one JSON object on stdout."""
  json.dump(result, sys.stdout, default=_json_default)
  sys.stdout.write('\n')
  sys.stdout.flush()


def _json_default(x: Any) -> Any:
  if isinstance(x, (np.generic, jnp.ndarray)):
    return np.asarray(x).tolist()
  if hasattr(x, '__dataclass_fields__'):
    import dataclasses  # pylint: disable=g-import-not-at-top
    return dataclasses.asdict(x)
  return str(x)
