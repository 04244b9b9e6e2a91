"""Entropy per token of the embedded world's data-collection policy, bounded from above by replay.

The collection policy (lsc_align.world.grammar.sample_response) draws a continuous effort
z ~ N(0, 1) and then a sequence of discrete choices d (uniform comparisons, picks, binomials,
mode choice). We run it with a recording generator that keeps every discrete outcome, then
replay the same outcomes at other efforts to get p(d | x, z) exactly, and integrate z out on a
grid (trapezoid rule against the normal density; the integrand is smooth in z):

    p(d | x) = ∫ p(d | x, z) φ(z) dz,      H_D = E[−log p(d | x)].

H_D is the entropy of the derivation, which is an upper bound on the entropy of the text,
H(Y | X) = H_D − H(D | Y, X) ≤ H_D. The gap comes from derivations that write the same words:
a phrase dropped at the 32-word budget (its random choices leave no trace) and a professional
that is in both the topic's and the general referral pool. It is exact otherwise; no closed
form for H(Y | X) exists because p(y | x) sums over all such derivations. Per token divides by
the number of response tokens (words + EOS), as the SFT loss does.

A second, independent upper bound is any model's cross-entropy on samples of the policy (π0's
is reported by the SFT trainer): CE = H(Y | X) + KL ≥ H(Y | X).
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Sequence

import numpy as np

from lsc_align.conventions import PROPERTY_SUBSETS
from lsc_align.world import dataset as world
from lsc_align.world import config as world_config
from lsc_align.world import gold as world_gold
from lsc_align.world import grammar as world_grammar

# Effort grid: z in [-7, 7] at spacing 0.1; N(0, 1) mass outside is 3e-12.
Z_GRID = np.linspace(-7.0, 7.0, 141)


class _Uniform(float):
  """A uniform draw that records (recording) or answers (replay) each comparison made with it.

  Every comparison narrows the interval [lo, hi) the draw is known to lie in; the probability of
  the draw's outcome is hi − lo (clipped to [0, 1]).
  """

  def __new__(cls, value: float, script: list[bool] | None = None):
    draw = super().__new__(cls, value)
    draw.outcomes = [] if script is None else script
    draw.replay = script is not None
    draw.position = 0
    draw.lo, draw.hi = 0.0, 1.0
    return draw

  def _compare(self, threshold: Any, below: bool) -> bool:
    t = float(threshold)
    if self.replay:
      result = self.outcomes[self.position]
      self.position += 1
    else:
      result = (float(self) < t) if below else (float(self) > t)
      self.outcomes.append(result)
    if result == below:  # u < t (or not u > t): the draw is below t
      self.hi = min(self.hi, t)
    else:
      self.lo = max(self.lo, t)
    return result

  def __lt__(self, other: Any) -> bool:
    return self._compare(other, below=True)

  def __le__(self, other: Any) -> bool:
    return self._compare(other, below=True)

  def __gt__(self, other: Any) -> bool:
    return self._compare(other, below=False)

  def __ge__(self, other: Any) -> bool:
    return self._compare(other, below=False)

  def log_prob(self) -> float:
    width = min(self.hi, 1.0) - max(self.lo, 0.0)
    return math.log(width) if width > 0 else -math.inf


class _RecordingGenerator:
  """The subset of np.random.Generator the grammar uses, recording every outcome on a tape."""

  def __init__(self, rng: np.random.Generator):
    self._rng = rng
    self.tape: list[tuple[str, Any]] = []

  def random(self) -> _Uniform:
    draw = _Uniform(self._rng.random())
    self.tape.append(('uniform', draw.outcomes))
    return draw

  def integers(self, n: int) -> int:
    value = int(self._rng.integers(n))
    self.tape.append(('integers', value))
    return value

  def binomial(self, n: int, p: float) -> int:
    value = int(self._rng.binomial(n, p))
    self.tape.append(('binomial', value))
    return value

  def choice(self, a: Any, p: Sequence[float] | None = None) -> Any:
    size = a if isinstance(a, int) else len(a)
    index = int(self._rng.choice(size, p=p))
    self.tape.append(('choice', index))
    return index if isinstance(a, int) else a[index]

  def standard_normal(self) -> float:
    value = float(self._rng.standard_normal())
    self.tape.append(('normal', value))
    return value


class _ReplayGenerator:
  """Replays a tape's outcomes at effort noise z, accumulating log p(outcomes | x, z)."""

  def __init__(self, tape: list[tuple[str, Any]], z: float):
    self._tape = tape
    self._z = z
    self._next = 0
    self._draws: list[_Uniform] = []
    self._log_prob = 0.0

  def _take(self, kind: str) -> Any:
    recorded_kind, value = self._tape[self._next]
    if recorded_kind != kind:
      raise RuntimeError(f'replay diverged at call {self._next}: {kind} vs {recorded_kind}')
    self._next += 1
    return value

  def random(self) -> _Uniform:
    draw = _Uniform(0.5, script=self._take('uniform'))
    self._draws.append(draw)
    return draw

  def integers(self, n: int) -> int:
    self._log_prob -= math.log(n)
    return self._take('integers')

  def binomial(self, n: int, p: float) -> int:
    k = self._take('binomial')
    p = min(max(float(p), 0.0), 1.0)
    if (p == 0.0 and k > 0) or (p == 1.0 and k < n):
      self._log_prob = -math.inf
    elif 0.0 < p < 1.0:
      self._log_prob += (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
                         + k * math.log(p) + (n - k) * math.log1p(-p))
    return k

  def choice(self, a: Any, p: Sequence[float] | None = None) -> Any:
    index = self._take('choice')
    size = a if isinstance(a, int) else len(a)
    self._log_prob += math.log(p[index]) if p is not None else -math.log(size)
    return index if isinstance(a, int) else a[index]

  def standard_normal(self) -> float:
    self._take('normal')
    return self._z  # its density is the integration weight, not part of p(d | x, z)

  def log_prob(self) -> float:
    if self._next != len(self._tape):
      raise RuntimeError(f'replay used {self._next} of {len(self._tape)} recorded outcomes')
    return self._log_prob + sum(d.log_prob() for d in self._draws)


