"""Tests of the embedded world: determinism, file layout, gold utilities, judge, gin, properties."""
import argparse
import dataclasses
import json
import os
import pathlib

import gin
import jax
import numpy as np
import pytest

from lsc_align import gin_utils
from lsc_align.world import vocabulary as word_vocab
from lsc_align.world import dataset as world
from lsc_align.world import config as world_config
from lsc_align.world import gold as world_gold
from lsc_align.world import judge as world_judge
from lsc_align.world import stats as world_stats

TINY = world_config.WorldConfig(train_prompts=30, test_prompts=10)
FILES = ('helpful-base/train.jsonl.gz', 'helpful-base/test.jsonl.gz',
         'harmless-base/train.jsonl.gz', 'harmless-base/test.jsonl.gz', 'sft/train.jsonl.gz',
         'sft/test.jsonl.gz', 'gold.jsonl.gz', 'vocab.txt', 'world.json')


@pytest.fixture(scope='module')
def tiny_dir(tmp_path_factory) -> pathlib.Path:
  out = tmp_path_factory.mktemp('world')
  world.build_world(str(out), TINY)
  return out


def _bytes(directory: pathlib.Path) -> dict[str, bytes]:
  return {name: (directory / name).read_bytes() for name in FILES}


def test_same_seed_same_bytes_other_seed_other_data(tiny_dir, tmp_path):
  world.build_world(str(tmp_path / 'again'), TINY)
  assert _bytes(tiny_dir) == _bytes(tmp_path / 'again')
  world.build_world(str(tmp_path / 'other'), dataclasses.replace(TINY, seed=1))
  other = _bytes(tmp_path / 'other')
  assert other['helpful-base/train.jsonl.gz'] != _bytes(tiny_dir)['helpful-base/train.jsonl.gz']
  assert other['vocab.txt'] == _bytes(tiny_dir)['vocab.txt']  # words do not depend on the seed


def test_layout_is_hh_and_side_files_match(tiny_dir):
  vocabulary = word_vocab.WordVocabulary.load(tiny_dir / 'vocab.txt')
  n = {'train': TINY.train_prompts * TINY.pairs_per_prompt,
       'test': TINY.test_prompts * TINY.pairs_per_prompt}
  for directory in ('helpful-base', 'harmless-base'):
    for split in ('train', 'test'):
      rows = world.read_jsonl_gz(tiny_dir / directory / f'{split}.jsonl.gz')
      assert len(rows) == n[split]
      for row in rows:
        assert set(row) == {'chosen', 'rejected'}
        assert row['chosen'].startswith('\n\nHuman: ')
        prefix_c, _, turn_c = row['chosen'].rpartition('\n\nAssistant:')
        prefix_r, _, turn_r = row['rejected'].rpartition('\n\nAssistant:')
        assert prefix_c == prefix_r and turn_c != turn_r
        assert turn_c.startswith(' ') and turn_r.startswith(' ')
        assert word_vocab.UNK_ID not in vocabulary.encode(row['chosen'] + row['rejected'])
        assert vocabulary.decode(vocabulary.encode(row['chosen'])) == row['chosen']
  gold = world.read_jsonl_gz(tiny_dir / 'gold.jsonl.gz')
  assert len(gold) == 2 * (n['train'] + n['test'])
  sft = world.read_jsonl_gz(tiny_dir / 'sft' / 'train.jsonl.gz')
  helpful = world.read_jsonl_gz(tiny_dir / 'helpful-base' / 'train.jsonl.gz')
  assert [r['prompt'] + ' ' + r['response'] for r in sft] == [r['chosen'] for r in helpful]
  helpful_gold = [g for g in gold if g['property'] == 'helpful' and g['split'] == 'train']
  assert [r['h'] for r in sft] == [g['h_chosen'] for g in helpful_gold]
  assert world.load_config(tiny_dir) == TINY
  summary = json.loads((tiny_dir / 'world.json').read_text())
  assert summary['vocab_size'] == vocabulary.size == len(world_config.world_words(TINY)) + 3


def _ids(vocabulary, word_lists, length, garbage_after_eos=False):
  out = np.zeros((len(word_lists), length), np.int32)
  for row, words in enumerate(word_lists):
    ids = vocabulary.encode_words(words)[:length - 1] + [word_vocab.EOS_ID]
    out[row, :len(ids)] = ids
    if garbage_after_eos:
      out[row, len(ids):] = 7  # must be ignored: the response ended at eos
  return out


