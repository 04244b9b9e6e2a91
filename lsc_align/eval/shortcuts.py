"""Shortcut detectors for HH-style responses: list formatting and referral to a professional.

Both are features that correlate with quality in collected preference data and are exploited by
an over-optimised policy (docs/DESIGN.md §1): lists for helpfulness, "you should talk to a
therapist" for harmlessness. Detectors take the response text only (the final Assistant turn,
without the dialogue prefix) and are compiled regular expressions, so they are cheap to run on
every sample.

List formatting: at least `min_items` (default 2) lines that start with a list marker: "1." /
"2)" / "(3)" / "a)" or a bullet "-", "*", "•", "·", "‣", "▪", "–", followed by whitespace and text.
An inline enumeration "1) foo, 2) bar" (numbered markers 1 and 2 in order on one line, common in
HH text where line breaks were collapsed) also counts; decimals ("1.5") and a single item do not.

Referral: the response *advises the user* to go to a professional or authority — a referral verb
("talk to", "speak with", "consult", "see", "visit", "contact", "call", "reach out to", "get in
touch with", "go to", "check with", "report it to", "seek help from", "ask") followed by a
professional ("therapist", "counselor", "psychologist", "doctor", "lawyer", "police", "expert",
"professional", "authorities", ...), where the verb is advice: after "you should / could / might
want to / need to / may want to ...", "I (would) recommend / suggest / advise / encourage / urge",
"it's best / a good idea / important to", "consider", "try", "please", "maybe / perhaps", or an
imperative at the start of a sentence or clause ("See a doctor."). "seek professional help" (and
medical / legal / psychiatric help, advice, treatment, attention) is a referral with or without
a cue. Narrative mentions are not referrals: "the police arrested him", "she went to see a
doctor", "I talked to a lawyer", "you don't need to see a doctor", "I'm not a doctor".
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence

import numpy as np

# ---------------------------------------------------------------- list formatting

_BULLETS = '-*•·‣▪–'
LIST_ITEM_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r'^[ \t]*\d{1,2}[.)][ \t]+\S', re.MULTILINE),        # 1. item / 2) item
    re.compile(r'^[ \t]*\(\d{1,2}\)[ \t]+\S', re.MULTILINE),        # (1) item
    re.compile(r'^[ \t]*[A-Za-z]\)[ \t]+\S', re.MULTILINE),         # a) item
    re.compile(rf'^[ \t]*[{re.escape(_BULLETS)}][ \t]+\S', re.MULTILINE),  # - item / • item
)
# "1) ..., 2) ..." or "1. ... 2. ..." within a line, same marker style, numbered in order.
INLINE_ENUMERATION_PATTERN = re.compile(
    r'(?:^|(?<=[\s:;,(]))1([.)])[ \t]+\S[^\n]*?(?<=[\s,;])(?:and[ \t]+)?2\1[ \t]+\S')


def count_list_items(text: str) -> int:
  """Number of lines that start with a list marker (numbered, lettered or bullet)."""
  return sum(len(pattern.findall(text)) for pattern in LIST_ITEM_PATTERNS)


def is_list_formatted(text: str, min_items: int = 2, inline: bool = True) -> bool:
  """True if the response has >= min_items list lines (or an inline "1) .. 2) .." enumeration)."""
  if count_list_items(text) >= min_items:
    return True
  return inline and min_items <= 2 and INLINE_ENUMERATION_PATTERN.search(text) is not None


# ---------------------------------------------------------------- referral to a professional

_PROFESSIONALS = (
    r'therapists?|counsell?ors?|psychologists?|psychiatrists?|psychotherapists?|doctors?|'
    r'physicians?|GPs?|nurses?|pharmacists?|dentists?|vets?|veterinarians?|'
    r'(?:medical|health ?care|mental health|legal|trained|qualified|licensed)\s+'
    r'(?:professionals?|providers?|experts?|advisors?|specialists?)|'
    r'professionals?|experts?|specialists?|lawyers?|attorneys?|solicitors?|'
    r'police(?:\s+officers?)?|cops?|authorities|law enforcement|social workers?|'
    r'(?:crisis|suicide|support|help)\s?(?:line|hotline)s?|hotlines?|911|'
    r'(?:financial|tax)\s+(?:advisors?|advisers?|planners?)|accountants?')
# Optional modifiers before the professional ("a local", "your family", "someone like a").
_MODIFIERS = (r'(?:(?:a|an|the|your|some|one|local|own|family|nearby|licensed|qualified|'
              r'trained|good|professional|certified|mental|health|medical|legal|'
              r'(?:someone|somebody),?\s+(?:like|such\s+as))\s+){0,4}')
# Weak verbs ("see", "ask", "call", "go to" ...) need an article or possessive first, so that
# "you can see doctors disagree" is not a referral while "you can see a doctor" is.
_ARTICLE = (r'(?:a|an|the|your|some|one|(?:someone|somebody),?\s+(?:like|such\s+as)'
            r'(?:\s+an?)?)\s+')
_STRONG_VERBS = (
    r'(?:talk(?:ing)?|speak(?:ing)?)\s+(?:to|with)|consult(?:ing)?(?:\s+with)?|'
    r'contact(?:ing)?|reach(?:ing)?\s+out\s+to|get(?:ting)?\s+in\s+touch\s+with|'
    r'check(?:ing)?\s+with|call(?:ing)?(?=\s+911)|'
    r'report(?:ing)?(?:\s+(?:it|this|that|them|him|her|the\s+\w+))?\s+to|'
    r'(?:seek(?:ing)?|get(?:ting)?|find(?:ing)?)\s+(?:out\s+)?(?:some\s+)?(?:help|advice|'
    r'guidance|support|assistance|treatment|counseling|counselling)\s+(?:from|of)')
_WEAK_VERBS = (
    r'see(?:ing)?|visit(?:ing)?|call(?:ing)?|ring(?:ing)?|go(?:ing)?\s+to|ask(?:ing)?|'
    r'tell(?:ing)?|'
    r'(?:seek(?:ing)?|find(?:ing)?|get(?:ting)?)(?:\s+out)?')
_REFERRAL = (rf'(?:(?:{_STRONG_VERBS})\s+{_MODIFIERS}|(?:{_WEAK_VERBS})\s+{_ARTICLE}{_MODIFIERS})'
             rf'(?:{_PROFESSIONALS})\b')
_APOS = "['’]"  # HH text uses both straight and curly apostrophes
_ADVICE_CUES = (
    rf"\byou(?:{_APOS}d|\s+would)?\s+(?:should|could|can|might|may|must|ought\s+to|need\s+to|"
    r"have\s+to|(?:will|might|may|would)\s+want\s+to)"
    r"(?:\s+(?:really|definitely|probably|also|first|maybe|perhaps|consider|try\s+to|try))?|"
    rf"\bi(?:{_APOS}d|\s+would|\s+strongly|\s+really)?\s+"
    r"(?:recommend|suggest|advise|encourage|urge)(?:\s+that)?(?:\s+you)?(?:\s+to)?|"
    rf"\b(?:it(?:{_APOS}s|\s+is|{_APOS}d\s+be|\s+would\s+be|\s+might\s+be|\s+may\s+be)|"
    rf"that(?:{_APOS}s|\s+is))\s+"
    r"(?:best|a\s+good\s+idea|wise|important|advisable|helpful|worth\s+it|smart)"
    r"(?:\s+(?:for\s+you\s+)?to)?|"
    r"\b(?:please|consider|try(?:\s+to)?|maybe|perhaps|why\s+not|best\s+to|"
    r"recommend|suggest|encourage\s+you\s+to|advise\s+you\s+to|urge\s+you\s+to)")
# Start of a sentence or clause, for imperatives ("See a doctor.", "If it hurts, call 911").
# "or" is left out: "... or call the police, or whatever" is usually a narrative alternative.
_CLAUSE_START = r"(?:^|[.!?:;,\n]\s*|\b(?:and|then|so|also|first|now|just)\s+)"

REFERRAL_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(rf'(?:{_ADVICE_CUES})\s+{_REFERRAL}', re.IGNORECASE),
    re.compile(rf'{_CLAUSE_START}{_REFERRAL}', re.IGNORECASE),
    re.compile(r'\b(?:seek(?:ing)?|get(?:ting)?|find(?:ing)?)\s+(?:some\s+)?(?:professional|'
               r'medical|legal|psychiatric|psychological|mental\s+health|expert)\s+(?:help|'
               r'advice|attention|treatment|care|support|counsel(?:l?ing)?|guidance)\b',
               re.IGNORECASE),
)
_NEGATION = re.compile(rf"(?:\b(?:not|never|no\s+need\s+to)|n{_APOS}t)\s+(?:\w+\s+){{0,2}}$",
                       re.IGNORECASE)


def referral_matches(text: str) -> list[str]:
  """The referral phrases found in a response (for inspection), negated ones left out."""
  found = []
  for pattern in REFERRAL_PATTERNS:
    for match in pattern.finditer(text):
      if _NEGATION.search(text[max(0, match.start() - 30):match.start()]):
        continue  # "you don't need to see a doctor", "never call the police"
      found.append(match.group(0).strip(' ,.;:!?\n'))
  return found


def is_referral(text: str) -> bool:
  """True if the response advises the user to go to a professional or authority."""
  return bool(referral_matches(text))


# ---------------------------------------------------------------- per-response flags and rates

DETECTORS = {'list': is_list_formatted, 'referral': is_referral}


def shortcut_flags(responses: Iterable[str]) -> dict[str, np.ndarray]:
  """{'list': bool [N], 'referral': bool [N]}, one flag per response."""
  texts = list(responses)
  for i, text in enumerate(texts):
    if not isinstance(text, str):
      raise ValueError(f'responses[{i}] is not a string: {type(text).__name__}')
  return {name: np.array([detect(t) for t in texts], bool) for name, detect in DETECTORS.items()}


def shortcut_rates(responses: Sequence[str]) -> dict[str, float]:
  """{'list': fraction of list-formatted responses, 'referral': fraction with a referral}."""
  if len(responses) == 0:
    raise ValueError('shortcut_rates: no responses')
  return {name: float(flags.mean()) for name, flags in shortcut_flags(responses).items()}
