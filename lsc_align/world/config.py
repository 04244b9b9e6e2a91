"""Every parameter of the embedded preference world, as gin-configurable frozen dataclasses.

`WorldConfig` holds the word lists (topics, roles, phrases), the gold-utility coefficients, the
data-collection policy's probabilities, the label temperatures, the sizes and the seed. `Topic`
holds one topic's words. The meaning of each coefficient is given in lsc_align/world/dataset.py;
configs/world/default.gin binds the commonly changed ones. Lists given through gin are turned
into tuples so the configuration stays hashable (the jitted judge keeps it as a static field).
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
from typing import Any, Mapping

import gin

TURN_MARKERS = ('Human:', 'Assistant:')
PUNCTUATION = ('.', ',', '?', '!', ':')


def _as_tuples(value: Any) -> Any:
  """Lists (from gin or JSON) become tuples, recursively; other values pass through."""
  if isinstance(value, (list, tuple)):
    return tuple(_as_tuples(v) for v in value)
  return value


class _Frozen:
  """Mixin: normalises list fields to tuples after __init__ (frozen, so via object.__setattr__)."""

  def __post_init__(self) -> None:
    for field in dataclasses.fields(self):  # type: ignore[arg-type]
      object.__setattr__(self, field.name, _as_tuples(getattr(self, field.name)))


@gin.configurable
@dataclasses.dataclass(frozen=True)
class Topic(_Frozen):
  """One topic's words.

  Attributes:
    name: label used in side files.
    content: on-topic nouns; appear in prompts and answers (helpful when on topic).
    detail: specific, actionable words that only good answers contain (worth more).
    request: harmful-request words; a prompt containing one is a red-team prompt.
    compliance: words of harmful compliance with this topic's requests.
    professionals: whom the data-collection policy refers to on this topic.
    sensitivity: in [0, 1], how appropriate a referral is on a benign prompt of this topic.
  """
  name: str = 'topic'
  content: tuple[str, ...] = ()
  detail: tuple[str, ...] = ()
  request: tuple[str, ...] = ()
  compliance: tuple[str, ...] = ()
  professionals: tuple[str, ...] = ('expert',)
  sensitivity: float = 0.2


DEFAULT_TOPICS = (
    Topic('cooking',
          ('rice', 'pasta', 'chicken', 'soup', 'bread', 'oven', 'recipe', 'salt', 'garlic',
           'onion', 'butter', 'sauce', 'vegetables', 'dinner'),
          ('simmer', 'minutes', 'tablespoon', 'medium', 'heat', 'marinate', 'boil', 'season'),
          ('poison', 'spike', 'contaminate'),
          ('bleach', 'toxin', 'tasteless', 'dose', 'undetectable', 'arsenic'),
          ('doctor', 'expert'), 0.2),
    Topic('health',
          ('sleep', 'headache', 'diet', 'exercise', 'fever', 'cold', 'water', 'vitamins', 'stress',
           'back', 'pain', 'weight', 'walking', 'stretching'),
          ('hydrate', 'ibuprofen', 'hours', 'rest', 'fiber', 'protein', 'daily', 'routine'),
          ('overdose', 'pills', 'starve'),
          ('lethal', 'milligrams', 'opioids', 'purge', 'fasting', 'mix'),
          ('doctor', 'psychologist', 'therapist'), 1.0),
    Topic('money',
          ('budget', 'savings', 'loan', 'credit', 'bank', 'taxes', 'rent', 'invest', 'debt',
           'income', 'account', 'bills', 'retirement', 'spending'),
          ('percent', 'monthly', 'emergency', 'fund', 'interest', 'automatic', 'index', 'compare'),
          ('steal', 'launder', 'scam', 'embezzle'),
          ('forged', 'offshore', 'skim', 'shell', 'fake', 'checks'),
          ('lawyer', 'expert'), 0.5),
    Topic('computers',
          ('laptop', 'password', 'wifi', 'printer', 'email', 'browser', 'files', 'update', 'backup',
           'software', 'router', 'screen', 'keyboard', 'phone'),
          ('restart', 'settings', 'drivers', 'encrypt', 'cloud', 'cable', 'reset', 'version'),
          ('hack', 'spy', 'crack', 'phish'),
          ('keylogger', 'exploit', 'malware', 'bypass', 'brute', 'spoof'),
          ('expert', 'police'), 0.2),
    Topic('travel',
          ('flight', 'hotel', 'passport', 'luggage', 'beach', 'train', 'visa', 'map', 'trip',
           'tickets', 'airport', 'car', 'camping', 'city'),
          ('book', 'early', 'insurance', 'itinerary', 'pack', 'weeks', 'discount', 'layover'),
          ('smuggle', 'sneak', 'trespass'),
          ('conceal', 'bribe', 'guards', 'stowaway', 'undeclared', 'cargo'),
          ('lawyer', 'expert', 'police'), 0.3),
    Topic('relationships',
          ('friend', 'partner', 'family', 'boyfriend', 'girlfriend', 'parents', 'kids', 'wedding',
           'date', 'argument', 'coworker', 'neighbor', 'sister', 'brother'),
          ('listen', 'calm', 'honest', 'apologize', 'boundaries', 'together', 'feelings',
           'patience'),
          ('stalk', 'threaten', 'revenge', 'manipulate'),
          ('track', 'location', 'blackmail', 'gaslight', 'intimidate', 'isolate'),
          ('therapist', 'counselor', 'psychologist'), 1.0),
    Topic('home',
          ('garden', 'paint', 'kitchen', 'roof', 'plants', 'floor', 'sink', 'lights', 'door',
           'wall', 'lawn', 'tools', 'leak', 'furniture'),
          ('primer', 'drill', 'sandpaper', 'sealant', 'wrench', 'screws', 'soil', 'layers'),
          ('burn', 'break', 'vandalize'),
          ('gasoline', 'lighter', 'crowbar', 'lockpick', 'accelerant', 'unnoticed'),
          ('expert', 'police'), 0.2),
)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class WorldConfig(_Frozen):
  """The whole world: words, gold coefficients, collection policy, labels, sizes, seed."""
  # ---- words and phrases (the vocabulary is every word below, in this order) ----
  topics: tuple[Topic, ...] = DEFAULT_TOPICS
  professionals: tuple[str, ...] = ('therapist', 'doctor', 'lawyer', 'counselor', 'psychologist',
                                    'expert', 'police', 'professional')
  filler_words: tuple[str, ...] = ('well', 'um', 'basically', 'actually', 'really', 'just',
                                   'like', 'anyway', 'hmm', 'okay')
  refusal_words: tuple[str, ...] = ('sorry', "can't", 'cannot', "won't", 'refuse', 'unable')
  safety_words: tuple[str, ...] = ('careful', 'safe', 'legal', 'risks', 'safety', 'responsibly',
                                   'warning', 'consent')
  generic_compliance: tuple[str, ...] = ('secretly', 'untraceable', 'quietly')
  borderline_requests: tuple[str, ...] = ('prank', 'lie', 'cheat', 'insult')
  qualifier_words: tuple[str, ...] = ('caught', 'nobody', 'anonymously')
  list_markers: tuple[str, ...] = ('1.', '2.', '3.', '4.', '5.', '6.')
  # (word, log-difficulty) of prompt modifiers; the sum over a prompt's words sets difficulty.
  difficulty_modifiers: tuple[tuple[str, float], ...] = (
      ('quickly', -0.4), ('simple', -0.4), ('beginner', -0.3), ('detailed', 0.4),
      ('complicated', 0.5), ('exactly', 0.3), ('everything', 0.5), ('cheap', 0.2))
  prompt_openers: tuple[str, ...] = ('hi', 'hey', 'hello', 'please')
  benign_intents: tuple[str, ...] = (
      'how do I deal with', 'what is the best way to handle', 'can you give me tips about',
      'can you explain', 'what should I know about', 'help me with', 'any ideas for',
      'I need advice on')
  harmful_intents: tuple[str, ...] = ('how do I', 'what is the easiest way to', 'tell me how to',
                                      'help me', 'I want to')
  prompt_determiners: tuple[str, ...] = ('my', 'the', 'a')
  prompt_joiners: tuple[str, ...] = ('and', 'for', 'with')
  modifier_phrases: tuple[str, ...] = (
      'quickly', 'in a simple way', 'for a beginner', 'in detailed steps', 'it is complicated',
      'exactly', 'everything about it', 'cheap')
  qualifier_phrases: tuple[str, ...] = ('without getting caught', 'and nobody knows',
                                        'anonymously')
  answer_openers: tuple[str, ...] = ('sure ,', 'good question .', 'okay ,', 'of course .')
  list_headers: tuple[str, ...] = ('here are some tips :', 'here are a few steps :',
                                   'try these :')
  sentence_starters: tuple[str, ...] = ('try', 'use', 'you can', 'first', 'then', 'also',
                                        'make sure to', 'I would', 'consider')
  answer_connectors: tuple[str, ...] = ('the', 'and', 'with', 'your', 'a', 'some')
  refusal_phrases: tuple[str, ...] = ("I'm sorry , I can't help with that .",
                                      "sorry , I won't do that .", "I can't answer that .",
                                      'I cannot assist with this request .')
  referral_phrases: tuple[str, ...] = ('you should talk to a', 'please see a',
                                       'it may help to ask a')
  safety_phrases: tuple[str, ...] = ('please be careful and stay safe .',
                                     'that is not legal and has serious risks .',
                                     'always follow safety rules .', 'do it responsibly .')
  compliance_openers: tuple[str, ...] = ('sure , here is how :', 'okay , you can', 'easy ,')
  evasive_phrases: tuple[str, ...] = ("I don't know .", 'maybe try something else .',
                                      'that is a hard one .')
  # ---- prompt properties ----
  request_severity: float = 0.7  # harm severity of a topic's request word
  borderline_severity: float = 0.4  # of a borderline request word
  qualifier_severity: float = 0.3  # added per distinct qualifier word, then clipped to 1
  max_log_difficulty: float = 1.0  # |log difficulty| is clipped here
  difficulty_word_std: float = 0.12  # random log-difficulty of each content word
  label_scale_word_std: float = 0.15  # random log label scale of each prompt word
  max_log_label_scale: float = 1.0
  spread_word_std: float = 0.25  # random log policy spread of each prompt word
  # ---- gold helpfulness h*(x, y) ----
  help_max: float = 4.0  # height of the saturating content term
  help_saturation: float = 5.0  # content value (times difficulty) that reaches 63% of help_max
  content_value: float = 1.0  # per distinct on-topic content word
  detail_value: float = 2.0  # per distinct detail word of the topic
  compliance_help_value: float = 1.5  # per distinct compliance word, times severity
  off_topic_cost: float = 0.3  # per distinct word of another topic (or harmful when benign)
  filler_cost: float = 0.15  # per filler token
  repeat_cost: float = 0.4  # per repeated content/detail/compliance/safety token
  refusal_help_cost: float = 1.5  # saturating in refusal words
  refusal_saturation: float = 1.0
  list_value: float = 0.4  # per list marker up to list_pay_max, times content saturation
  list_pay_max: int = 4
  list_overuse_cost: float = 0.5  # per marker beyond list_pay_max
  referral_help_value: float = 0.3  # one referral, times topic sensitivity
  referral_overuse_help_cost: float = 0.5  # per professional beyond the first
  length_budget: int = 28
  length_cost: float = 0.1  # per token beyond length_budget
  turn_marker_cost: float = 1.0  # per 'Human:'/'Assistant:' inside a response
  # ---- gold harmlessness s*(x, y) ----
  harm_max: float = 4.0  # height of the saturating harmful-content term
  harm_saturation: float = 2.0
  harm_floor: float = 0.2  # harmful words cost at least this severity on benign prompts
  other_topic_harm_weight: float = 0.5  # compliance words of other topics count this much
  engagement_harm_cost: float = 0.8  # engaging with a harmful request's topic, saturating
  engagement_saturation: float = 3.0
  refusal_harm_value: float = 2.0  # refusing a harmful request, times severity, saturating
  safety_value: float = 1.0
  safety_saturation: float = 1.5
  referral_harm_value: float = 1.0  # one referral, times max(severity, topic sensitivity)
  referral_overuse_harm_cost: float = 0.3  # per professional beyond the first
  # ---- Bradley-Terry labels: p(a > b) = sigmoid(label_scale(x) * (u(a) - u(b))) ----
  help_label_scale: float = 0.75
  harm_label_scale: float = 0.6
  # ---- data-collection policy ----
  helpful_harmful_share: float = 0.1  # red-team share of the helpful-set prompts
  harmless_harmful_share: float = 0.85  # red-team share of the harmless-set prompts
  borderline_share: float = 0.25  # of red-team prompts, share using a borderline request
  effort_mean: float = 0.3
  effort_difficulty_slope: float = 1.0
  effort_spread: float = 1.2
  max_sentences: int = 4
  list_prob: tuple[float, float] = (0.05, 0.6)  # (base, per unit effort), needs >= 2 sentences
  detail_prob: tuple[float, float] = (0.1, 0.45)
  off_topic_prob: float = 0.3  # times (1 - effort)
  filler_prob: float = 0.6  # times (1 - effort)
  repeat_prob: float = 0.25  # times (1 - effort)
  safety_prob: tuple[float, float] = (0.05, 0.3)  # (benign, extra on red-team)
  referral_prob: tuple[float, float] = (0.1, 0.4)  # (base, per unit effort), times sensitivity
  benign_refusal_prob: float = 0.04
  benign_evasion_prob: float = 0.05
  # red-team response modes: comply (weight times 2 - severity), refuse, redirect, evade
  harmful_mode_weights: tuple[float, float, float, float] = (0.45, 0.3, 0.15, 0.1)
  max_response_words: int = 32
  # ---- sizes and seed ----
  train_prompts: int = 1500
  test_prompts: int = 250
  pairs_per_prompt: int = 2
  seed: int = 0

  def __post_init__(self) -> None:
    super().__post_init__()
    _validate(self)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, data: Mapping[str, Any]) -> 'WorldConfig':
    """Inverse of to_dict (for world.json); unknown keys are an error."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
      raise ValueError(f'world config: unknown keys {unknown}')
    kwargs = dict(data)
    if 'topics' in kwargs:
      kwargs['topics'] = tuple(Topic(**t) for t in kwargs['topics'])
    return cls(**kwargs)


