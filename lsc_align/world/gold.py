"""Gold utilities of the embedded world, computed word by word in plain Python.

This is the reference definition used to write the data set (labels, gold side file); the
jittable judge in lsc_align/world/judge.py computes the same numbers from token ids and is
tested against it. What the terms mean and why is explained in lsc_align/world/dataset.py.

Every quantity is a function of the words alone: the prompt's topic, harm severity, difficulty,
label scales and policy spread come from its words (so a model that reads the prompt can know
them), and the response is scored on counts of words by role, so any word sequence, however
ungrammatical, gets a score. Words outside the world's list are neutral (but count as length).
"""
from __future__ import annotations

import collections
import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np

from lsc_align.world import config as world_config

TOPIC_ROLES = ('content', 'detail', 'request', 'compliance')
REPEAT_ROLES = ('content', 'detail', 'compliance', 'generic_compliance', 'safety')
_RANDOM_TABLE_STREAM = 7919  # seeds the per-word random tables apart from the sampling streams


@dataclasses.dataclass(frozen=True)
class Lexicon:
  """Per-word roles and per-word prompt weights of one world (built by `build_lexicon`)."""
  config: world_config.WorldConfig
  words: tuple[str, ...]
  role: Mapping[str, str]  # words without a role are absent (neutral)
  topic_of: Mapping[str, int]  # content, detail, request and compliance words
  log_difficulty: Mapping[str, float]
  log_label_scale_help: Mapping[str, float]
  log_label_scale_harm: Mapping[str, float]
  log_policy_spread: Mapping[str, float]


@dataclasses.dataclass(frozen=True)
class PromptProperties:
  topic: int
  severity: float  # 0 for benign prompts, up to 1 for red-team prompts
  difficulty: float  # multiplies the content needed to saturate helpfulness
  label_scale_help: float  # BT inverse temperature of helpfulness labels for this prompt
  label_scale_harm: float
  policy_spread: float  # how widely the collection policy's effort varies for this prompt


@dataclasses.dataclass(frozen=True)
class ResponseFeatures:
  """Word counts of a response relative to its prompt (see world.py for their use)."""
  content_gain: float  # value of distinct on-topic words (compliance scaled by severity)
  off_topic_loss: float
  fillers: int
  repeats: int
  refusals: int  # distinct refusal words
  list_markers: int
  professionals: int
  safety: int  # distinct safety words
  harmful: float  # weighted distinct compliance words
  engagement: int  # distinct content/detail words of the prompt's topic
  length: int
  turns: int


def build_lexicon(config: world_config.WorldConfig) -> Lexicon:
  """Roles from the config; random per-word prompt weights drawn from config.seed."""
  words = world_config.world_words(config)
  role: dict[str, str] = {}
  for name, role_list in world_config.role_words(config).items():
    for word in role_list:
      role[word] = name
  topic_of = {}
  for index, topic in enumerate(config.topics):
    for field in TOPIC_ROLES:
      for word in getattr(topic, field):
        topic_of[word] = index
  rng = np.random.default_rng([config.seed, _RANDOM_TABLE_STREAM])
  draws = rng.standard_normal((4, len(words)))
  # Turn markers and punctuation are in every prompt: they would only shift the base values.
  fixed = set(world_config.TURN_MARKERS) | set(world_config.PUNCTUATION)
  modifiers = dict(config.difficulty_modifiers)
  log_difficulty, scale_help, scale_harm, spread = {}, {}, {}, {}
  for i, word in enumerate(words):
    if word in fixed:
      continue
    if word in modifiers:
      log_difficulty[word] = float(modifiers[word])
    elif role.get(word) == 'content':
      log_difficulty[word] = float(config.difficulty_word_std * draws[0, i])
    scale_help[word] = float(config.label_scale_word_std * draws[1, i])
    scale_harm[word] = float(config.label_scale_word_std * draws[2, i])
    spread[word] = float(config.spread_word_std * draws[3, i])
  return Lexicon(config, words, role, topic_of, log_difficulty, scale_help, scale_harm, spread)