def sample_with_tape(config: world_config.WorldConfig, props: world_gold.PromptProperties,
                     rng: np.random.Generator) -> tuple[list[str], list[tuple[str, Any]]]:
  """One response of the collection policy and the tape of its discrete outcomes."""
  recorder = _RecordingGenerator(rng)
  words = world_grammar.sample_response(config, props, recorder)  # type: ignore[arg-type]
  return words, recorder.tape


def derivation_log_prob(config: world_config.WorldConfig, props: world_gold.PromptProperties,
                        tape: list[tuple[str, Any]], z: float) -> float:
  """log p(d | x, z): the tape's outcomes replayed with effort noise z."""
  replay = _ReplayGenerator(tape, z)
  world_grammar.sample_response(config, props, replay)  # type: ignore[arg-type]
  return replay.log_prob()


def marginal_log_prob(config: world_config.WorldConfig, props: world_gold.PromptProperties,
                      tape: list[tuple[str, Any]], z_grid: np.ndarray = Z_GRID) -> float:
  """log p(d | x) = log ∫ p(d | x, z) φ(z) dz on a trapezoid grid."""
  spacing = np.diff(z_grid)
  weights = np.zeros_like(z_grid)
  weights[:-1] += spacing / 2
  weights[1:] += spacing / 2
  log_weights = np.log(weights) - 0.5 * z_grid ** 2 - 0.5 * math.log(2 * math.pi)
  terms = np.array([derivation_log_prob(config, props, tape, float(z)) for z in z_grid])
  terms = terms + log_weights
  peak = np.max(terms)
  if not np.isfinite(peak):
    raise RuntimeError('the recorded derivation has probability 0 at every grid effort')
  return float(peak + np.log(np.sum(np.exp(terms - peak))))


@dataclasses.dataclass(frozen=True)
class PolicyEntropyEstimate:
  """Monte Carlo estimate of H_D (nats) over fresh samples for the given prompts."""
  samples: list[tuple[list[str], list[str]]]  # (prompt words, response words)
  neg_log_probs: np.ndarray  # −log p(d | x) per sample
  tokens: np.ndarray  # response words + EOS per sample

  def summary(self) -> dict[str, Any]:
    n = len(self.neg_log_probs)
    per_response = float(self.neg_log_probs.mean())
    half = 1.959963984540054 * float(self.neg_log_probs.std(ddof=1)) / math.sqrt(n)
    total_tokens = float(self.tokens.sum())
    return {'samples': n, 'prompts': len({tuple(p) for p, _ in self.samples}),
            'entropy_per_token_upper_bound': float(self.neg_log_probs.sum()) / total_tokens,
            'entropy_per_response_upper_bound': per_response,
            'entropy_per_response_ci95_half': half,
            'tokens_per_response': total_tokens / n,
            'method': 'derivation entropy with effort integrated out (upper bound on H(Y|X))'}


def estimate(config: world_config.WorldConfig, prompts: Sequence[Sequence[str]],
             samples_per_prompt: int = 2, seed: int = 0) -> PolicyEntropyEstimate:
  """H_D on fresh samples of the collection policy for each prompt (words with markers)."""
  lexicon = world_gold.build_lexicon(config)
  rng = np.random.default_rng([config.seed, 7919, seed])
  samples, neg_log_probs, tokens = [], [], []
  for prompt in prompts:
    props = world_gold.prompt_properties(lexicon, list(prompt))
    for _ in range(samples_per_prompt):
      words, tape = sample_with_tape(config, props, rng)
      samples.append((list(prompt), words))
      neg_log_probs.append(-marginal_log_prob(config, props, tape))
      tokens.append(len(words) + 1)
  return PolicyEntropyEstimate(samples, np.array(neg_log_probs), np.array(tokens, float))


def data_prompts(data_dir: str | os.PathLike[str], split: str,
                 property_name: str = 'helpful') -> list[list[str]]:
  """The distinct prompts (words) of a world split, in file order."""
  from lsc_align.world import stats as world_stats  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.fspath(data_dir), PROPERTY_SUBSETS[property_name],
                      f'{split}.jsonl.gz')
  prompts: dict[tuple[str, ...], None] = {}
  for number, row in enumerate(world.read_jsonl_gz(path), start=1):
    prompt, _ = world_stats.split_dialogue(row['chosen'], f'{path}:{number}')
    prompts[tuple(prompt)] = None
  return [list(p) for p in prompts]


def estimate_from_data(data_dir: str | os.PathLike[str], split: str, *,
                       samples_per_prompt: int = 2, seed: int = 0) -> PolicyEntropyEstimate:
  """`estimate` for the helpful prompts of a written world's split, with its own config."""
  return estimate(world.load_config(os.fspath(data_dir)), data_prompts(data_dir, split),
                  samples_per_prompt=samples_per_prompt, seed=seed)
