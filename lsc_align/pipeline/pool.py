"""An experiment's π0 sample pools as typed objects; the one place that knows their file layout.

Three files under EXP/pools/ (lsc_align.pipeline.layout), each one `Pool`:

* train.npz: RL prompts, m π0 samples' proxy rewards per prompt (`samples`, quantile
  references) and the mean reward of canned refusals per prompt (`canned`);
* eval.npz: evaluation prompts, a pool of N π0 samples (`pool`: best-of-k, the optimum) and a
  separate set of SFT samples (`sft`: the win-rate baseline and the evaluation prompts'
  quantile references), each with responses, proxy rewards, judge scores and shortcut flags;
  and `canned`;
* reference.npz: training prompts with 64 π0 samples' rewards each (`samples`), what the
  reference predictors learn from.

On disk an array is named `<part>_<kind>_<property>` (e.g. pool_reward_helpful, sft_gold_harmless,
pool_flag_list, pool_responses; the train and reference pools' samples have no part prefix:
reward_helpful), canned_<property> and prompt_ids.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

from lsc_align import io_utils
from lsc_align.conventions import PROPERTIES
from lsc_align.pipeline import layout

FLAGS = ('list', 'referral')  # the shortcut flags a judged pool stores
_PARTS = {'samples': '', 'pool': 'pool_', 'sft': 'sft_'}  # Pool field → file prefix


@dataclasses.dataclass(frozen=True)
class Samples:
  """n π0 (or policy) samples for each of a pool's P prompts."""
  rewards: Mapping[str, np.ndarray]                # property → [P, n] proxy rewards
  responses: np.ndarray | None = None              # [P, n, Lr] token ids (eval pools only)
  judge: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)  # gold_<property>
  flags: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)  # 'list', 'referral'

  @property
  def judged(self) -> bool:
    return bool(self.judge)

  def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
    out = {} if self.responses is None else {f'{prefix}responses': self.responses}
    out.update({f'{prefix}reward_{p}': v for p, v in self.rewards.items()})
    out.update({f'{prefix}gold_{p}': v for p, v in self.judge.items()})
    out.update({f'{prefix}flag_{f}': v for f, v in self.flags.items()})
    return out

  @classmethod
  def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str) -> Samples | None:
    """The samples stored under `prefix` (None when the file holds none)."""
    pick = lambda kind, names: {n: arrays[f'{prefix}{kind}_{n}'] for n in names
                                if f'{prefix}{kind}_{n}' in arrays}
    rewards = pick('reward', PROPERTIES)
    if not rewards:
      return None
    return cls(rewards, arrays.get(f'{prefix}responses'), pick('gold', PROPERTIES),
               pick('flag', FLAGS))


@dataclasses.dataclass(frozen=True)
class Pool:
  """One pool file: prompts, the sample sets it holds, and the canned-response rewards."""
  prompt_ids: np.ndarray                           # [P, Lp]
  samples: Samples | None = None                   # train / reference pools
  pool: Samples | None = None                      # eval pool: N π0 samples
  sft: Samples | None = None                       # eval pool: SFT samples
  canned: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)  # property → [P]

  @property
  def reference_samples(self) -> Samples | None:
    """The samples whose quantiles are this pool's references (eval: the SFT samples)."""
    return self.sft if self.sft is not None else self.samples

  @property
  def response_length(self) -> int:
    if self.pool is None or self.pool.responses is None:
      raise ValueError('this pool holds no responses (only the evaluation pool does)')
    return int(self.pool.responses.shape[-1])

  def to_arrays(self) -> dict[str, np.ndarray]:
    out = {'prompt_ids': self.prompt_ids}
    for field, prefix in _PARTS.items():
      part = getattr(self, field)
      out.update(part.to_arrays(prefix) if part is not None else {})
    out.update({f'canned_{p}': v for p, v in self.canned.items()})
    return out

  @classmethod
  def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> Pool:
    parts = {field: Samples.from_arrays(arrays, prefix) for field, prefix in _PARTS.items()}
    canned = {p: arrays[f'canned_{p}'] for p in PROPERTIES if f'canned_{p}' in arrays}
    return cls(arrays['prompt_ids'], canned=canned, **parts)


def load_pool(exp: layout.ExperimentDirs, split: str) -> Pool:
  """EXP/pools/<split>.npz ('train', 'eval' or 'reference')."""
  return Pool.from_arrays(layout.load_npz(exp.pool(split)))


def save_pool(path: str, pool: Pool) -> None:
  """Writes a pool file atomically."""
  io_utils.atomic_save_npz(path, pool.to_arrays())
