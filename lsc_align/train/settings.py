"""The settings every supervised trainer shares, as one gin-configurable value.

`TrainerSettings` holds the optimisation and bookkeeping settings of train_reward_model,
train_sft and train_reference. gin binds them per trainer through the trainer's scope:

    train_reward_model/TrainerSettings.steps = 480
    train_sft/TrainerSettings.schedule = 'cosine'
    TrainerSettings.log_every = 10          # unscoped: every trainer

Each trainer keeps its own defaults (its module's DEFAULT_SETTINGS); `configured` binds those
under the trainer's scope where nothing else is bound, so a run's config.gin records every value
the run used. Values that make no sense are refused when the settings are made, naming the
binding (`train_sft/TrainerSettings.learning_rate = nan: ...`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import gin

SCHEDULES = ('constant', 'cosine')  # learning rate after the linear warm-up


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TrainerSettings:
  """What every supervised trainer takes besides its model and data.

  Attributes:
    steps: optimizer updates.
    batch_size: training rows per update (divisible by the mesh's data axis).
    learning_rate, warmup_steps, schedule, weight_decay, grad_clip_norm: AdamW with a linear
      warm-up, then 'constant' or 'cosine' decay to 10%; grad_clip_norm None = no clipping.
    eval_every: validation every this many steps (and at the end); 0 = only at the end.
    eval_batch_size: rows per validation batch (divisible by the mesh's data axis).
    log_every: progress line interval.
    checkpoint_every: orbax save interval (and at the end, and on SIGTERM).
    seed: parameter init, dropout and data order.
    mesh_shape: ('data', 'model') sizes; one may be -1.
    binding: the gin name these settings were made under, for messages (not configurable).
  """
  steps: int = 1000
  batch_size: int = 32
  learning_rate: float = 1e-3
  warmup_steps: int = 100
  schedule: str = 'constant'
  weight_decay: float = 0.0
  grad_clip_norm: float | None = 1.0
  eval_every: int = 500
  eval_batch_size: int = 128
  log_every: int = 50
  checkpoint_every: int = 500
  seed: int = 0
  mesh_shape: Sequence[int] = (-1, 1)
  binding: str = dataclasses.field(default='TrainerSettings', init=False, compare=False)

  def __post_init__(self) -> None:
    scope = gin.current_scope_str()
    object.__setattr__(self, 'binding',
                       f'{scope}/TrainerSettings' if scope else 'TrainerSettings')
    for name, low in (('steps', 1), ('batch_size', 1), ('warmup_steps', 0), ('eval_every', 0),
                      ('eval_batch_size', 1), ('log_every', 1), ('checkpoint_every', 1),
                      ('seed', 0)):
      value = getattr(self, name)
      if not _is_int(value) or value < low:
        self._refuse(name, f'must be an integer >= {low}')
    if not _is_number(self.learning_rate) or self.learning_rate <= 0:
      self._refuse('learning_rate', 'must be a finite number > 0')
    if not _is_number(self.weight_decay) or self.weight_decay < 0:
      self._refuse('weight_decay', 'must be a finite number >= 0')
    if self.grad_clip_norm is not None and (not _is_number(self.grad_clip_norm)
                                            or self.grad_clip_norm <= 0):
      self._refuse('grad_clip_norm', 'must be a finite number > 0, or None (no clipping)')
    if self.schedule not in SCHEDULES:
      self._refuse('schedule', f'must be one of {SCHEDULES}')
    shape = self.mesh_shape
    if (isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence) or len(shape) != 2
        or not all(_is_int(n) and (n == -1 or n >= 1) for n in shape)
        or list(shape).count(-1) > 1):
      self._refuse('mesh_shape', 'must be two integers (data, model), each >= 1 or one -1')

  def _refuse(self, name: str, reason: str) -> None:
    raise ValueError(f'{self.binding}.{name} = {getattr(self, name)!r}: {reason}')


def configured(scope: str, defaults: Mapping[str, Any] = (), **overrides: Any
               ) -> TrainerSettings:
  """TrainerSettings as gin binds them under `scope` (a trainer's name), the trainer's
  `defaults` for what is not bound, and `overrides` (a caller's own values, e.g. an experiment's
  seed) over both.

  The defaults are bound under the scope (not passed), so gin's operative config lists them
  with the bound values; overrides are passed, so it does not claim them.
  """
  defaults = dict(defaults)
  fields = {f.name for f in dataclasses.fields(TrainerSettings) if f.init}
  unknown = sorted((set(defaults) | set(overrides)) - fields)
  if unknown:
    raise ValueError(f'{scope}: unknown TrainerSettings fields {unknown}')
  with gin.config_scope(scope):
    bound = gin.get_bindings(TrainerSettings)
    missing = {k: v for k, v in defaults.items() if k not in bound and k not in overrides}
    if missing:
      with gin.unlock_config():
        for name, value in missing.items():
          gin.bind_parameter(f'{gin.current_scope_str()}/TrainerSettings.{name}', value)
    return TrainerSettings(**overrides)