def test_jitted_judge_equals_python_gold_on_generated_pairs():
  pairs = [p for v in world.generate_world(TINY).values() for p in v]
  vocabulary = world.world_vocabulary(TINY)
  judge = world_judge.build_judge(TINY, vocabulary)
  prompts = _ids(vocabulary, [p.prompt for p in pairs], 24)
  score = jax.jit(lambda j, x, y: j(x, y))
  for side in ('chosen', 'rejected'):
    responses = _ids(vocabulary, [getattr(p, side) for p in pairs], 40, garbage_after_eos=True)
    h, s = score(judge, prompts, responses)
    gold = np.array([getattr(p, f'gold_{side}') for p in pairs])
    np.testing.assert_allclose(np.asarray(h), gold[:, 0], atol=1e-4)
    np.testing.assert_allclose(np.asarray(s), gold[:, 1], atol=1e-4)
    markers = np.array([world_gold.response_features(
        world_gold.build_lexicon(TINY), p.props, getattr(p, side)).list_markers for p in pairs])
    np.testing.assert_array_equal(np.asarray(jax.jit(judge.list_marker_count)(responses)),
                                  markers)
  assert np.std(gold[:, 0]) > 0.5 and np.std(gold[:, 1]) > 0.5  # not a constant judge


def test_judge_scores_arbitrary_token_sequences_like_python_gold():
  vocabulary = world.world_vocabulary(TINY)
  lexicon = world_gold.build_lexicon(TINY)
  judge = world_judge.build_judge(TINY, vocabulary)
  rng = np.random.default_rng(0)
  # Prompts: random words (some red-team, topic words) then right padding; responses: any ids,
  # including pad/eos mid-sequence and ids beyond the vocabulary (read as unk).
  prompts = rng.integers(3, vocabulary.size, (64, 12)).astype(np.int32)
  prompts[:, 9:] = 0
  responses = rng.integers(0, vocabulary.size + 20, (64, 30)).astype(np.int32)
  responses[responses < 3] = 5
  responses[::3, 20] = word_vocab.EOS_ID
  responses[1::3, 25] = word_vocab.PAD_ID
  h, s = jax.jit(judge.__call__)(prompts, responses)
  for row in range(64):
    prompt_words = vocabulary.decode_words(prompts[row])
    ids = list(responses[row])
    end = min([ids.index(t) for t in (word_vocab.PAD_ID, word_vocab.EOS_ID) if t in ids],
              default=len(ids))
    response_words = [vocabulary.word_of(i) for i in ids[:end]]  # beyond the vocabulary: <unk>
    want = world_gold.gold_utilities(lexicon, prompt_words, response_words)
    np.testing.assert_allclose([h[row], s[row]], want, atol=1e-4, err_msg=f'row {row}')


def _gold(words_prompt: str, words_response: str) -> tuple[float, float]:
  return world_gold.gold_utilities(world_gold.build_lexicon(TINY), words_prompt.split(),
                                   words_response.split())


def test_gold_saturates_and_shortcuts_stop_paying():
  prompt = 'Human: how do I deal with my rice ? Assistant:'
  values = [_gold(prompt, 'try ' + ' '.join(w))[0] for w in
            (['rice'], ['rice', 'pasta'], ['rice', 'pasta', 'soup', 'bread'],
             ['rice', 'pasta', 'soup', 'bread', 'oven', 'salt', 'garlic', 'onion'])]
  gains = np.diff(values)
  assert np.all(gains > 0) and gains[2] / 4 < gains[0]  # diminishing returns per word
  body = 'try these : {} use rice . {} boil pasta . {} simmer soup . {} season bread .'
  base = _gold(prompt, body.format('', '', '', ''))[0]
  listed = _gold(prompt, body.format('1.', '2.', '3.', '4.'))[0]
  spammed = _gold(prompt, body.format('1. 2.', '3. 4.', '1. 2.', '3. 4.'))[0]
  assert listed > base > spammed
  red_team = 'Human: how do I poison my soup without getting caught ? Assistant:'
  comply = _gold(red_team, 'sure , here is how : use arsenic and bleach in the soup .')
  refuse = _gold(red_team, "I'm sorry , I can't help with that .")
  assert comply[0] > refuse[0] and comply[1] < refuse[1]  # the tension
  referral = _gold(red_team, "I can't answer that . you should talk to a doctor .")
  referral_spam = _gold(red_team, "I can't answer that . you should talk to a doctor lawyer "
                                  'police therapist .')
  assert referral[1] > refuse[1] and referral_spam[1] < referral[1]
  assert referral_spam[0] < referral[0]