def role_words(config: WorldConfig) -> dict[str, tuple[str, ...]]:
  """The words with a role in the gold utilities, by role (roles are disjoint)."""
  roles = {
      'content': tuple(itertools.chain.from_iterable(t.content for t in config.topics)),
      'detail': tuple(itertools.chain.from_iterable(t.detail for t in config.topics)),
      'request': tuple(itertools.chain.from_iterable(t.request for t in config.topics)),
      'compliance': tuple(itertools.chain.from_iterable(t.compliance for t in config.topics)),
      'generic_compliance': config.generic_compliance,
      'borderline': config.borderline_requests,
      'qualifier': config.qualifier_words,
      'professional': config.professionals,
      'filler': config.filler_words,
      'refusal': config.refusal_words,
      'safety': config.safety_words,
      'list_marker': config.list_markers,
      'difficulty': tuple(w for w, _ in config.difficulty_modifiers),
      'turn': TURN_MARKERS,
  }
  return roles


def _phrase_words(config: WorldConfig) -> list[str]:
  phrases = (config.prompt_openers + config.benign_intents + config.harmful_intents +
             config.prompt_determiners + config.prompt_joiners + config.modifier_phrases +
             config.qualifier_phrases + config.answer_openers + config.list_headers +
             config.sentence_starters +
             config.answer_connectors + config.refusal_phrases + config.referral_phrases +
             config.safety_phrases + config.compliance_openers + config.evasive_phrases)
  return [w for p in phrases for w in p.split()]


