"""`lsc-align demo` and `lsc-align reproduce`: a whole experiment, its report and headline.

demo (configs/experiments/demo.gin, about 3 minutes 15 s measured on 2 CPU cores): builds the
world, trains both reward models and π0, samples the pools, runs best-of-k and the closed-form
optimum for the combined objectives (LSC sum against the weighted raw sum over w), a small PPO
sweep of raw vs LSC on the combined objective, evaluates everything and writes the report. It
ends by printing where the report is and its headline numbers.

reproduce (configs/experiments/reproduce.gin): the paper's experiments on the world — helpful,
harmless and combined objectives, PPO and best-of-k, the ablation — over several seeds.
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Sequence

import gin

from lsc_align import io_utils
from lsc_align.eval import report as report_lib
from lsc_align.eval import results as results_lib
from lsc_align.pipeline import experiment
from lsc_align.pipeline import layout


def headline(results: Sequence[results_lib.RunResult]) -> list[str]:
  """One line per (method, objective): the run with the best win rate on the objective's own
  property (AND for combined objectives), with its KL and all win rates."""
  lines = []
  groups: dict[tuple[str, str], list[results_lib.RunResult]] = {}
  for r in results:
    groups.setdefault((r.method, r.objective), []).append(r)
  for (method, objective), group in sorted(groups.items()):
    prop = results_lib.objective_property(objective)  # what the objective is judged on
    best = max(group, key=lambda r: (r.and_win_rate or 0.0) if prop not in r.win_rate
               else r.win_rate[prop])
    rates = ', '.join(f'{k} {v:.3f}' for k, v in sorted(best.win_rate.items()))
    and_rate = '' if best.and_win_rate is None else f'AND {best.and_win_rate:.3f}, '
    lines.append(f'{method:8s} {objective:28s} best at {best.label:8s} (KL {best.kl:5.2f}): '
                 f'{and_rate}{rates}')
  return lines


@gin.configurable
def run_experiment(out_dir: str, seed: int = 0, name: str = 'experiment') -> str:
  """prepare + run_sweep + report for the bound sweep; returns the report's path."""
  start = time.time()
  out_dir = io_utils.abspath(out_dir)

  def log(message: str) -> None:
    print(f'[{name} {time.time() - start:6.0f} s] {message}', flush=True)

  experiment.prepare(out_dir, seed=seed, log=log)
  experiment.run_sweep(out_dir, log=log)
  from lsc_align import distributed  # pylint: disable=g-import-not-at-top
  exp = layout.ExperimentDirs(out_dir)
  if not distributed.is_main_process():  # one writer for the report and summary
    return os.path.join(exp.report, 'report.md')
  from lsc_align.pipeline import reference_stage  # pylint: disable=g-import-not-at-top
  path = report_lib.write_report(exp.runs, exp.report,
                                 calibrations=reference_stage.load_calibrations(out_dir))
  results = results_lib.load_run_results(exp.runs)
  summary = {'report': path, 'seconds': round(time.time() - start, 1),
             'headline': headline(results)}
  io_utils.atomic_write_json(os.path.join(out_dir, 'summary.json'), summary)
  log(f'report: {path}')
  for line in summary['headline']:
    print('  ' + line, flush=True)
  return path


def demo_main(args: argparse.Namespace) -> int:
  """`lsc-align demo [--out DIR]` (gin: configs/experiments/demo.gin unless --gin_file)."""
  run_experiment(args.out, name='demo')
  return 0


def reproduce_main(args: argparse.Namespace) -> int:
  run_experiment(args.out, name='reproduce')
  return 0