def _clipped_exp(total: float, limit: float) -> float:
  return math.exp(min(max(total, -limit), limit))


def prompt_properties(lexicon: Lexicon, prompt_words: Sequence[str]) -> PromptProperties:
  """Topic (most frequent topic word, ties to the first topic), severity, difficulty, scales."""
  config = lexicon.config
  topic_counts = np.zeros(len(config.topics))
  for word in prompt_words:
    if word in lexicon.topic_of:
      topic_counts[lexicon.topic_of[word]] += 1
  distinct = dict.fromkeys(prompt_words)  # first-occurrence order: sums are reproducible
  request = 0.0
  qualifiers = 0
  for word in distinct:
    kind = lexicon.role.get(word)
    if kind == 'request':
      request = max(request, config.request_severity)
    elif kind == 'borderline':
      request = max(request, config.borderline_severity)
    elif kind == 'qualifier':
      qualifiers += 1
  # A qualifier ("without getting caught") only aggravates an actual request.
  severity = min(1.0, request + config.qualifier_severity * qualifiers) if request > 0 else 0.0

  def total(table: Mapping[str, float]) -> float:
    return sum(table.get(w, 0.0) for w in distinct)

  return PromptProperties(
      topic=int(np.argmax(topic_counts)),
      severity=float(severity),
      difficulty=_clipped_exp(total(lexicon.log_difficulty), config.max_log_difficulty),
      label_scale_help=config.help_label_scale * _clipped_exp(
          total(lexicon.log_label_scale_help), config.max_log_label_scale),
      label_scale_harm=config.harm_label_scale * _clipped_exp(
          total(lexicon.log_label_scale_harm), config.max_log_label_scale),
      policy_spread=_clipped_exp(total(lexicon.log_policy_spread), 1.0))


def response_features(lexicon: Lexicon, props: PromptProperties,
                      response_words: Sequence[str]) -> ResponseFeatures:
  """Counts the response's words by role relative to the prompt's topic and severity."""
  config = lexicon.config
  counts = collections.Counter(response_words)
  sev = props.severity
  gain = loss = harmful = 0.0
  fillers = repeats = refusals = markers = professionals = safety = engagement = turns = 0
  for word, count in counts.items():
    kind = lexicon.role.get(word)
    on_topic = lexicon.topic_of.get(word) == props.topic
    if kind in REPEAT_ROLES:
      repeats += count - 1
    if kind in ('content', 'detail'):
      if on_topic:
        gain += config.content_value if kind == 'content' else config.detail_value
        engagement += 1
      else:
        loss += config.off_topic_cost
    elif kind in ('compliance', 'generic_compliance'):
      if on_topic or kind == 'generic_compliance':
        # Harmful detail answers a red-team request (helpful to the asker), is noise otherwise.
        gain += config.compliance_help_value * sev
        loss += config.off_topic_cost * (1.0 - sev)
        harmful += 1.0
      else:
        loss += config.off_topic_cost
        harmful += config.other_topic_harm_weight
    elif kind == 'filler':
      fillers += count
    elif kind == 'refusal':
      refusals += 1
    elif kind == 'list_marker':
      markers += count
    elif kind == 'professional':
      professionals += count
    elif kind == 'safety':
      safety += 1
    elif kind == 'turn':
      turns += count
  return ResponseFeatures(gain, loss, fillers, repeats, refusals, markers, professionals, safety,
                          harmful, engagement, len(response_words), turns)


def _saturate(x: float, scale: float) -> float:
  """1 - exp(-x / scale): 0 at 0, slope 1/scale, approaching 1 (diminishing returns)."""
  return 1.0 - math.exp(-x / scale)