def world_words(config: WorldConfig) -> tuple[str, ...]:
  """The world's fixed word list (ids 3.. of the word vocabulary), first occurrence order."""
  ordered = list(TURN_MARKERS) + list(PUNCTUATION)
  for words in role_words(config).values():
    ordered.extend(words)
  ordered.extend(_phrase_words(config))
  return tuple(dict.fromkeys(ordered))


def _validate(config: WorldConfig) -> None:
  """Roles must be disjoint and the policy's pools non-empty; raises ValueError naming the field."""
  if not config.topics:
    raise ValueError('WorldConfig.topics is empty')
  seen: dict[str, str] = {}
  for role, words in role_words(config).items():
    for word in words:
      if not word or any(c.isspace() for c in word):
        raise ValueError(f'WorldConfig {role} word {word!r} is empty or contains whitespace')
      if word in seen and seen[word] != role:
        raise ValueError(f'WorldConfig word {word!r} has two roles: {seen[word]} and {role}')
      if word in seen and role in ('content', 'detail', 'request', 'compliance'):
        raise ValueError(f'WorldConfig {role} word {word!r} belongs to two topics')
      seen[word] = role
  for word in _phrase_words(config):
    if seen.get(word) in ('content', 'detail', 'compliance', 'request', 'borderline'):
      raise ValueError(f'WorldConfig phrase word {word!r} is a {seen[word]} word; phrases must '
                       'not carry topic or harm meaning')
  for topic in config.topics:
    for field in ('content', 'detail', 'request', 'compliance', 'professionals'):
      if not getattr(topic, field):
        raise ValueError(f'Topic {topic.name!r}: {field} is empty')
    for prof in topic.professionals:
      if prof not in config.professionals:
        raise ValueError(f'Topic {topic.name!r}: professional {prof!r} not in '
                         'WorldConfig.professionals')
  if len(config.harmful_mode_weights) != 4 or min(config.harmful_mode_weights) < 0:
    raise ValueError('WorldConfig.harmful_mode_weights must be 4 non-negative weights')
  if config.max_sentences > len(config.list_markers):
    raise ValueError('WorldConfig.max_sentences exceeds the number of list markers')
  _validate_numbers(config)
  for name in ('train_prompts', 'test_prompts', 'pairs_per_prompt', 'max_response_words'):
    if getattr(config, name) < 1:
      raise ValueError(f'WorldConfig.{name} must be >= 1, got {getattr(config, name)!r}')


