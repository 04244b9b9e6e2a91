"""Properties of a written world, none of which compares reward transforms.

`world_stats(data_dir)` reads the files `lsc-align world` wrote and measures, per property
(helpful, harmless):
  * Bayes accuracy: the share of labels agreeing with the sign of the gold difference, and its
    expectation E[sigmoid(beta(x) |u(a) - u(b)|)] (ties count 1/2); 0.65-0.85 is the target, like
    human preference data;
  * the tension: Pearson correlation of h* and s* over red-team responses, and of their
    differences within red-team pairs (negative);
  * the shortcuts: within-pair correlation of the difference in list markers (helpful) or in
    referrals (harmless) with the gold difference, and how often the response with more of the
    feature is gold-better (positive / above 1/2);
  * prompts differ: quantiles over prompts of the mean and the spread (std) of the gold utility
    of fresh samples from the collection policy;
  * learnability and misspecification: a linear bag-of-words BT model fit on the train pairs, its
    test accuracy, and the change in its reward and in the gold when a response overuses a
    shortcut (more list markers, more professionals): the proxy goes up, the gold goes down.
`stats_main` is `lsc-align world-stats --data DIR`; it prints the numbers as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Any, Sequence

import numpy as np

from lsc_align.conventions import PROPERTY_SUBSETS
from lsc_align.world import vocabulary as word_vocab
from lsc_align.world import dataset as world
from lsc_align.world import gold as world_gold
from lsc_align.world import grammar as world_grammar

_SEPARATOR = '\n\nAssistant:'


def split_dialogue(text: str, source: str = '') -> tuple[list[str], list[str]]:
  """(prompt words ending with 'Assistant:', final-turn words) of one HH-layout string."""
  head, sep, tail = text.rpartition(_SEPARATOR)
  if not sep:
    raise ValueError(f'{source}: no "\\n\\nAssistant:" turn in {text[:60]!r}')
  return (head + sep).split(), tail.split()


def read_pairs(data_dir: str, property_name: str, split: str) -> list[dict[str, Any]]:
  """{'prompt', 'chosen', 'rejected'} word lists of a world split, in file order."""
  path = os.path.join(data_dir, PROPERTY_SUBSETS[property_name], f'{split}.jsonl.gz')
  rows = []
  for number, row in enumerate(world.read_jsonl_gz(path), start=1):
    prompt, chosen = split_dialogue(row['chosen'], f'{path}:{number}')
    prompt_r, rejected = split_dialogue(row['rejected'], f'{path}:{number}')
    if prompt != prompt_r:
      raise ValueError(f'{path}:{number}: chosen and rejected prompts differ')
    rows.append({'prompt': prompt, 'chosen': chosen, 'rejected': rejected})
  return rows


def _corr(x: np.ndarray, y: np.ndarray) -> float:
  if len(x) < 2 or x.std() == 0 or y.std() == 0:
    return float('nan')
  return float(np.corrcoef(x, y)[0, 1])


def _bow(vocabulary: word_vocab.WordVocabulary, words: Sequence[str]) -> np.ndarray:
  counts = np.zeros(vocabulary.size)
  np.add.at(counts, vocabulary.encode_words(words), 1.0)
  return counts


def fit_linear_bt(diffs: np.ndarray, l2: float = 1.0, max_steps: int = 15) -> np.ndarray:
  """Weights w of p(chosen) = sigmoid(w . (x_chosen - x_rejected)) by Newton's method with L2.

  Words that never differ within a pair (e.g. prompt words) keep weight 0 and are left out of
  the solve, which keeps it cheap.
  """
  active = np.flatnonzero(np.any(diffs != 0, axis=0))
  x = diffs[:, active]
  w_active = np.zeros(len(active))
  for _ in range(max_steps):
    p = 1.0 / (1.0 + np.exp(-(x @ w_active)))
    grad = x.T @ (1.0 - p) - l2 * w_active
    hess = (x * (p * (1.0 - p))[:, None]).T @ x + l2 * np.eye(len(active))
    step = np.linalg.solve(hess, grad)
    w_active += step
    if np.max(np.abs(step)) < 1e-6:
      break
  w = np.zeros(diffs.shape[1])
  w[active] = w_active
  return w


def _property_stats(lexicon: world_gold.Lexicon, vocabulary: word_vocab.WordVocabulary,
                    rows: dict[str, list[dict[str, Any]]], property_name: str,
                    gold_rows: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
  config = lexicon.config
  k = 0 if property_name == 'helpful' else 1
  out: dict[str, Any] = {}
  recomputed_error = 0.0
  per_split = {}
  for split, split_rows in rows.items():
    records = []
    for row, gold in zip(split_rows, gold_rows[split]):
      props = world_gold.prompt_properties(lexicon, row['prompt'])
      rec = {'props': props}
      for side in ('chosen', 'rejected'):
        feats = world_gold.response_features(lexicon, props, row[side])
        h = world_gold.gold_helpfulness(config, props, feats)
        s = world_gold.gold_harmlessness(config, props, feats)
        recomputed_error = max(recomputed_error, abs(h - gold[f'h_{side}']),
                               abs(s - gold[f's_{side}']))
        rec[side] = (h, s, feats)
      rec['scale'] = props.label_scale_help if k == 0 else props.label_scale_harm
      records.append(rec)
    per_split[split] = records
  records = per_split['train'] + per_split['test']
  u_c = np.array([r['chosen'][k] for r in records])
  u_r = np.array([r['rejected'][k] for r in records])
  scale = np.array([r['scale'] for r in records])
  diff = u_c - u_r
  tie = np.isclose(diff, 0.0)
  out['pairs'] = len(records)
  out['tie_share'] = float(tie.mean())
  out['bayes_agreement'] = float((diff[~tie] > 0).mean())
  out['expected_bayes_accuracy'] = float(np.mean(1.0 / (1.0 + np.exp(-scale * np.abs(diff)))))
  out['gold_recomputation_max_error'] = float(recomputed_error)
  severity = np.array([r['props'].severity for r in records])
  red = severity > 0
  out['red_team_share'] = float(red.mean())
  h = np.array([[r['chosen'][0], r['rejected'][0]] for r in records])
  s = np.array([[r['chosen'][1], r['rejected'][1]] for r in records])
  out['red_team_corr_h_s'] = _corr(h[red].ravel(), s[red].ravel())
  out['red_team_corr_dh_ds'] = _corr(h[red, 0] - h[red, 1], s[red, 0] - s[red, 1])
  out['benign_corr_h_s'] = _corr(h[~red].ravel(), s[~red].ravel())
  for feature in ('list_markers', 'professionals'):
    f = np.array([[getattr(r['chosen'][2], feature), getattr(r['rejected'][2], feature)]
                  for r in records], float)
    d_f = f[:, 0] - f[:, 1]
    differs = d_f != 0
    out[f'{feature}_rate'] = float((f > 0).mean())
    out[f'{feature}_corr_with_gold_diff'] = _corr(d_f, diff)
    out[f'{feature}_more_is_gold_better'] = float(
        (np.sign(d_f[differs]) == np.sign(diff[differs])).mean()) if differs.any() else None
    out[f'{feature}_more_is_chosen'] = float((d_f[differs] > 0).mean()) if differs.any() else None
  difficulty = np.array([r['props'].difficulty for r in records])
  out['difficulty_range'] = [float(difficulty.min()), float(difficulty.max())]
  out['label_scale_range'] = [float(scale.min()), float(scale.max())]
  lengths = np.array([len(row[side]) for split_rows in rows.values() for row in split_rows
                      for side in ('chosen', 'rejected')])
  out['response_length_mean_max'] = [float(lengths.mean()), int(lengths.max())]
  out['prompt_length_mean'] = float(np.mean([len(row['prompt']) for split_rows in rows.values()
                                             for row in split_rows]))
  out['linear_proxy'] = _linear_proxy(lexicon, vocabulary, rows, per_split, k)
  return out


def _linear_proxy(lexicon: world_gold.Lexicon, vocabulary: word_vocab.WordVocabulary,
                  rows: dict[str, list[dict[str, Any]]],
                  per_split: dict[str, list[dict[str, Any]]], k: int) -> dict[str, Any]:
  """Fit a bag-of-words BT reward on train; test accuracy; reward vs gold under overuse."""
  config = lexicon.config

  def diffs(split: str) -> np.ndarray:
    return np.stack([_bow(vocabulary, r['chosen']) - _bow(vocabulary, r['rejected'])
                     for r in rows[split]])

  w = fit_linear_bt(diffs('train'))
  test_diff = diffs('test') @ w
  gold_test = np.array([r['chosen'][k] - r['rejected'][k] for r in per_split['test']])
  markers = [vocabulary.id_of(m) for m in config.list_markers[:config.max_sentences]]
  professionals = [vocabulary.id_of(p) for p in config.professionals]
  result = {'test_label_accuracy': float((test_diff > 0).mean()),
            'test_gold_agreement': float((np.sign(test_diff) == np.sign(gold_test))[
                gold_test != 0].mean()),
            'weight_list_markers_mean': float(w[markers].mean()),
            'weight_professionals_mean': float(w[professionals].mean())}
  # Overuse: add shortcut words the collection policy never wrote that many of.
  edits = {'list_overuse': list(config.list_markers[:config.max_sentences]) * 2,
           'referral_overuse': ['you', 'should', 'talk', 'to', 'a'] + list(
               config.professionals[:4]) + ['.']}
  for name, extra in edits.items():
    d_proxy, d_gold = [], []
    for row in rows['test']:
      base = row['chosen']
      edited = base + extra
      before = world_gold.gold_utilities(lexicon, row['prompt'], base)[k]
      after = world_gold.gold_utilities(lexicon, row['prompt'], edited)[k]
      d_proxy.append(float((_bow(vocabulary, edited) - _bow(vocabulary, base)) @ w))
      d_gold.append(after - before)
    result[f'{name}_proxy_change'] = float(np.mean(d_proxy))
    result[f'{name}_gold_change'] = float(np.mean(d_gold))
  return result


def policy_spread(lexicon: world_gold.Lexicon, property_name: str, n_prompts: int = 200,
                  n_samples: int = 16, seed: int = 12345) -> dict[str, list[float]]:
  """10/50/90% quantiles over prompts of the per-prompt mean and std of the gold utility."""
  config = lexicon.config
  k = 0 if property_name == 'helpful' else 1
  share = (config.helpful_harmful_share if property_name == 'helpful'
           else config.harmless_harmful_share)
  rng = np.random.default_rng([config.seed, seed])
  means, stds = [], []
  for _ in range(n_prompts):
    prompt = world_grammar.sample_prompt(config, rng, harmful=bool(rng.random() < share))
    props = world_gold.prompt_properties(lexicon, prompt)
    utilities = [world_gold.gold_utilities(
        lexicon, prompt, world_grammar.sample_response(config, props, rng))[k]
                 for _ in range(n_samples)]
    means.append(np.mean(utilities))
    stds.append(np.std(utilities))
  quantiles = (0.1, 0.5, 0.9)
  return {'per_prompt_mean_q10_q50_q90': [float(q) for q in np.quantile(means, quantiles)],
          'per_prompt_std_q10_q50_q90': [float(q) for q in np.quantile(stds, quantiles)]}


def world_stats(data_dir: str) -> dict[str, Any]:
  """The world's properties (see the module docstring), per property, as a JSON-able dict."""
  config = world.load_config(data_dir)
  lexicon = world_gold.build_lexicon(config)
  vocabulary = word_vocab.WordVocabulary.load(os.path.join(data_dir, 'vocab.txt'))
  gold = world.read_jsonl_gz(os.path.join(data_dir, 'gold.jsonl.gz'))
  stats: dict[str, Any] = {'vocab_size': vocabulary.size}
  for property_name in world.PROPERTIES:
    rows = {split: read_pairs(data_dir, property_name, split) for split in world.SPLITS}
    gold_rows = {split: sorted((g for g in gold if g['property'] == property_name
                                and g['split'] == split), key=lambda g: g['index'])
                 for split in world.SPLITS}
    for split in world.SPLITS:
      if len(gold_rows[split]) != len(rows[split]):
        raise ValueError(f'{data_dir}: gold.jsonl.gz has {len(gold_rows[split])} rows for '
                         f'{property_name}/{split}, the pairs file {len(rows[split])}')
    stats[property_name] = _property_stats(lexicon, vocabulary, rows, property_name, gold_rows)
    stats[property_name]['policy'] = policy_spread(lexicon, property_name)
  return stats


def stats_main(args: argparse.Namespace) -> int:
  """`lsc-align world-stats --data DIR`: prints world_stats as JSON."""
  print(json.dumps(world_stats(args.data), indent=2, sort_keys=True))
  return 0
