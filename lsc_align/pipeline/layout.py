"""The layout of an experiment directory: where every stage writes, and who reads what.

An experiment directory holds the stages' outputs side by side:

    EXP/world/            the embedded world (or any HH-layout data dir + vocabulary)
    EXP/rm_<property>/    reward models (lsc-align train-rm)
    EXP/judge_<property>/ judge reward models, for data without gold utilities (HH text)
    EXP/sft/              π0 (lsc-align sft)
    EXP/ref_<property>/   reference-reward predictors r_mean, r_std (lsc-align references),
                          with calibration.json
    EXP/pools/train.npz   RL prompts with m π0 samples' rewards (quantile references) and the
                          mean reward of canned refusals, per property
    EXP/pools/reference.npz  training prompts with 64 π0 samples' rewards each, per property:
                          what the reference predictors learn from
    EXP/pools/eval.npz    evaluation prompts with a pool of N π0 samples (best-of-k, optimum,
                          references) and a separate set of SFT samples (the win-rate baseline),
                          each with proxy rewards, gold judge scores and shortcut flags
    EXP/report/           the report of every run (lsc-align report, demo)
    EXP/pools/arrays/     tokenised prompt caches the pools are drawn from
    EXP/runs/<name>/      PPO / best-of-k / optimum results (eval_results.json); a trained
                          run keeps its checkpoints in RUN/checkpoints/

Everything is keyed by the seed, so the same experiment directory reproduces bit for bit.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os

import numpy as np

from lsc_align import checkpointing
from lsc_align import io_utils
from lsc_align.conventions import PROPERTIES  # pylint: disable=unused-import (layout.PROPERTIES)

SOURCE_FILE = 'experiment.json'
POOLS, RUNS, REPORT = 'pools', 'runs', 'report'  # directory names
# RUN/checkpoints, where a trained stage or run keeps its checkpoints: named in checkpointing
# (the trainers below pipeline/ use it too).
checkpoints = checkpointing.checkpoint_dir


@dataclasses.dataclass(frozen=True)
class ExperimentDirs:
  """Paths of an experiment. The data source is the embedded world (EXP/world) unless
  EXP/experiment.json names another one (an HH-layout directory and its vocabulary)."""
  root: str

  def __post_init__(self) -> None:
    # Every path derived from the root is absolute (or a URL), whatever the working directory.
    object.__setattr__(self, 'root', io_utils.abspath(self.root))

  @functools.cached_property
  def _source(self) -> dict[str, str]:
    """EXP/experiment.json, read once per instance (on a bucket every read is a request)."""
    path = os.path.join(self.root, SOURCE_FILE)
    if not io_utils.exists(path):
      return {}
    return json.loads(io_utils.read_text(path))

  def set_source(self, data_dir: str, vocabulary: str) -> None:
    """Records a data source other than the world (absolute paths)."""
    source = {'data_dir': io_utils.abspath(data_dir), 'vocabulary': io_utils.abspath(vocabulary)}
    io_utils.atomic_write_json(os.path.join(self.root, SOURCE_FILE), source)
    self.__dict__['_source'] = source  # the cached read (a frozen dataclass has no setattr)

  @property
  def data(self) -> str:
    return self._source.get('data_dir', os.path.join(self.root, 'world'))

  @property
  def vocabulary(self) -> str:
    return self._source.get('vocabulary', os.path.join(self.data, 'vocab.txt'))

  @property
  def is_world(self) -> bool:
    from lsc_align.world import supervision  # pylint: disable=g-import-not-at-top
    return supervision.is_world(self.data)

  def reward_model(self, prop: str) -> str:
    return os.path.join(self.root, f'rm_{prop}')

  def judge_model(self, prop: str) -> str:
    """A separately trained judge reward model (data without gold utilities, e.g. HH)."""
    return os.path.join(self.root, f'judge_{prop}')

  def reference_model(self, prop: str) -> str:
    """The Gaussian reference predictor of a property (lsc_align.train.reference_trainer)."""
    return os.path.join(self.root, f'ref_{prop}')

  @property
  def sft(self) -> str:
    return os.path.join(self.root, 'sft')

  def pool(self, split: str) -> str:
    return os.path.join(self.root, POOLS, f'{split}.npz')

  @property
  def array_cache(self) -> str:
    return os.path.join(self.root, POOLS, 'arrays')

  @property
  def runs(self) -> str:
    return os.path.join(self.root, RUNS)

  def run(self, name: str) -> str:
    return os.path.join(self.runs, name)

  @property
  def report(self) -> str:
    return os.path.join(self.root, REPORT)


def load_npz(path: str) -> dict[str, np.ndarray]:
  if not io_utils.exists(path):
    raise FileNotFoundError(f'{path} does not exist: build the pools first (lsc-align pools)')
  return io_utils.load_npz(path)