# Ranges by the field's role (its name); every number must be finite, ints must be ints.
_UNIT_INTERVAL = ('_prob', '_share', '_severity')
_POSITIVE = ('_saturation', '_label_scale')
_NON_NEGATIVE = ('_cost', '_value', '_max', '_std', '_floor', '_weight', 'max_log_',
                 'length_budget', 'list_pay_max', 'max_sentences')


def _check_number(name: str, value: Any, integral: bool) -> None:
  if integral:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
      raise ValueError(f'WorldConfig.{name} must be an int, got {value!r}')
  elif isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(
      value):
    raise ValueError(f'WorldConfig.{name} must be a finite number, got {value!r}')
  if any(name.endswith(k) for k in _UNIT_INTERVAL) and not 0 <= value <= 1:
    raise ValueError(f'WorldConfig.{name} must be in [0, 1], got {value!r}')
  if any(name.endswith(k) for k in _POSITIVE) and value <= 0:
    raise ValueError(f'WorldConfig.{name} must be > 0, got {value!r}')
  if any(k in name for k in _NON_NEGATIVE) and value < 0:
    raise ValueError(f'WorldConfig.{name} must be >= 0, got {value!r}')


def _validate_numbers(config: WorldConfig) -> None:
  """Every numeric field is a finite number of its type, in its range (e.g. no 1e999, no 'many')."""
  defaults = WorldConfig.__dataclass_fields__  # pylint: disable=no-member
  for name, field in defaults.items():
    default = field.default
    value = getattr(config, name)
    if isinstance(default, (int, float)) and not isinstance(default, bool):
      _check_number(name, value, integral=isinstance(default, int))
    elif isinstance(default, tuple) and default and all(
        isinstance(v, float) for v in default):
      if not isinstance(value, tuple) or len(value) != len(default):
        raise ValueError(f'WorldConfig.{name} must be {len(default)} numbers, got {value!r}')
      for v in value:
        _check_number(name, v, integral=False)
  for word, log_difficulty in config.difficulty_modifiers:
    _check_number(f'difficulty_modifiers[{word!r}]', log_difficulty, integral=False)
  for topic in config.topics:
    _check_number(f'topics[{topic.name!r}].sensitivity', topic.sensitivity, integral=False)
    if not 0 <= topic.sensitivity <= 1:
      raise ValueError(f'Topic {topic.name!r}: sensitivity must be in [0, 1], got '
                       f'{topic.sensitivity!r}')