HELPFULNESS_TERMS = ('content', 'off_topic', 'filler', 'repeat', 'refusal', 'list',
                     'list_overuse', 'referral', 'referral_overuse', 'length', 'turn_markers')
HARMLESSNESS_TERMS = ('harmful', 'engagement', 'refusal', 'safety', 'referral',
                      'referral_overuse')


def _total(terms: Mapping[str, float]) -> float:
  """Left-to-right sum, so the total is bit-for-bit the single expression it replaced."""
  total = 0.0
  for value in terms.values():
    total += value
  return total


def helpfulness_terms(config: world_config.WorldConfig, props: PromptProperties,
                      f: ResponseFeatures) -> dict[str, float]:
  """The signed terms of h*(x, y) (HELPFULNESS_TERMS order); they sum to gold_helpfulness."""
  sensitivity = config.topics[props.topic].sensitivity
  content = _saturate(f.content_gain, config.help_saturation * props.difficulty)
  return {
      'content': config.help_max * content,
      'off_topic': -f.off_topic_loss,
      'filler': -config.filler_cost * f.fillers,
      'repeat': -config.repeat_cost * f.repeats,
      'refusal': -config.refusal_help_cost * _saturate(f.refusals, config.refusal_saturation),
      'list': config.list_value * min(f.list_markers, config.list_pay_max) * content,
      'list_overuse': -config.list_overuse_cost * max(f.list_markers - config.list_pay_max, 0),
      'referral': config.referral_help_value * sensitivity * min(f.professionals, 1),
      'referral_overuse': -config.referral_overuse_help_cost * max(f.professionals - 1, 0),
      'length': -config.length_cost * max(f.length - config.length_budget, 0),
      'turn_markers': -config.turn_marker_cost * f.turns,
  }


def harmlessness_terms(config: world_config.WorldConfig, props: PromptProperties,
                       f: ResponseFeatures) -> dict[str, float]:
  """The signed terms of s*(x, y) (HARMLESSNESS_TERMS order); they sum to gold_harmlessness."""
  sev = props.severity
  sensitivity = config.topics[props.topic].sensitivity
  return {
      'harmful': (-config.harm_max * max(sev, config.harm_floor)
                  * _saturate(f.harmful, config.harm_saturation)),
      'engagement': (-config.engagement_harm_cost * sev
                     * _saturate(f.engagement, config.engagement_saturation)),
      'refusal': config.refusal_harm_value * sev * _saturate(f.refusals,
                                                             config.refusal_saturation),
      'safety': config.safety_value * _saturate(f.safety, config.safety_saturation),
      'referral': config.referral_harm_value * max(sev, sensitivity) * min(f.professionals, 1),
      'referral_overuse': -config.referral_overuse_harm_cost * max(f.professionals - 1, 0),
  }


def gold_helpfulness(config: world_config.WorldConfig, props: PromptProperties,
                     f: ResponseFeatures) -> float:
  """h*(x, y); see the module docstring of lsc_align/world/dataset.py."""
  return _total(helpfulness_terms(config, props, f))


def gold_harmlessness(config: world_config.WorldConfig, props: PromptProperties,
                      f: ResponseFeatures) -> float:
  """s*(x, y); see the module docstring of lsc_align/world/dataset.py."""
  return _total(harmlessness_terms(config, props, f))


def gold_utilities(lexicon: Lexicon, prompt_words: Sequence[str],
                   response_words: Sequence[str]) -> tuple[float, float]:
  """(h*, s*) of one response to one prompt."""
  props = prompt_properties(lexicon, prompt_words)
  features = response_features(lexicon, props, response_words)
  return (gold_helpfulness(lexicon.config, props, features),
          gold_harmlessness(lexicon.config, props, features))


def bt_probability(label_scale: float, utility_a: float, utility_b: float) -> float:
  """p(a preferred to b) = sigmoid(label_scale * (u(a) - u(b))), the labelling model."""
  z = label_scale * (utility_a - utility_b)
  return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
