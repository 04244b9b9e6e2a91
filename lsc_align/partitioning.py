"""One device mesh, one logical-axis rules table, and the sharding helpers built on them.

Layers annotate parameters and activations with logical axis names (`nn.with_logical_partitioning`,
`nn.with_logical_constraint`); `LOGICAL_AXIS_RULES` below maps those names to the mesh axes
('data', 'model'). Everything else here turns that annotation into `NamedSharding`s for `jax.jit`:

    mesh = partitioning.create_mesh((4, 2))
    abstract = jax.eval_shape(model.init, rng, tokens)          # boxed (LogicallyPartitioned)
    shardings = partitioning.logical_shardings(abstract, mesh)  # unboxed tree of NamedSharding
    with partitioning.activate(mesh):                           # rules + mesh for activations
      params = jax.jit(lambda r: nn.unbox(model.init(r, tokens)), out_shardings=shardings)(rng)
    print(partitioning.verify_sharding(params, shardings, mesh).summary())
    batch = partitioning.shard_batch(host_batch, mesh)          # leading axis over 'data'

On one host the same code runs on 1 device (mesh (1, 1)) and on 8 fake CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=8) with equal results.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from typing import Any, Iterator, Mapping, Sequence

import jax
from flax import linen as nn
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
import numpy as np

DATA_AXIS = 'data'
MODEL_AXIS = 'model'
MESH_AXIS_NAMES = (DATA_AXIS, MODEL_AXIS)

# The single rules table: logical name -> mesh axis (None = replicated along that dimension).
# Batch is data-parallel; the wide weight dimensions (mlp hidden, attention heads, vocabulary)
# are split over 'model' (Megatron-style); everything else is replicated.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | None], ...] = (
    ('batch', DATA_AXIS),
    ('length', None),
    ('embed', None),
    ('mlp', MODEL_AXIS),
    ('heads', MODEL_AXIS),
    ('kv', None),
    ('vocab', MODEL_AXIS),
    ('relpos_buckets', None),
    ('norm', None),
)


def create_mesh(shape: Sequence[int] = (-1, 1),
                axis_names: Sequence[str] = MESH_AXIS_NAMES,
                devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh of `shape` over `devices` (default: all); one entry of `shape` may be -1.

  Axes are `AxisType.Auto`, so XLA propagates the shardings given by logical constraints.

  Raises:
    ValueError: the shape does not match the axis names or does not tile the devices.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = tuple(int(s) for s in shape)
  if len(shape) != len(axis_names):
    raise ValueError(f'mesh shape {shape} does not match axis names {tuple(axis_names)}')
  if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ValueError(f'mesh shape {shape}: sizes must be positive, at most one -1')
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if len(devices) % known:
      raise ValueError(f'mesh shape {shape}: {len(devices)} devices are not a multiple of {known}')
    shape = tuple(len(devices) // known if s == -1 else s for s in shape)
  if math.prod(shape) != len(devices):
    raise ValueError(f'mesh shape {shape} needs {math.prod(shape)} devices, '
                     f'{len(devices)} given')
  return jax.make_mesh(shape, tuple(axis_names), axis_types=(AxisType.Auto,) * len(shape),
                       devices=devices)


@contextlib.contextmanager
def activate(mesh: Mesh,
             rules: Sequence[tuple[str, str | None]] = LOGICAL_AXIS_RULES) -> Iterator[Mesh]:
  """Makes `mesh` and `rules` current, so logical activation constraints take effect.

  Trace (call) jitted model code inside this context; outside it the constraints are no-ops.
  """
  with jax.set_mesh(mesh), nn.logical_axis_rules(tuple(rules)):
    yield mesh


def _axis_size(mesh: Mesh, mesh_axes: str | tuple[str, ...] | None) -> int:
  if mesh_axes is None:
    return 1
  names = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
  return math.prod(mesh.shape[n] for n in names)


def mesh_spec(logical_names: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
              rules: Sequence[tuple[str, str | None]] = LOGICAL_AXIS_RULES) -> PartitionSpec:
  """The mesh PartitionSpec for an array of `shape` annotated with `logical_names`.

  A dimension that the mesh axes do not divide evenly is replicated instead (jit rejects
  uneven shardings), e.g. 6 heads on a 'model' axis of 4.
  """
  if len(logical_names) != len(shape):
    raise ValueError(f'logical names {tuple(logical_names)} do not match shape {tuple(shape)}')
  mesh_axes = nn.logical_to_mesh_axes(tuple(logical_names), tuple(rules))
  spec = []
  for name, size, axes in zip(logical_names, shape, mesh_axes):
    if axes is not None and size % _axis_size(mesh, axes):
      logging.getLogger(__name__).warning(
          'logical axis %r of size %d is not divisible by mesh axis %r (%d devices); '
          'replicating it', name, size, axes, _axis_size(mesh, axes))
      axes = None
    spec.append(axes)
  return PartitionSpec(*spec)


def _is_box(x: Any) -> bool:
  return isinstance(x, nn.LogicallyPartitioned)


def logical_shardings(tree: Any, mesh: Mesh,
                      rules: Sequence[tuple[str, str | None]] = LOGICAL_AXIS_RULES) -> Any:
  """NamedShardings for a (possibly abstract) tree holding `nn.LogicallyPartitioned` boxes.

  Works for params and for whole train states: optax states built on boxed params keep the
  boxes, so moments shard like their params; unboxed leaves (step counters, scalars) are
  replicated. The result has the structure of `nn.unbox(tree)`.
  """
  def one(leaf: Any) -> NamedSharding:
    if _is_box(leaf):
      return NamedSharding(mesh, mesh_spec(leaf.names, leaf.value.shape, mesh, rules))
    return NamedSharding(mesh, PartitionSpec())
  return jax.tree_util.tree_map(one, tree, is_leaf=_is_box)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data'; other axes replicated."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Puts a host batch onto the mesh, batch axis over 'data'.

  `batch` holds this process's rows (all rows on one host). With several processes each passes
  its own shard and the global batch is their concatenation in process order
  (`jax.make_array_from_process_local_data`), so per-host data loading needs no gather.

  Raises:
    ValueError: an entry has no batch axis or its global batch is not divisible by 'data'.
  """
  sharding = batch_sharding(mesh)
  data_size = mesh.shape[DATA_AXIS]
  out = {}
  for key, value in batch.items():
    value = np.asarray(value)
    if value.ndim == 0:
      raise ValueError(f'batch entry {key!r} is a scalar; every entry needs a batch axis')
    global_rows = value.shape[0] * jax.process_count()
    if global_rows % data_size:
      raise ValueError(f'batch entry {key!r}: global batch {global_rows} is not divisible by '
                       f'the data axis ({data_size} devices)')
    global_shape = (global_rows,) + value.shape[1:]
    out[key] = jax.make_array_from_process_local_data(sharding, value, global_shape)
  return out


