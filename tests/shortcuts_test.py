"""Tests for lsc_align.eval.shortcuts: list formatting and referral detectors."""
import gzip
import json

import numpy as np
import pytest

from lsc_align.eval import shortcuts

LISTS = [
    'Here are some ideas:\n1. Go for a walk\n2. Read a book',
    'Steps:\n\n1)  Preheat the oven.\n\n2)  Mix the flour.\n\n3)  Bake.',
    'You could try:\n- yoga\n- running\n- swimming',
    'Options:\n* one\n* two',
    '• first point\n• second point',
    '  (1) buy eggs\n  (2) boil them',
    'a) red\nb) blue',
    'Insomnia is treated with: 1) medication, 2) therapy, and 3) sleep hygiene.',
    'Two solutions:   1.  Wrap it up.   2.  Throw it away.',
]
NOT_LISTS = [
    'Just go for a walk and read a book.',
    'Here is one idea:\n1. Go for a walk',            # a single item
    'The temperature was -5 degrees.\nIt was 3.5 million people.',
    'In 2020. we moved.\n2021. we moved again.',       # years, not list markers
    'I rated it 1. Then she rated it 2.5 stars.',
    'Use - sparingly.',
    '',
]
REFERRALS = [
    'You should talk to a therapist about this.',
    'I think you should see a doctor.',
    'I’d recommend that you consult a doctor.',
    'See a therapist.',
    'Please contact the police right away.',
    'It might help to reach out to a counselor. I think you should reach out to a counselor.',
    'It’s best to seek professional help.',
    'Seek professional help if this continues.',
    'You might want to speak with a lawyer.',
    'If the pain continues, call your doctor.',
    'Consider talking to a mental health professional.',
    'It’s a good idea to see your doctor.',
    'I suggest getting help from a psychologist.',
    'You should report this to the police.',
    'If you are in danger, call 911.',
    'You could talk to someone like a counselor.',
    'I would encourage you to get in touch with a licensed therapist.',
    'YOU SHOULD CONSULT AN EXPERT.',
    'Maybe ask your pharmacist.',
]
NOT_REFERRALS = [
    'The police arrested him yesterday.',
    'She went to see a doctor last week.',
    'I talked to a lawyer once.',
    'You don’t need to see a doctor for this.',
    "I'm not a doctor, but rest usually helps.",
    'Experts say the market will grow.',
    'As you can see, doctors disagree.',
    'You can see doctors disagree about this.',
    'He called the police.',
    'The therapist was kind to me.',
    "Don't call the police.",
    'My brother is a lawyer.',
    'Do you want to get the police involved?',
    'He could be caught, or call the police, or whatever.',
    'Here is how to bake bread.',
]


@pytest.mark.parametrize('text', LISTS)
def test_list_positive(text):
  assert shortcuts.is_list_formatted(text), text


@pytest.mark.parametrize('text', NOT_LISTS)
def test_list_negative(text):
  assert not shortcuts.is_list_formatted(text), text


def test_list_item_count_and_options():
  assert shortcuts.count_list_items(LISTS[1]) == 3
  assert shortcuts.count_list_items(LISTS[7]) == 0  # inline, not line-based
  assert not shortcuts.is_list_formatted(LISTS[7], inline=False)
  assert not shortcuts.is_list_formatted(LISTS[2] + '\n', min_items=4)
  assert shortcuts.is_list_formatted(LISTS[2], min_items=3)


@pytest.mark.parametrize('text', REFERRALS)
def test_referral_positive(text):
  assert shortcuts.is_referral(text), text


@pytest.mark.parametrize('text', NOT_REFERRALS)
def test_referral_negative(text):
  assert not shortcuts.is_referral(text), (text, shortcuts.referral_matches(text))


def test_flags_and_rates():
  texts = [LISTS[0], REFERRALS[0], LISTS[2] + '\n' + REFERRALS[1], NOT_LISTS[0]]
  flags = shortcuts.shortcut_flags(texts)
  np.testing.assert_array_equal(flags['list'], [True, False, True, False])
  np.testing.assert_array_equal(flags['referral'], [False, True, True, False])
  assert shortcuts.shortcut_rates(texts) == {'list': 0.5, 'referral': 0.5}
  with pytest.raises(ValueError, match=r'responses\[1\]'):
    shortcuts.shortcut_flags(['a', None])
  with pytest.raises(ValueError, match='no responses'):
    shortcuts.shortcut_rates([])


def test_rates_on_hh_test_responses(shared_data):
  rates = {}
  for split in ('helpful-base', 'harmless-base'):
    with gzip.open(shared_data / 'hh-rlhf' / split / 'test.jsonl.gz', 'rt') as f:
      rows = [json.loads(line) for line in f]
    responses = [r[key].rsplit('\n\nAssistant:', 1)[1] for r in rows for key in ('chosen',
                                                                                   'rejected')]
    rates[split] = shortcuts.shortcut_rates(responses)
  # Both shortcuts occur in HH responses but are rare (measured: ~1-2% and ~0.5%).
  for split_rates in rates.values():
    assert 0.003 < split_rates['list'] < 0.05
    assert 0.001 < split_rates['referral'] < 0.03
  assert rates['helpful-base']['list'] > rates['harmless-base']['list']
