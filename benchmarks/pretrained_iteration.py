"""One RLOO iteration on a policy loaded from a checkpoint at Qwen2.5-0.5B's public shapes.

    python -m benchmarks.pretrained_iteration [--prompts 2] [--samples 2] [--iterations 2]

Writes the random bfloat16 checkpoint of benchmarks/pretrained_load.py (494M parameters), then
in a fresh subprocess: pretrained.load (float32 parameters by default, as the PPO state holds
them), π0 = the loaded parameters, π = ppo.init_state's copy with Adam's two moments, and
1 + --iterations iterations of align/rloo.py's rloo_iteration (sampling with the KV cache, the
jitted scoring step, the leave-one-out advantages, the clipped update) on random prompts.
The two reward models are world-sized T5 encoders (configs/models/t5_world.gin) with the
policy's vocabulary, so every sampled id has an embedding; the point is the policy's cost.
The first iteration compiles: "compile_s" is its time less the median of the others'.
Reported: load seconds, compile seconds, iteration seconds (split as rollout / scoring /
update), the process's peak resident memory and the parameters' bytes.
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

import numpy as np

from benchmarks import common
from benchmarks import pretrained_load


def _child(directory: str, args: argparse.Namespace) -> None:
  """Runs in the subprocess: load, set up RLOO, iterate, print one JSON line."""
  import jax  # pylint: disable=g-import-not-at-top
  from benchmarks import ppo_iteration  # pylint: disable=g-import-not-at-top
  from lsc_align.align import rloo  # pylint: disable=g-import-not-at-top
  from lsc_align.models import pretrained  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  model = pretrained.load(directory, dtype=args.param_dtype,
                          max_len=args.prompt_length + args.response_length)
  pi0 = jax.block_until_ready(model.params)
  load_s = time.perf_counter() - start
  rss_after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  rm_config, _ = common.model_configs(
      'models/t5_world.gin', None, [f'T5EncoderConfig.vocab_size = {model.config.vocab_size}'])
  objective = ppo_iteration.load_objective('objectives/combined_lsc_sum.gin')
  setup, state = ppo_iteration.make_setup(
      rm_config, model.config, objective, batch_size=args.prompts,
      prompt_length=args.prompt_length, response_length=args.response_length, epochs=1,
      num_minibatches=1, seed=0, pi0=pi0, samples_per_prompt=args.samples)
  history = []
  for step in range(1, args.iterations + 2):
    begin = time.perf_counter()
    state, metrics = rloo.rloo_iteration(setup, state, setup.batch(step))
    jax.block_until_ready(metrics)
    history.append(dict(setup.timings, total_s=time.perf_counter() - begin))
  rest = [h['total_s'] for h in history[1:]]
  leaves = jax.tree.leaves(state.policy.params)
  print(json.dumps({
      'load_s': load_s, 'first_iteration_s': history[0]['total_s'],
      'compile_s': history[0]['total_s'] - float(np.median(rest)),
      'iteration_s': common.summarize(rest), 'per_iteration': history,
      'peak_rss_bytes': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
      'peak_rss_after_load_bytes': rss_after_load,
      'policy_param_bytes': sum(x.nbytes for x in leaves),
      'lm_params': pretrained.param_count(model),
      'reward_model_params_each': common.count_params(setup.reward_params[0]),
      'policy_config': str(model.config),
      'kl': float(metrics['kl']), 'response_length': float(metrics['response_length'])}))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--layers', type=int, default=24)
  parser.add_argument('--param_dtype', default='float32', choices=['float32', 'bfloat16'])
  parser.add_argument('--prompts', type=int, default=2)
  parser.add_argument('--samples', type=int, default=2, help='responses per prompt (>= 2)')
  parser.add_argument('--prompt_length', type=int, default=16)
  parser.add_argument('--response_length', type=int, default=16)
  parser.add_argument('--iterations', type=int, default=2, help='timed, after 1 compiling one')
  parser.add_argument('--child', default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    _child(args.child, args)
    return
  config = dict(pretrained_load.QWEN25_05B, num_hidden_layers=args.layers)
  directory = tempfile.mkdtemp(prefix='pretrained_iteration_')
  share = common.CpuShare()
  try:
    checkpoint_bytes = pretrained_load.write_checkpoint(directory, config, 500 * 2 ** 20)
    env = dict(os.environ, JAX_PLATFORMS='cpu')
    env.pop('XLA_FLAGS', None)
    flags = [f'--{k}={getattr(args, k)}' for k in ('param_dtype', 'prompts', 'samples',
                                                  'prompt_length', 'response_length',
                                                  'iterations')]
    out = subprocess.run([sys.executable, '-m', 'benchmarks.pretrained_iteration', '--child',
                          directory, *flags], check=True, capture_output=True, text=True,
                         env=env, cwd=common.REPO_ROOT)
    child = json.loads(out.stdout.strip().splitlines()[-1])
  finally:
    shutil.rmtree(directory)
  common.emit({'benchmark': 'pretrained_iteration', 'machine': common.machine_info(),
               'config': {'shapes': 'Qwen2.5-0.5B', 'layers': args.layers,
                          'checkpoint_dtype': 'bfloat16', 'param_dtype': args.param_dtype,
                          'learner': 'rloo', 'prompts': args.prompts, 'samples': args.samples,
                          'prompt_length': args.prompt_length,
                          'response_length': args.response_length,
                          'reward_models': 'configs/models/t5_world.gin x2, policy vocabulary',
                          'objective': 'objectives/combined_lsc_sum.gin'},
               'checkpoint_bytes': checkpoint_bytes, **child, 'cpu_share': share.report()})


if __name__ == '__main__':
  main()
