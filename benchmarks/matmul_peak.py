"""This machine's float32 matmul peak FLOP/s (jitted jnp.dot, square sizes, best repeat).

    python -m benchmarks.matmul_peak [--sizes 1024 1536 2048] [--repeats 7]

The other benchmarks call `common.matmul_peak` in their own process and report MFU against it.
"""
from __future__ import annotations

import argparse

from benchmarks import common


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--sizes', type=int, nargs='+', default=[1024, 1536, 2048])
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--repeats', type=int, default=7)
  args = parser.parse_args()
  machine = common.machine_info()
  share = common.CpuShare()
  result = common.matmul_peak(args.sizes, warmup=args.warmup, repeats=args.repeats)
  common.emit({'benchmark': 'matmul_peak', 'machine': machine,
               'config': {'sizes': args.sizes, 'dtype': 'float32', 'warmup': args.warmup,
                          'repeats': args.repeats},
               **result, 'cpu_share': share.report()})


if __name__ == '__main__':
  main()
