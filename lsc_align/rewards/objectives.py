"""Objectives: which properties, which transform, which weights and reference rewards.

An `Objective` is plain, hashable data (a frozen dataclass of tuples) so it can be a static
argument of a jitted scoring step, compared in tests and written into run directories. gin builds
one through `make_objective`; configs/objectives/*.gin hold the paper's objectives.
"""
from __future__ import annotations

import dataclasses
import enum
from typing import Any, Mapping, Sequence

import gin

from lsc_align.conventions import PROPERTIES
from lsc_align.rewards import transforms


# The canned-response reference for harmlessness on HH text (paper: "I can't answer that" and
# variants). A canned spec without responses uses the data source's own refusal phrases: these
# for HH, WorldConfig.refusal_phrases for the embedded world (its vocabulary is closed).
DEFAULT_REFUSALS = (
    "I can't answer that.",
    "I'm sorry, I can't help with that.",
    "I won't help with that request.",
)


class ReferenceKind(str, enum.Enum):
  QUANTILE = 'quantile'    # empirical q-quantile of m π0 samples' rewards for the prompt
  GAUSSIAN = 'gaussian'    # r_mean(x) + Φ⁻¹(q) r_std(x) from the regression heads
  CANNED = 'canned'        # mean reward of canned responses (refusals) for the prompt
  CONSTANT = 'constant'    # the same value for every prompt
  NONE = 'none'            # the transform reads no reference (raw, pointwise)


@dataclasses.dataclass(frozen=True)
class ReferenceSpec:
  """How r_ref(x) is obtained for one property."""
  kind: ReferenceKind = ReferenceKind.NONE
  quantile: float | None = None        # QUANTILE and GAUSSIAN
  value: float = 0.0                   # CONSTANT
  responses: tuple[str, ...] = ()      # CANNED; empty = the data source's refusal phrases

  def __post_init__(self):
    object.__setattr__(self, 'kind', ReferenceKind(self.kind))
    object.__setattr__(self, 'responses', tuple(self.responses))
    if self.kind in (ReferenceKind.QUANTILE, ReferenceKind.GAUSSIAN):
      if self.quantile is None or not 0.0 < float(self.quantile) < 1.0:
        raise ValueError(
            f'{self.kind.value} reference needs a quantile in (0, 1), got {self.quantile!r}')
    if self.kind == ReferenceKind.CANNED and any(not r.strip() for r in self.responses):
      raise ValueError(f'canned reference has an empty response: {self.responses!r}')


