"""safetensors checkpoints (one file, or shards with model.safetensors.index.json), read and
written one tensor at a time.

A file is an 8-byte little-endian header length, a JSON header (name -> dtype, shape, byte range
of the data after the header) and the raw little-endian data. Local files are read with
safetensors' own `safe_open`; other paths (gs://, ...) through etils.epath, reading the header
and then each tensor's byte range only, never a whole shard. Writing streams the tensors into
the file in header order, so a host holds one full tensor at a time.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Callable, Sequence

import ml_dtypes
import numpy as np

from lsc_align import io_utils

INDEX_FILE = 'model.safetensors.index.json'
SINGLE_FILE = 'model.safetensors'

DTYPES = {'F32': np.dtype(np.float32), 'F16': np.dtype(np.float16),
          'BF16': np.dtype(ml_dtypes.bfloat16), 'F64': np.dtype(np.float64),
          'I64': np.dtype(np.int64), 'I32': np.dtype(np.int32)}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


def dtype_name(dtype: np.dtype | str) -> str:
  """'BF16', 'F16', 'F32', ... for a numpy dtype (or such a name)."""
  if isinstance(dtype, str) and dtype in DTYPES:
    return dtype
  dtype = np.dtype(dtype)
  if dtype not in DTYPE_NAMES:
    raise ValueError(f'dtype {dtype} has no safetensors name')
  return DTYPE_NAMES[dtype]


def _read_header(handle) -> tuple[dict, int]:
  """(header without __metadata__, offset of the data) from an open binary file."""
  raw = handle.read(8)
  if len(raw) != 8:
    raise ValueError('not a safetensors file: shorter than 8 bytes')
  (length,) = struct.unpack('<Q', raw)
  header = json.loads(handle.read(length))
  header.pop('__metadata__', None)
  return header, 8 + length


class CheckpointReader:
  """The tensors of a checkpoint directory: names, shapes, dtypes, and one tensor at a time.

  Raises:
    FileNotFoundError: no safetensors weights in the directory, or a shard the index names is
      missing.
  """

  def __init__(self, directory: str, use_safe_open: bool | None = None):
    self.directory = directory
    self._safe_open = not io_utils.is_url(directory) if use_safe_open is None else use_safe_open
    index_path = os.path.join(directory, INDEX_FILE)
    if io_utils.exists(index_path):
      weight_map = json.loads(io_utils.read_text(index_path)).get('weight_map')
      if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f'{index_path}: no weight_map')
      files = sorted(set(weight_map.values()))
      for name in files:
        if not io_utils.exists(os.path.join(directory, name)):
          raise FileNotFoundError(f'{index_path} names shard {name}, which is missing')
    elif io_utils.exists(os.path.join(directory, SINGLE_FILE)):
      files = [SINGLE_FILE]
    else:
      raise FileNotFoundError(f'{directory}: no {SINGLE_FILE} or {INDEX_FILE}')
    self._entries: dict[str, tuple[str, dict, int]] = {}  # name -> (file, entry, data offset)
    for file in files:
      with io_utils.open_file(os.path.join(directory, file), 'rb') as handle:
        header, offset = _read_header(handle)
      for name, entry in header.items():
        self._entries[name] = (file, entry, offset)
    if io_utils.exists(index_path):
      for name, file in weight_map.items():
        if self._entries.get(name, (file,))[0] != file:
          raise ValueError(f'{index_path}: tensor {name} is not in {file}')

  def names(self) -> list[str]:
    return sorted(self._entries)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._entries[name][1]['shape'])

  def dtype(self, name: str) -> str:
    """The tensor's safetensors dtype name ('BF16', 'F16', 'F32', ...)."""
    return self._entries[name][1]['dtype']

  def file(self, name: str) -> str:
    return self._entries[name][0]

  def read(self, name: str) -> np.ndarray:
    """The whole tensor as a numpy array of its own dtype (bfloat16 via ml_dtypes)."""
    file, entry, offset = self._entries[name]
    if entry['dtype'] not in DTYPES:
      raise ValueError(f'tensor {name}: dtype {entry["dtype"]} is not supported')
    path = os.path.join(self.directory, file)
    if self._safe_open:
      from safetensors import safe_open  # pylint: disable=g-import-not-at-top
      # Opened per tensor: the file's memory map goes when the tensor is copied out, so the
      # shard's pages do not stay resident while the rest of the checkpoint is read.
      with safe_open(path, framework='numpy') as handle:
        return handle.get_tensor(name)
    start, end = entry['data_offsets']
    with io_utils.open_file(path, 'rb') as handle:
      handle.seek(offset + start)
      data = handle.read(end - start)
    return np.frombuffer(data, DTYPES[entry['dtype']]).reshape(entry['shape'])


