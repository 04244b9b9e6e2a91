"""The PPO and RLOO iterations give the numbers of the per-minibatch code they replaced.

tests/data/ppo_golden.npz holds, for each case below, the metrics of every iteration and the
final parameters of a few iterations on a fixed seed. It was written by the per-minibatch update
(one jitted `update_step` per minibatch, permutation drawn on the host, logits over every position)
at commit 3363ccd, with this file's `write_golden` under the test session's XLA flags:

    python -m tests.ppo_speed_equivalence_test --write

The fused update (one compiled program for all epochs × minibatches, logits at response positions
only) reassociates float sums, so the comparison allows float32 rounding: parameters to
rtol 2e-4 / atol 2e-6 after 3 iterations (3 × 4 Adam updates), metrics to rtol 1e-3 / atol 1e-5
(clip fractions count tokens either side of a threshold: atol 1 / 96 tokens = one token).
"""
import argparse
import os
import pathlib

if __name__ == '__main__':  # the test session's devices (tests/conftest.py), for --write
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                             + ' --xla_force_host_platform_device_count=8').strip()

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

from lsc_align.models import policy, reward_model, t5_encoder  # pylint: disable=g-import-not-at-top
from lsc_align.rewards import make_objective  # pylint: disable=g-import-not-at-top
from lsc_align.align import (  # pylint: disable=g-import-not-at-top
    learners, ppo, ppo_step, scoring_step)

GOLDEN = pathlib.Path(__file__).resolve().parent / 'data' / 'ppo_golden.npz'
VOCAB = 24
POLICY = policy.PolicyConfig(vocab_size=VOCAB, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                             num_layers=2, max_len=24, value_hidden_dim=16)
RM = reward_model.RewardModelConfig(encoder=t5_encoder.T5EncoderConfig(
    vocab_size=VOCAB, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32, num_layers=1))
ITERATIONS = 3
# Both cases: 2 epochs × 2 minibatches, value clip on, a non-zero entropy bonus and a
# temperature != 1, so every loss term and its gradient is exercised.
CASES = {
    'ppo': ppo_step.PPOHyperparams(policy_lr=3e-3, value_lr=3e-3, warmup_steps=1, epochs=2,
                                   num_minibatches=2, max_response_length=6, entropy_coef=0.01,
                                   temperature=0.9),
    'rloo': ppo_step.PPOHyperparams(policy_lr=3e-3, value_lr=3e-3, warmup_steps=1, epochs=2,
                                    num_minibatches=2, max_response_length=6, entropy_coef=0.01,
                                    samples_per_prompt=2),
}
PARAM_TOL = dict(rtol=2e-4, atol=2e-6)
METRIC_TOL = dict(rtol=1e-3, atol=1e-5)


def run_case(name: str) -> tuple[list[dict[str, float]], dict[str, np.ndarray]]:
  """(metrics of each iteration, final parameters by path) of case `name`."""
  hp = CASES[name]
  objective = make_objective('t', ['helpful'], 'lsc', {'helpful': ('quantile', 0.5)})
  rm_params = reward_model.RewardModel(RM).init(jax.random.key(1), jnp.ones((1, 4), jnp.int32))
  pi0 = policy.init_params(POLICY, jax.random.key(2))
  prompts = np.random.default_rng(0).integers(3, VOCAB, size=(16, 5)).astype(np.int32)
  prompts[::2, 3:] = 0  # prompts of different lengths
  setup = ppo.PPOSetup(scorer=scoring_step.Scorer(objective, (RM,), POLICY, hp.temperature),
                       hp=hp,
                       kl_coef=0.05, reward_params=(rm_params['params'],), ref_policy_params=pi0,
                       prompt_ids=prompts, table_refs=np.zeros((16, 1), np.float32),
                       batch_size=8 // hp.samples_per_prompt)
  state = ppo.init_state(pi0, hp, seed=0)
  iterate = learners.iteration_fn(name)
  history = []
  for step in range(1, ITERATIONS + 1):
    state, metrics = iterate(setup, state, setup.batch(step))
    history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
  flat = jax.tree_util.tree_flatten_with_path(jax.device_get(state.policy.params))[0]
  return history, {jax.tree_util.keystr(path): np.asarray(x) for path, x in flat}


def write_golden() -> None:
  arrays = {}
  for name in CASES:
    history, params = run_case(name)
    for key in history[0]:
      arrays[f'{name}/metrics/{key}'] = np.array([h[key] for h in history], np.float64)
    for path, x in params.items():
      arrays[f'{name}/params/{path}'] = x
  GOLDEN.parent.mkdir(exist_ok=True)
  np.savez_compressed(GOLDEN, **arrays)


@pytest.mark.parametrize('name', sorted(CASES))
def test_iterations_match_the_per_minibatch_code(name):
  golden = np.load(GOLDEN)
  history, params = run_case(name)
  metric_keys = sorted(k.split('/')[-1] for k in golden if k.startswith(f'{name}/metrics/'))
  assert metric_keys == sorted(history[0]), (metric_keys, sorted(history[0]))
  for key in metric_keys:
    got = np.array([h[key] for h in history])
    tol = dict(rtol=0.0, atol=1.0 / 96) if 'fraction' in key else METRIC_TOL
    np.testing.assert_allclose(got, golden[f'{name}/metrics/{key}'], err_msg=key, **tol)
  param_keys = sorted(k[len(f'{name}/params/'):] for k in golden
                      if k.startswith(f'{name}/params/'))
  assert param_keys == sorted(params)
  start = {jax.tree_util.keystr(path): np.asarray(x) for path, x in
           jax.tree_util.tree_flatten_with_path(policy.init_params(POLICY, jax.random.key(2)))[0]}
  moved = 0.0
  for path in param_keys:
    want = golden[f'{name}/params/{path}']
    np.testing.assert_allclose(params[path], want, err_msg=path, **PARAM_TOL)
    moved = max(moved, float(np.max(np.abs(want - start[path]))))
  assert moved > 100 * PARAM_TOL['atol']


if __name__ == '__main__':
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--write', action='store_true', help=f'(re)write {GOLDEN}')
  if parser.parse_args().write:
    write_golden()