@dataclasses.dataclass(frozen=True)
class Objective:
  """u(x, y) = Σ_i w_i · T(r_i(x, y), r_ref,i(x)) over `properties` (paper §4, aggregation).

  With T = LSC and w_i = 1 the sum is log Π_i σ(r_i − r_ref,i): the log-probability of being good
  on every property (a logical AND). With T = raw it is the weighted raw-sum baseline.
  """
  name: str
  properties: tuple[str, ...]
  transform: transforms.Transform
  weights: tuple[float, ...]
  references: tuple[ReferenceSpec, ...]

  def __post_init__(self):
    object.__setattr__(self, 'transform', transforms.parse(self.transform))
    object.__setattr__(self, 'properties', tuple(self.properties))
    object.__setattr__(self, 'weights', tuple(float(w) for w in self.weights))
    object.__setattr__(self, 'references', tuple(self.references))
    n = len(self.properties)
    if n == 0:
      raise ValueError(f'objective {self.name!r} has no properties')
    if len(set(self.properties)) != n:
      raise ValueError(f'objective {self.name!r} repeats a property: {self.properties}')
    if len(self.weights) != n or len(self.references) != n:
      raise ValueError(
          f'objective {self.name!r}: {n} properties but {len(self.weights)} weights and '
          f'{len(self.references)} references')
    needs_ref = transforms.uses_reference(self.transform)
    for prop, ref in zip(self.properties, self.references):
      if needs_ref and ref.kind == ReferenceKind.NONE:
        raise ValueError(f'objective {self.name!r}: transform {self.transform.value!r} needs a '
                         f'reference for {prop!r}')

  def properties_with(self, kind: ReferenceKind) -> list[str]:
    """The properties whose reference is of this kind, in the objective's order."""
    return [p for p, spec in zip(self.properties, self.references) if spec.kind == kind]

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready fields (as stored in a run's run.json); from_dict is the inverse."""
    d = dataclasses.asdict(self)
    d['transform'] = self.transform.value
    for r in d['references']:
      r['kind'] = r['kind'].value
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> Objective:
    """The objective of to_dict's output."""
    return cls(name=d['name'], properties=tuple(d['properties']), transform=d['transform'],
               weights=tuple(d['weights']),
               references=tuple(ReferenceSpec(**r) for r in d['references']))


def _reference_spec(spec: Any) -> ReferenceSpec:
  """Accepts a ReferenceSpec, a dict of its fields, or shorthand ('quantile', 0.85)."""
  if isinstance(spec, ReferenceSpec):
    return spec
  if isinstance(spec, Mapping):
    return ReferenceSpec(**spec)
  if isinstance(spec, str):
    spec = (spec,)
  kind, *rest = spec
  kind = ReferenceKind(kind)
  if kind in (ReferenceKind.QUANTILE, ReferenceKind.GAUSSIAN):
    return ReferenceSpec(kind, quantile=rest[0] if rest else None)
  if kind == ReferenceKind.CONSTANT:
    return ReferenceSpec(kind, value=float(rest[0]) if rest else 0.0)
  if kind == ReferenceKind.CANNED:
    return ReferenceSpec(kind, responses=tuple(rest[0]) if rest else ())
  return ReferenceSpec(kind)


@gin.configurable
def make_objective(name: str = gin.REQUIRED,
                   properties: Sequence[str] = gin.REQUIRED,
                   transform: str = gin.REQUIRED,
                   references: Mapping[str, Any] | None = None,
                   weights: Mapping[str, float] | None = None,
                   helpful_weight: float | None = None) -> Objective:
  """Builds an Objective from gin-friendly values.

  Args:
    name: label used in run directories and reports.
    properties: e.g. ['helpful'] or ['helpful', 'harmless'].
    transform: 'raw', 'centered', 'log_sigmoid', 'lsc' or 'pointwise'.
    references: property → reference spec: ('quantile', q), ('gaussian', q), ('canned',) (the
      data source's refusals) or ('canned', [texts]), ('constant', c), 'none'. Missing
      properties get 'none'.
    weights: property → weight (default 1 each).
    helpful_weight: the baseline's w for two properties: w·r_helpful + (1 − w)·r_harmless.
  """
  properties = tuple(properties)
  references = dict(references or {})
  unknown = set(references) - set(properties)
  if unknown:
    raise ValueError(f'objective {name!r}: references for unknown properties {sorted(unknown)}')
  if helpful_weight is not None:
    if weights is not None:
      raise ValueError(f'objective {name!r}: give weights or helpful_weight, not both')
    if set(properties) != {'helpful', 'harmless'}:
      raise ValueError(f'objective {name!r}: helpful_weight needs properties helpful, harmless')
    if not 0.0 <= helpful_weight <= 1.0:
      raise ValueError(f'objective {name!r}: helpful_weight must be in [0, 1], got '
                       f'{helpful_weight}')
    weights = {'helpful': helpful_weight, 'harmless': 1.0 - helpful_weight}
  weights = dict(weights or {})
  unknown = set(weights) - set(properties)
  if unknown:
    raise ValueError(f'objective {name!r}: weights for unknown properties {sorted(unknown)}')
  return Objective(
      name=name,
      properties=properties,
      transform=transforms.parse(transform),
      weights=tuple(weights.get(p, 1.0) for p in properties),
      references=tuple(_reference_spec(references.get(p, 'none')) for p in properties),
  )