@dataclasses.dataclass(frozen=True)
class ParamSharding:
  """How one parameter is laid out: its global shape, spec and per-device shard shape."""
  name: str
  shape: tuple[int, ...]
  spec: PartitionSpec
  shard_shape: tuple[int, ...]

  @property
  def is_sharded(self) -> bool:
    return self.shard_shape != self.shape


@dataclasses.dataclass(frozen=True)
class ShardingReport:
  """Start-up report: every parameter's layout, and the memory per device it implies."""
  mesh_shape: dict[str, int]
  params: tuple[ParamSharding, ...]
  total_elements: int
  elements_per_device: int

  @property
  def num_sharded(self) -> int:
    return sum(p.is_sharded for p in self.params)

  def summary(self, max_rows: int = 20) -> str:
    lines = [f'mesh {self.mesh_shape}: {self.num_sharded}/{len(self.params)} params sharded; '
             f'{self.elements_per_device:,} of {self.total_elements:,} elements per device']
    for p in self.params[:max_rows]:
      lines.append(f'  {p.name} {p.shape} {p.spec} -> shard {p.shard_shape}')
    if len(self.params) > max_rows:
      lines.append(f'  ... {len(self.params) - max_rows} more')
    return '\n'.join(lines)


def _path_name(path: tuple[Any, ...]) -> str:
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path)


def verify_sharding(params: Any, expected: Any, mesh: Mesh) -> ShardingReport:
  """Checks that every array in `params` is laid out as `expected` says; returns a report.

  Catches the silent failure where a jit without out_shardings (or a host round trip) leaves
  parameters replicated, which costs memory but no error.

  Raises:
    ValueError: naming the first parameter whose sharding differs from `expected`.
  """
  flat = jax.tree_util.tree_flatten_with_path(nn.unbox(params))[0]
  expected_flat = jax.tree_util.tree_leaves(expected)
  if len(flat) != len(expected_flat):
    raise ValueError(f'{len(flat)} params but {len(expected_flat)} expected shardings')
  rows = []
  per_device = 0
  for (path, value), want in zip(flat, expected_flat):
    name = _path_name(path)
    shape = tuple(value.shape)
    got = getattr(value, 'sharding', None)
    if got is None or not got.is_equivalent_to(want, len(shape)):
      raise ValueError(f'param {name} {shape}: sharding {got} differs from expected {want}')
    shard_shape = tuple(want.shard_shape(shape))
    rows.append(ParamSharding(name, shape, want.spec, shard_shape))
    per_device += math.prod(shard_shape)
  return ShardingReport(mesh_shape=dict(mesh.shape), params=tuple(rows),
                        total_elements=sum(math.prod(r.shape) for r in rows),
                        elements_per_device=per_device)
