"""Loading a Hugging Face checkpoint at Qwen2.5-0.5B's public shapes: seconds and peak memory.

    python -m benchmarks.pretrained_load [--layers 24] [--param_dtype float32] [--shard_mb 500]

Writes a random bfloat16 checkpoint (hidden 896, 24 layers, 14 heads, 2 kv heads, head_dim 64,
intermediate 4864, vocabulary 151936, tied; about 494M parameters, 0.99 GB) with safetensors'
numpy writer, one shard at a time, into a temporary directory; then loads it with
pretrained.load in a fresh subprocess (so the writer's memory does not count) and reports the
load's wall time and that process's peak resident memory (and its resident memory before the
load: jax and the imports) against the parameters' bytes.
A float32 load needs about 2 GB plus one tensor (the embedding, 0.54 GB in float32) in transit.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import ml_dtypes
import numpy as np

from benchmarks import common

QWEN25_05B = {
    'architectures': ['Qwen2ForCausalLM'], 'model_type': 'qwen2', 'hidden_size': 896,
    'intermediate_size': 4864, 'num_hidden_layers': 24, 'num_attention_heads': 14,
    'num_key_value_heads': 2, 'vocab_size': 151936, 'max_position_embeddings': 32768,
    'rms_norm_eps': 1e-6, 'rope_theta': 1_000_000.0, 'tie_word_embeddings': True,
    'hidden_act': 'silu', 'use_sliding_window': False, 'torch_dtype': 'bfloat16',
    'bos_token_id': 151643, 'eos_token_id': 151643,
}


def _tensor_shapes(config: dict) -> dict[str, tuple[int, ...]]:
  d, f, v = config['hidden_size'], config['intermediate_size'], config['vocab_size']
  kv = config['num_key_value_heads'] * d // config['num_attention_heads']
  shapes = {'model.embed_tokens.weight': (v, d), 'model.norm.weight': (d,)}
  for i in range(config['num_hidden_layers']):
    p = f'model.layers.{i}.'
    shapes.update({
        p + 'input_layernorm.weight': (d,), p + 'post_attention_layernorm.weight': (d,),
        p + 'self_attn.q_proj.weight': (d, d), p + 'self_attn.q_proj.bias': (d,),
        p + 'self_attn.k_proj.weight': (kv, d), p + 'self_attn.k_proj.bias': (kv,),
        p + 'self_attn.v_proj.weight': (kv, d), p + 'self_attn.v_proj.bias': (kv,),
        p + 'self_attn.o_proj.weight': (d, d), p + 'mlp.gate_proj.weight': (f, d),
        p + 'mlp.up_proj.weight': (f, d), p + 'mlp.down_proj.weight': (d, f)})
  return shapes


def write_checkpoint(directory: str, config: dict, shard_bytes: int, seed: int = 0) -> int:
  """Random bfloat16 tensors as shards of about shard_bytes + the index; returns total bytes."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  shapes = _tensor_shapes(config)
  groups, current, size = [], [], 0
  for name, shape in shapes.items():
    nbytes = int(np.prod(shape)) * 2
    if current and size + nbytes > shard_bytes:
      groups.append(current)
      current, size = [], 0
    current.append(name)
    size += nbytes
  groups.append(current)
  weight_map, total = {}, 0
  for k, names in enumerate(groups):
    file = f'model-{k + 1:05d}-of-{len(groups):05d}.safetensors'
    arrays = {n: (0.02 * rng.standard_normal(shapes[n], np.float32)).astype(ml_dtypes.bfloat16)
              for n in names}
    save_file(arrays, os.path.join(directory, file), metadata={'format': 'pt'})
    total += sum(a.nbytes for a in arrays.values())
    weight_map.update({n: file for n in names})
    del arrays
  with open(os.path.join(directory, 'model.safetensors.index.json'), 'w') as f:
    json.dump({'metadata': {'total_size': total}, 'weight_map': weight_map}, f)
  with open(os.path.join(directory, 'config.json'), 'w') as f:
    json.dump(config, f)
  return total


def _current_rss_bytes() -> int:
  with open('/proc/self/status') as f:
    return next(int(line.split()[1]) * 1024 for line in f if line.startswith('VmRSS:'))


def _load_child(directory: str, param_dtype: str) -> None:
  """Runs in the subprocess: load, block, print seconds, peak RSS and parameter bytes."""
  import jax  # pylint: disable=g-import-not-at-top
  from lsc_align.models import pretrained  # pylint: disable=g-import-not-at-top
  baseline = _current_rss_bytes()
  start = time.perf_counter()
  model = pretrained.load(directory, dtype=param_dtype)
  jax.block_until_ready(model.params)
  seconds = time.perf_counter() - start
  leaves = jax.tree.leaves(model.params)
  print(json.dumps({'load_seconds': seconds,
                    'peak_rss_bytes': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                    'rss_before_load_bytes': baseline,
                    'param_bytes': sum(x.nbytes for x in leaves),
                    'params': sum(x.size for x in leaves),
                    'lm_params': pretrained.param_count(model)}))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--layers', type=int, default=24)
  parser.add_argument('--param_dtype', default='float32', choices=['float32', 'bfloat16'])
  parser.add_argument('--shard_mb', type=int, default=500)
  parser.add_argument('--child', default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    _load_child(args.child, args.param_dtype)
    return
  config = dict(QWEN25_05B, num_hidden_layers=args.layers)
  directory = tempfile.mkdtemp(prefix='pretrained_load_')
  try:
    start = time.perf_counter()
    checkpoint_bytes = write_checkpoint(directory, config, args.shard_mb * 2 ** 20)
    write_seconds = time.perf_counter() - start
    env = dict(os.environ, JAX_PLATFORMS='cpu')
    env.pop('XLA_FLAGS', None)
    out = subprocess.run([sys.executable, '-m', 'benchmarks.pretrained_load', '--child',
                          directory, '--param_dtype', args.param_dtype],
                         check=True, capture_output=True, text=True, env=env,
                         cwd=common.REPO_ROOT)
    child = json.loads(out.stdout.strip().splitlines()[-1])
  finally:
    shutil.rmtree(directory)
  common.emit({'benchmark': 'pretrained_load', 'machine': common.machine_info(),
               'config': {'shapes': 'Qwen2.5-0.5B', 'layers': args.layers,
                          'checkpoint_dtype': 'bfloat16', 'param_dtype': args.param_dtype,
                          'shard_mb': args.shard_mb},
               'checkpoint_bytes': checkpoint_bytes, 'write_seconds': write_seconds, **child,
               'load_rss_increase_over_param_bytes': (
                   child['peak_rss_bytes'] - child['rss_before_load_bytes'])
                   / child['param_bytes']})


if __name__ == '__main__':
  main()