def shard_plan(tensors: Sequence[tuple[str, tuple[int, ...], str]],
               max_shard_bytes: int) -> list[list[tuple[str, tuple[int, ...], str]]]:
  """Tensors (name, shape, dtype name) in order, grouped into shards of at most max_shard_bytes
  (a tensor larger than that gets a shard of its own)."""
  shards, current, size = [], [], 0
  for tensor in tensors:
    nbytes = int(np.prod(tensor[1], dtype=np.int64)) * DTYPES[tensor[2]].itemsize
    if current and size + nbytes > max_shard_bytes:
      shards.append(current)
      current, size = [], 0
    current.append(tensor)
    size += nbytes
  if current:
    shards.append(current)
  return shards


def shard_file_names(num_shards: int) -> list[str]:
  """model.safetensors for one shard, else model-0000i-of-0000n.safetensors."""
  if num_shards == 1:
    return [SINGLE_FILE]
  return [f'model-{i + 1:05d}-of-{num_shards:05d}.safetensors' for i in range(num_shards)]


def write_file(path: str, tensors: Sequence[tuple[str, tuple[int, ...], str]],
               fetch: Callable[[str], np.ndarray]) -> int:
  """Writes one safetensors file, fetching each tensor when its turn comes; returns its bytes.

  Raises:
    ValueError: a fetched tensor's shape or dtype differs from the one announced.
  """
  header, offset = {}, 0
  for name, shape, dtype in tensors:
    nbytes = int(np.prod(shape, dtype=np.int64)) * DTYPES[dtype].itemsize
    header[name] = {'dtype': dtype, 'shape': list(shape),
                    'data_offsets': [offset, offset + nbytes]}
    offset += nbytes
  header['__metadata__'] = {'format': 'pt'}
  encoded = json.dumps(header, separators=(',', ':')).encode()
  encoded += b' ' * (-len(encoded) % 8)  # the data starts 8-byte aligned
  with io_utils.open_file(path, 'wb') as handle:
    handle.write(struct.pack('<Q', len(encoded)))
    handle.write(encoded)
    for name, shape, dtype in tensors:
      array = np.ascontiguousarray(fetch(name))
      if tuple(array.shape) != tuple(shape) or array.dtype != DTYPES[dtype]:
        raise ValueError(f'tensor {name}: got {array.shape} {array.dtype}, expected {shape} '
                         f'{dtype}')
      handle.write(array.astype(array.dtype.newbyteorder('<'), copy=False).tobytes())
  return offset


def write_checkpoint(directory: str, tensors: Sequence[tuple[str, tuple[int, ...], str]],
                     fetch: Callable[[str], np.ndarray], max_shard_bytes: int) -> list[str]:
  """Writes the tensors as one file or as shards plus their index; returns the files written."""
  shards = shard_plan(tensors, max_shard_bytes)
  files = shard_file_names(len(shards))
  weight_map, total = {}, 0
  for file, shard in zip(files, shards):
    total += write_file(os.path.join(directory, file), shard, fetch)
    weight_map.update({name: file for name, _, _ in shard})
  if len(files) > 1:
    index = {'metadata': {'total_size': total}, 'weight_map': dict(sorted(weight_map.items()))}
    io_utils.atomic_write_text(os.path.join(directory, INDEX_FILE),
                               json.dumps(index, indent=2) + '\n')
    files.append(INDEX_FILE)
  return files
