"""Subprocess side of tests/distributed_ppo_test.py: a few PPO iterations of the tiny setup.

    python tests/distributed_ppo_worker.py --out DIR --steps N --mesh D,M

One process of a cluster described by LSC_ALIGN_* variables, or a single process. Builds the
tiny PPO setup of tests/ppo_test.py (random-init policy and reward model, fixed seeds, 32
prompts, batch 16) on a ('data', 'model') mesh of shape D x M over every global device, runs N
`ppo.ppo_iteration` steps, each process feeding its own prompt rows (`PPOSetup.batch`), and
writes (process 0 only) DIR/metrics.json (per-step metrics) and DIR/params.npz (final π).
Every process writes DIR/process_<i>.json with its view of the cluster and a parameter checksum.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

if __name__ == '__main__':  # the test runs this file directly; make lsc_align importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from lsc_align import distributed  # pylint: disable=g-import-not-at-top
from lsc_align import io_utils  # pylint: disable=g-import-not-at-top

NUM_PROMPTS = 32
BATCH_SIZE = 16
VOCAB = 12


def make_setup(mesh):
  """(PPOSetup, initial PPOState) of tests/ppo_test.py, everything fixed replicated on `mesh`."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from lsc_align import partitioning  # pylint: disable=g-import-not-at-top
  # pylint: disable=g-import-not-at-top
  from lsc_align.models import policy, reward_model, t5_encoder
  from lsc_align.rewards import make_objective  # pylint: disable=g-import-not-at-top
  from lsc_align.align import ppo, ppo_step, scoring_step  # pylint: disable=g-import-not-at-top

  policy_config = policy.PolicyConfig(vocab_size=VOCAB, emb_dim=32, num_heads=2, head_dim=16,
                                      mlp_dim=64, num_layers=1, max_len=24, value_hidden_dim=16)
  rm_config = reward_model.RewardModelConfig(encoder=t5_encoder.T5EncoderConfig(
      vocab_size=VOCAB, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32, num_layers=1))
  hp = ppo_step.PPOHyperparams(policy_lr=3e-3, value_lr=3e-3, warmup_steps=1, epochs=2,
                               num_minibatches=2, max_response_length=6)
  objective = make_objective('t', ['helpful'], 'lsc', {'helpful': ('quantile', 0.5)})
  replicated = partitioning.replicated(mesh)

  # Built inside jit with replicated outputs: every process computes the same values from the
  # same seeds, and device_put cannot target the devices of other processes.
  def init_models():
    rm = reward_model.RewardModel(rm_config).init(jax.random.key(1), jnp.ones((1, 4), jnp.int32))
    return rm['params'], policy.init_params(policy_config, jax.random.key(2))

  rm_params, pi0 = jax.jit(init_models, out_shardings=replicated)()
  state = jax.jit(lambda p: ppo.init_state(p, hp, seed=0), out_shardings=replicated)(pi0)
  prompts = np.random.default_rng(0).integers(3, VOCAB, size=(NUM_PROMPTS, 5)).astype(np.int32)
  prompts[::2, 3:] = 0  # prompts of different lengths
  scorer = scoring_step.Scorer(objective, (rm_config,), policy_config)
  setup = ppo.PPOSetup(scorer=scorer, hp=hp, kl_coef=0.02, reward_params=(rm_params,),
                       ref_policy_params=pi0, prompt_ids=prompts,
                       table_refs=np.zeros((NUM_PROMPTS, 1), np.float32),
                       batch_size=BATCH_SIZE, mesh=mesh)
  return setup, state


def flat_params(params) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): v
          for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}


def checksum(flat: dict) -> float:
  """Sum of every parameter (float64): equal on every process when π is replicated."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  return float(sum(np.sum(v, dtype=np.float64) for v in flat.values()))


def run(args) -> int:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from lsc_align import partitioning  # pylint: disable=g-import-not-at-top
  from lsc_align.align import ppo  # pylint: disable=g-import-not-at-top

  start = time.perf_counter()
  initialised = distributed.maybe_initialize()
  mesh = partitioning.create_mesh(tuple(int(s) for s in args.mesh.split(',')))
  setup, state = make_setup(mesh)
  initial_sum = checksum(flat_params(distributed.fetch_to_host(state.policy.params)))
  history = []
  replicated_metrics = True
  rows = []
  with partitioning.activate(mesh):
    for step in range(1, args.steps + 1):
      batch = setup.batch(step)
      rows.append(batch['prompt_index'].tolist())
      state, metrics = ppo.ppo_iteration(setup, state, batch)
      replicated_metrics &= all(v.shape == () and v.is_fully_replicated for v in metrics.values())
      history.append({k: float(v) for k, v in distributed.fetch_to_host(metrics).items()})
  params = flat_params(distributed.fetch_to_host(state.policy.params))
  out = pathlib.Path(args.out)
  if distributed.is_main_process():
    np.savez(out / 'params.npz', **params)
    io_utils.atomic_write_json(out / 'metrics.json', history)
  distributed.barrier('ppo_worker_done')
  info = {'initialised': initialised, 'process_index': jax.process_index(),
          'process_count': jax.process_count(), 'device_count': jax.device_count(),
          'local_device_count': jax.local_device_count(), 'mesh': dict(mesh.shape),
          'prompt_rows': rows, 'step': int(distributed.fetch_to_host(state.step)),
          'metrics_replicated': bool(replicated_metrics), 'initial_param_sum': initial_sum,
          'param_sum': checksum(params),
          'wall_s': time.perf_counter() - start}
  io_utils.atomic_write_json(out / f'process_{jax.process_index()}.json', info)
  return 0


def main(argv=None) -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument('--out', required=True)
  parser.add_argument('--steps', type=int, default=2)
  parser.add_argument('--mesh', default='4,1', help='data,model mesh shape over all devices')
  return run(parser.parse_args(argv))


if __name__ == '__main__':
  sys.exit(main())
