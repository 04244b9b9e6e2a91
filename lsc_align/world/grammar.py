"""The embedded world's prompt distribution and data-collection policy (a stochastic grammar).

Prompts are single "Human:" turns on one topic, benign or red-team. The collection policy reads
the prompt's properties (topic, severity, difficulty, spread; all functions of the prompt's
words) and draws an effort level e in (0, 1) per response,

  e = sigmoid(effort_mean - effort_difficulty_slope * log difficulty
              + effort_spread * policy_spread(x) * z),  z ~ N(0, 1),

so harder prompts get worse answers and prompts differ in how widely answer quality varies.
Effort drives every quality-bearing choice (more sentences, more detail words, less filler, no
off-topic words or repeats) and also the two shortcut features: list formatting and referrals to
a professional are written more often by high-effort responses, which is why they correlate with
gold quality in the collected data without being the cause of it.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from lsc_align.world import config as world_config
from lsc_align.world import gold as world_gold

MODES = ('comply', 'refuse', 'redirect', 'evade')


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
  return options[int(rng.integers(len(options)))]


def sample_prompt(config: world_config.WorldConfig, rng: np.random.Generator,
                  harmful: bool) -> list[str]:
  """Words of one prompt: 'Human:' ... '?' 'Assistant:' (about 8-16 words)."""
  topic = config.topics[int(rng.integers(len(config.topics)))]
  words = ['Human:']
  if rng.random() < 0.3:
    words.append(_pick(rng, config.prompt_openers))
  content = list(rng.choice(topic.content, size=2, replace=False))
  if harmful:
    words += _pick(rng, config.harmful_intents).split()
    if rng.random() < config.borderline_share:
      words.append(_pick(rng, config.borderline_requests))
    else:
      words.append(_pick(rng, topic.request))
    words += [_pick(rng, config.prompt_determiners), content[0]]
    if rng.random() < 0.4:
      words += _pick(rng, config.qualifier_phrases).split()
  else:
    words += _pick(rng, config.benign_intents).split()
    words += [_pick(rng, config.prompt_determiners), content[0]]
    if rng.random() < 0.5:
      words += [_pick(rng, config.prompt_joiners), _pick(rng, config.prompt_determiners),
                content[1]]
    if rng.random() < 0.6:
      words += _pick(rng, config.modifier_phrases).split()
  return words + ['?', 'Assistant:']


def _sigmoid(x: float) -> float:
  return 1.0 / (1.0 + math.exp(-x))


class _Writer:
  """Appends phrases while they fit in the response budget."""

  def __init__(self, budget: int):
    self.words: list[str] = []
    self.budget = budget

  def add(self, phrase: Sequence[str] | str) -> bool:
    piece = phrase.split() if isinstance(phrase, str) else list(phrase)
    if len(self.words) + len(piece) > self.budget:
      return False
    self.words += piece
    return True


def _topic_words(config: world_config.WorldConfig, topic_index: int, effort: float, count: int,
                 rng: np.random.Generator, used: list[str]) -> list[str]:
  """`count` topic words: detail words with effort, off-topic or repeated words without."""
  topic = config.topics[topic_index]
  out = []
  for _ in range(count):
    draw = rng.random()
    if used and draw < config.repeat_prob * (1.0 - effort):
      word = _pick(rng, used)
    elif rng.random() < config.off_topic_prob * (1.0 - effort) and len(config.topics) > 1:
      other = int(rng.integers(len(config.topics) - 1))
      other += other >= topic_index
      word = _pick(rng, config.topics[other].content)
    else:
      base, slope = config.detail_prob
      pool = topic.detail if rng.random() < base + slope * effort else topic.content
      fresh = [w for w in pool if w not in used] or list(pool)
      word = _pick(rng, fresh)
    used.append(word)
    out.append(word)
  return out


def _sentences(config: world_config.WorldConfig, props: world_gold.PromptProperties,
               effort: float, rng: np.random.Generator, writer: _Writer,
               harmful_words: int = 0) -> None:
  """1..max_sentences answer sentences, as a numbered list with a probability rising in effort."""
  n_sentences = 1 + int(rng.binomial(config.max_sentences - 1, effort))
  base, slope = config.list_prob
  as_list = n_sentences >= 2 and rng.random() < base + slope * effort
  if as_list:
    writer.add(_pick(rng, config.list_headers))
  compliance = list(config.topics[props.topic].compliance) + list(config.generic_compliance)
  used: list[str] = []
  for i in range(n_sentences):
    sentence = [config.list_markers[i]] if as_list else []
    sentence += _pick(rng, config.sentence_starters).split()
    n_words = 1 + int(rng.binomial(2, effort))
    topic_words = _topic_words(config, props.topic, effort, n_words, rng, used)
    if harmful_words > 0:
      topic_words[0] = _pick(rng, compliance)
      harmful_words -= 1
    for j, word in enumerate(topic_words):
      if j and rng.random() < 0.5:
        sentence.append(_pick(rng, config.answer_connectors))
      sentence.append(word)
    if not writer.add(sentence + ['.']):
      break


def _referral(config: world_config.WorldConfig, props: world_gold.PromptProperties,
              rng: np.random.Generator) -> list[str]:
  topic = config.topics[props.topic]
  pool = topic.professionals if rng.random() < 0.8 else config.professionals
  return _pick(rng, config.referral_phrases).split() + [_pick(rng, pool), '.']


def sample_effort(config: world_config.WorldConfig, props: world_gold.PromptProperties,
                  rng: np.random.Generator) -> float:
  z = rng.standard_normal()
  return _sigmoid(config.effort_mean - config.effort_difficulty_slope * math.log(props.difficulty)
                  + config.effort_spread * props.policy_spread * z)


def sample_mode(config: world_config.WorldConfig, props: world_gold.PromptProperties,
                rng: np.random.Generator) -> str:
  """'answer' / 'refuse' / 'evade' on benign prompts; one of MODES on red-team prompts."""
  if props.severity <= 0:
    draw = rng.random()
    if draw < config.benign_refusal_prob:
      return 'refuse'
    if draw < config.benign_refusal_prob + config.benign_evasion_prob:
      return 'evade'
    return 'answer'
  weights = np.array(config.harmful_mode_weights, float)
  weights[0] *= 2.0 - props.severity  # borderline requests are complied with more often
  return MODES[int(rng.choice(len(MODES), p=weights / weights.sum()))]


def sample_response(config: world_config.WorldConfig, props: world_gold.PromptProperties,
                    rng: np.random.Generator) -> list[str]:
  """Words of one candidate response from the data-collection policy."""
  effort = sample_effort(config, props, rng)
  mode = sample_mode(config, props, rng)
  sensitivity = config.topics[props.topic].sensitivity
  writer = _Writer(config.max_response_words)
  safety_base, safety_red_team = config.safety_prob
  referral_base, referral_slope = config.referral_prob
  if rng.random() < config.filler_prob * (1.0 - effort):
    writer.add([_pick(rng, config.filler_words), ','])
  if mode == 'answer':
    if rng.random() < 0.3:
      writer.add(_pick(rng, config.answer_openers))
    _sentences(config, props, effort, rng, writer)
    if rng.random() < sensitivity * (referral_base + referral_slope * effort):
      writer.add(_referral(config, props, rng))
    if rng.random() < safety_base:
      writer.add(_pick(rng, config.safety_phrases))
  elif mode == 'comply':
    writer.add(_pick(rng, config.compliance_openers))
    n_harmful = 1 + int(rng.binomial(2, effort))
    _sentences(config, props, effort, rng, writer, harmful_words=n_harmful)
  elif mode == 'refuse':
    writer.add(_pick(rng, config.refusal_phrases))
    if props.severity > 0:
      if rng.random() < 0.3 + 0.4 * effort:
        writer.add(_pick(rng, config.safety_phrases))
      if rng.random() < 0.2 + 0.5 * effort:
        writer.add(_referral(config, props, rng))
  elif mode == 'redirect':
    writer.add(_pick(rng, config.safety_phrases))
    writer.add(_referral(config, props, rng))
    if rng.random() < 0.5 * effort:
      _sentences(config, props, min(effort, 0.3), rng, writer)
  else:  # evade
    for _ in range(1 + int(rng.binomial(2, 1.0 - effort))):
      writer.add([_pick(rng, config.filler_words), ','])
    writer.add(_pick(rng, config.evasive_phrases))
    if rng.random() < 0.5:
      _sentences(config, props, 0.0, rng, writer)
  if props.severity > 0 and mode == 'comply' and rng.random() < safety_red_team * effort:
    writer.add(_pick(rng, config.safety_phrases))
  if not writer.words:
    writer.add(_pick(rng, config.evasive_phrases))
  return writer.words
