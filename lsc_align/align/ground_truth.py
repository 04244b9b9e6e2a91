"""An enumerable alignment problem: exact J*, π* and KL(π*‖π0) to measure learners against.

Responses are at most `max_response_length` tokens over a small vocabulary, so every response a
policy can emit (EOS-terminated or cut at the length limit; pad is never emitted) is listed. The
policy is the real `PolicyLM` (π0 a seeded initialisation), the rewards are real `RewardModel`s
(seeded, their scalar heads rescaled to a chosen spread), and utilities come from the reward
library exactly as in the scoring step. With log π0(y|x) and u(x, y) for every y,

  π*(y|x) = π0(y|x) exp(u/γ) / Z(x),   J*(x) = γ log Z(x),   KL(π*‖π0) = E_π*[u]/γ − log Z(x),

and any policy π's objective J(π) = E_π[u] − γ KL(π‖π0) is a finite sum, with no sampling error.
The learners (`ppo.ppo_iteration`, `rloo.rloo_iteration`) run on it unchanged.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lsc_align.models import policy, reward_model, sampling, t5_encoder
from lsc_align.models.policy import EOS_ID, PolicyConfig
from lsc_align.rewards import aggregate, make_objective
from lsc_align.rewards.objectives import Objective
from lsc_align.align import ppo_step, scoring_step

PROPERTIES = ('helpful', 'harmless')


def all_responses(vocab_size: int, max_response_length: int) -> np.ndarray:
  """Every response the sampler can emit: [M, Lr] int32, EOS-terminated or of full length.

  Content tokens are 2 .. vocab_size − 1 (0 is pad, never emitted; 1 is EOS, which ends a
  response). M = Σ_{l<Lr} C^l + C^Lr with C = vocab_size − 2 content tokens.
  """
  content = range(2, vocab_size)
  rows = []
  for length in range(max_response_length + 1):
    for prefix in itertools.product(content, repeat=length):
      if length < max_response_length:
        rows.append(list(prefix) + [EOS_ID] + [0] * (max_response_length - length - 1))
      else:
        rows.append(list(prefix))
  return np.asarray(rows, np.int32)


@dataclasses.dataclass(frozen=True)
class GroundTruthSizes:
  """Sizes of the enumerable problem."""
  vocab_size: int = 8
  max_response_length: int = 2
  num_prompts: int = 8
  prompt_length: int = 3
  reward_scale: float = 2.0   # std of each raw reward over all (prompt, response) pairs
  seed: int = 0


@dataclasses.dataclass
class GroundTruthProblem:
  """π0, two reward models, prompts, every response, and the exact per-response tables."""
  sizes: GroundTruthSizes
  policy_config: PolicyConfig
  reward_config: reward_model.RewardModelConfig
  pi0_params: Any
  reward_params: tuple[Any, Any]          # helpful, harmless
  prompt_ids: np.ndarray                  # [P, Lp]
  responses: np.ndarray                   # [M, Lr]
  logp0: np.ndarray                       # [P, M] log π0(y|x), Σ_y exp = 1
  rewards: np.ndarray                     # [P, M, 2] raw r_helpful, r_harmless
  references: np.ndarray                  # [P, 2] π0-median of each reward

  def objective(self, name: str) -> Objective:
    """'lsc_sum' (Σ log σ(r_i − median)) or 'raw_sum' (0.5 r_help + 0.5 r_harm)."""
    if name == 'lsc_sum':
      return make_objective('lsc_sum', PROPERTIES, 'lsc',
                            {p: ('quantile', 0.5) for p in PROPERTIES})
    if name == 'raw_sum':
      return make_objective('raw_sum', PROPERTIES, 'raw', helpful_weight=0.5)
    raise ValueError(f'ground-truth objective {name!r} must be lsc_sum or raw_sum')

  def utilities(self, objective: Objective) -> np.ndarray:
    """u(x, y) for every prompt and response: [P, M], by the reward library's `utility`."""
    refs = np.broadcast_to(self.references[:, None, :], self.rewards.shape)
    return np.asarray(aggregate.utility(self.rewards, refs, objective), np.float64)

  def scorer(self, objective: Objective, temperature: float = 1.0) -> scoring_step.Scorer:
    return scoring_step.Scorer(objective, (self.reward_config,) * 2, self.policy_config,
                               temperature)