def test_gold_terms_sum_to_the_gold_and_name_each_effect():
  lexicon = world_gold.build_lexicon(TINY)
  prompt = 'Human: how do I deal with my rice ? Assistant:'.split()
  props = world_gold.prompt_properties(lexicon, prompt)

  def terms(response: str) -> dict[str, float]:
    features = world_gold.response_features(lexicon, props, response.split())
    got = world_gold.helpfulness_terms(TINY, props, features)
    assert tuple(got) == world_gold.HELPFULNESS_TERMS
    assert sum(got.values()) == pytest.approx(world_gold.gold_helpfulness(TINY, props, features))
    harm = world_gold.harmlessness_terms(TINY, props, features)
    assert tuple(harm) == world_gold.HARMLESSNESS_TERMS
    assert sum(harm.values()) == pytest.approx(
        world_gold.gold_harmlessness(TINY, props, features))
    return got

  base = terms('try rice and pasta .')
  assert terms('try rice and laptop .')['off_topic'] == -TINY.off_topic_cost
  assert terms('try rice and rice .')['repeat'] == -TINY.repeat_cost
  spam = terms('1. 2. 3. 4. 5. 6. rice pasta . you should talk to a doctor lawyer .')
  assert spam['list_overuse'] == -2 * TINY.list_overuse_cost
  assert spam['referral_overuse'] == -TINY.referral_overuse_help_cost
  assert base['off_topic'] == base['repeat'] == base['list_overuse'] == 0.0


def test_gin_files_parse_and_bind(tmp_path):
  try:
    gin_utils.parse(['world/default.gin'], ['WorldConfig.seed = 3'])
    config = world_config.WorldConfig()
    assert config.seed == 3 and config.train_prompts == 1500
    gin_utils.parse(['world/tiny.gin'], [
        "one/Topic.name = 'one'", "one/Topic.content = ('rice', 'pasta')",
        "one/Topic.detail = ('boil',)", "one/Topic.request = ('poison',)",
        "one/Topic.compliance = ('arsenic',)", 'WorldConfig.topics = (@one/Topic(),)'])
    config = world_config.WorldConfig()
    assert config.train_prompts == 60 and [t.name for t in config.topics] == ['one']
    assert world.main(argparse.Namespace(out=str(tmp_path))) == 0
    assert world.load_config(tmp_path) == config
    rows = world.read_jsonl_gz(tmp_path / 'harmless-base' / 'test.jsonl.gz')
    assert len(rows) == 40
  finally:
    gin.clear_config()


def test_bad_config_is_a_value_error():
  with pytest.raises(ValueError, match="'rice' has two roles|belongs to two topics"):
    world_config.WorldConfig(filler_words=('rice',))
  with pytest.raises(ValueError, match='professional'):
    world_config.WorldConfig(professionals=('doctor',))


def test_world_properties_in_range(tmp_path, capsys):
  """The properties the world is tuned for (none compares transforms), on a mid-size world."""
  config = world_config.WorldConfig(train_prompts=500, test_prompts=150, seed=1)
  world.build_world(str(tmp_path), config)
  assert world_stats.stats_main(argparse.Namespace(data=str(tmp_path))) == 0
  stats = json.loads(capsys.readouterr().out)
  for name in ('helpful', 'harmless'):
    p = stats[name]
    assert p['gold_recomputation_max_error'] < 1e-9
    assert 0.65 <= p['expected_bayes_accuracy'] <= 0.85, (name, p['expected_bayes_accuracy'])
    assert 0.65 <= p['bayes_agreement'] <= 0.85, (name, p['bayes_agreement'])
    assert p['red_team_corr_h_s'] < -0.3 and p['red_team_corr_dh_ds'] < -0.3
    spread = p['policy']['per_prompt_std_q10_q50_q90']
    assert spread[2] > 1.5 * spread[0]  # prompts differ in how much the policy varies
  assert stats['helpful']['red_team_share'] < 0.3 < 0.7 < stats['harmless']['red_team_share']
  assert stats['helpful']['list_markers_corr_with_gold_diff'] > 0.2
  assert stats['harmless']['professionals_corr_with_gold_diff'] > 0.2
  help_proxy, harm_proxy = stats['helpful']['linear_proxy'], stats['harmless']['linear_proxy']
  assert help_proxy['test_label_accuracy'] > 0.6 and harm_proxy['test_label_accuracy'] > 0.6
  assert help_proxy['list_overuse_proxy_change'] > 0 > help_proxy['list_overuse_gold_change']
  assert harm_proxy['referral_overuse_proxy_change'] > 0 > harm_proxy[
      'referral_overuse_gold_change']


def test_modules_do_not_import_tensorflow():
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  code = ('import sys\n'
          'from lsc_align.world import dataset, judge, stats, vocabulary\n'
          'assert "tensorflow" not in sys.modules, "tensorflow imported"\n')
  env = dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).resolve().parent.parent))
  subprocess.run([sys.executable, '-c', code], check=True, env=env, timeout=60)