@functools.partial(jax.jit, static_argnames=('config',))
def _sequence_logprobs(params: Any, config: PolicyConfig, prompt_ids: jax.Array,
                       responses: jax.Array) -> jax.Array:
  scores = sampling.response_logprobs(params, config, prompt_ids, responses)
  return jnp.sum(scores.logprobs, axis=-1)


def sequence_logprobs(params: Any, config: PolicyConfig, prompt_ids: np.ndarray,
                      responses: np.ndarray) -> np.ndarray:
  """log π(y|x) for every prompt × every response: [P, M] float64."""
  p, m = prompt_ids.shape[0], responses.shape[0]
  out = _sequence_logprobs(params, config, jnp.asarray(np.repeat(prompt_ids, m, axis=0)),
                           jnp.asarray(np.tile(responses, (p, 1))))
  return np.asarray(out, np.float64).reshape(p, m)


def _weighted_median(values: np.ndarray, logw: np.ndarray) -> float:
  order = np.argsort(values)
  cdf = np.cumsum(np.exp(logw[order]))
  return float(values[order][np.searchsorted(cdf, 0.5 * cdf[-1])])


def make_problem(sizes: GroundTruthSizes = GroundTruthSizes()) -> GroundTruthProblem:
  """A seeded problem: random-init π0 and reward models, heads rescaled to `reward_scale`.

  Nothing here looks at any comparison of utilities: the rewards are seeded random functions of
  the packed (prompt, response) tokens, normalised to a fixed spread; the references are the exact
  π0-medians of each reward per prompt (the paper's combined-objective reference).
  """
  v = sizes.vocab_size
  config = PolicyConfig(vocab_size=v, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64,
                        num_layers=1, max_len=sizes.prompt_length + sizes.max_response_length + 2,
                        value_hidden_dim=32)
  rm_config = reward_model.RewardModelConfig(encoder=t5_encoder.T5EncoderConfig(
      vocab_size=v, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32, num_layers=1))
  keys = jax.random.split(jax.random.key(sizes.seed), 4)
  pi0 = policy.init_params(config, keys[0])
  rng = np.random.default_rng(sizes.seed)
  prompts = rng.integers(2, v, size=(sizes.num_prompts, sizes.prompt_length)).astype(np.int32)
  prompts[1::2, sizes.prompt_length - 1:] = 0  # prompts of two lengths
  responses = all_responses(v, sizes.max_response_length)
  logp0 = sequence_logprobs(pi0, config, prompts, responses)
  p, m = logp0.shape
  tokens_p = jnp.asarray(np.repeat(prompts, m, axis=0))
  tokens_r = jnp.asarray(np.tile(responses, (p, 1)))
  reward_params, columns = [], []
  for key in keys[1:3]:
    params = nn.meta.unbox(reward_model.RewardModel(rm_config).init(
        key, jnp.ones((1, 4), jnp.int32)))['params']
    raw = np.asarray(scoring_step.reward_model_rewards((rm_config,), (params,), tokens_p,
                                                       tokens_r))
    mean, std = raw.mean(), raw.std()
    head = dict(params['reward_head'])
    head['kernel'] = head['kernel'] * (sizes.reward_scale / std)
    head['bias'] = (head['bias'] - mean) * (sizes.reward_scale / std)
    params = {**params, 'reward_head': head}
    reward_params.append(jax.tree.map(np.asarray, params))
    columns.append(np.asarray(scoring_step.reward_model_rewards(
        (rm_config,), (params,), tokens_p, tokens_r))[:, 0].reshape(p, m))
  rewards = np.stack(columns, axis=-1).astype(np.float64)
  refs = np.array([[_weighted_median(rewards[i, :, j], logp0[i]) for j in range(2)]
                   for i in range(p)])
  return GroundTruthProblem(sizes, config, rm_config, pi0, tuple(reward_params), prompts,
                            responses, logp0, rewards, refs)


def exact_optimum(logp0: np.ndarray, u: np.ndarray, gamma: float) -> dict[str, np.ndarray]:
  """Per prompt: J* = γ log Z, KL(π*‖π0), E_π*[u], and log π* [P, M]."""
  a = logp0 + u / gamma
  log_z = np.logaddexp.reduce(a, axis=1)
  log_pi = a - log_z[:, None]
  pi = np.exp(log_pi)
  return {'objective': gamma * log_z, 'kl': np.sum(pi * (log_pi - logp0), axis=1),
          'utility': np.sum(pi * u, axis=1), 'log_pi': log_pi}


def exact_objective(logp: np.ndarray, logp0: np.ndarray, u: np.ndarray,
                    gamma: float) -> dict[str, np.ndarray]:
  """Per prompt: J(π) = E_π[u] − γ KL(π‖π0), KL(π‖π0) and E_π[u], by exact sums over responses."""
  pi = np.exp(logp)
  kl = np.sum(pi * (logp - logp0), axis=1)
  utility = np.sum(pi * u, axis=1)
  return {'objective': utility - gamma * kl, 'kl': kl, 'utility': utility}


def evaluate_policy(problem: GroundTruthProblem, params: Any, objective: Objective,
                    gamma: float) -> dict[str, float]:
  """π's exact J, KL and E[u], the exact optimum's, and the share (J − J_π0)/(J* − J_π0)."""
  u = problem.utilities(objective)
  logp = sequence_logprobs(params, problem.policy_config, problem.prompt_ids, problem.responses)
  reached = exact_objective(logp, problem.logp0, u, gamma)
  best = exact_optimum(problem.logp0, u, gamma)
  baseline = float(np.mean(np.sum(np.exp(problem.logp0) * u, axis=1)))
  j, j_star = float(reached['objective'].mean()), float(best['objective'].mean())
  return {'objective': j, 'kl': float(reached['kl'].mean()),
          'utility': float(reached['utility'].mean()),
          'optimum_objective': j_star, 'optimum_kl': float(best['kl'].mean()),
          'optimum_utility': float(best['utility'].mean()), 'pi0_objective': baseline,
          'share': (j - baseline) / (j_star - baseline),
          'kl_ratio': float(reached['kl'].mean()) / float(best['kl'].mean())}


def make_setup(problem: GroundTruthProblem, objective: Objective, gamma: float,
               hp: ppo_step.PPOHyperparams, batch_size: int, seed: int = 0,
               copies: int = 4) -> Any:
  """A `ppo.PPOSetup` on the problem: its prompts (each `copies` times, so a batch may repeat a
  prompt), its reward models and the exact π0-median references."""
  # ppo imports this module's peers, hence the late import.
  from lsc_align.align import ppo  # pylint: disable=g-import-not-at-top
  if hp.max_response_length != problem.sizes.max_response_length:
    raise ValueError(f'hp.max_response_length {hp.max_response_length} != the problem\'s '
                     f'{problem.sizes.max_response_length}')
  return ppo.PPOSetup(scorer=problem.scorer(objective, hp.temperature), hp=hp, kl_coef=gamma,
                      reward_params=problem.reward_params, ref_policy_params=problem.pi0_params,
                      prompt_ids=np.tile(problem.prompt_ids, (copies, 1)),
                      table_refs=np.tile(problem.references, (copies, 1)).astype(np.float32),
                      batch_size=batch_size, seed=seed)


def train(problem: GroundTruthProblem, objective: Objective, gamma: float,
          hp: ppo_step.PPOHyperparams, *, learner: str = 'ppo', iterations: int,
          batch_size: int, seed: int = 0, eval_every: int = 0,
          copies: int = 4) -> dict[str, Any]:
  """Runs a learner's real iteration on the problem; exact evaluation at the end (and every
  `eval_every` iterations). Returns {'final': evaluate_policy(...), 'history': [...],
  'critic': critic-init statistics}."""
  from lsc_align.align import critic, learners, ppo  # pylint: disable=g-import-not-at-top
  setup = make_setup(problem, objective, gamma, hp, batch_size, seed, copies)
  step_fn = learners.iteration_fn(learner)
  state = ppo.init_state(problem.pi0_params, hp, seed)
  critic_stats = {}
  if learner == 'ppo':
    state, critic_stats = critic.init_critic(setup, state)
  history = []
  for step in range(1, iterations + 1):
    state, metrics = step_fn(setup, state, setup.batch(step))
    if eval_every and step % eval_every == 0 and step < iterations:
      history.append({'iteration': step, **evaluate_policy(problem, state.policy.params,
                                                           objective, gamma),
                      'value_loss': float(metrics.get('value_loss', np.nan))})
  final = evaluate_policy(problem, state.policy.params, objective, gamma)
  history.append({'iteration': iterations, **final})
  return {'final': final, 'history': history, 'critic': critic_stats,
          'params': state.policy.params}
