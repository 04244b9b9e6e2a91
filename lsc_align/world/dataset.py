"""The embedded preference world: a synthetic stand-in for Anthropic HH with known gold utilities.

`lsc-align world --out DIR` writes, in seconds and deterministically given `WorldConfig.seed`:

  DIR/helpful-base/{train,test}.jsonl.gz   {"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...",
  DIR/harmless-base/{train,test}.jsonl.gz   "rejected": ...}  (the Anthropic HH layout)
  DIR/sft/{train,test}.jsonl.gz            {"prompt", "response", "h", "s"}: helpful chosen turns
  DIR/gold.jsonl.gz                        per pair: gold h/s of chosen and rejected, label scale,
                                           p(chosen), prompt properties
  DIR/vocab.txt, DIR/world.json            word list (ids from 3) and the full configuration

Prompts. One "Human:" turn on one topic. The helpful set is mostly benign (helpful_harmful_share
red-team), the harmless set mostly red-team (harmless_harmful_share). A prompt's words set its
topic, harm severity sev in [0, 1] (request word, aggravated by "without getting caught"), its
difficulty d (modifiers such as "in detailed steps", plus a small random weight per content word),
its label scales and how widely the collection policy's answers vary (lsc_align/world/gold.py).

Gold helpfulness h*(x, y) (world_gold.gold_helpfulness). Distinct on-topic words carry value
(content 1, detail 2; compliance words 1.5 * sev, since they answer what a red-team asker wants),
and helpfulness is help_max * (1 - exp(-value / (help_saturation * d))): diminishing returns,
sooner on easy prompts. Off-topic words, filler, repeated words, words beyond the length budget
and dialogue markers cost linearly; refusing costs up to refusal_help_cost on any prompt.

Gold harmlessness s*(x, y) (world_gold.gold_harmlessness). Harmful compliance words cost up to
harm_max * max(sev, harm_floor) (saturating); engaging with a red-team request's topic at all
costs a little; refusing a red-team request earns up to refusal_harm_value * sev; safety words
earn up to safety_value. On red-team prompts helpfulness and harmlessness therefore pull apart:
compliance raises h* and lowers s*, refusal does the opposite.

Shortcuts. List formatting earns list_value per marker only up to list_pay_max markers and only in
proportion to the content already there; each further marker costs list_overuse_cost. A referral
("you should talk to a doctor") earns harmlessness (and a little helpfulness on sensitive topics)
once; each further professional costs. Both correlate with gold quality in the collected data
because the collection policy writes lists and referrals more often when it is making an effort
(lsc_align/world/grammar.py), and it never writes more than max_sentences markers or one
referral; a reward model fit to these pairs credits the feature itself and keeps crediting it
where the gold has stopped paying, which is what a policy optimising that reward finds.

Labels. For two responses a, b drawn from the collection policy, a is chosen with probability
sigmoid(beta(x) * (u(a) - u(b))), u = h* on the helpful set and s* on the harmless set, with a
per-prompt label scale beta(x); a BT model fit to the labels therefore recovers beta(x) * u(x, y)
only up to a free per-prompt offset, and with a per-prompt confidence.
"""
from __future__ import annotations

import argparse
import dataclasses
import gzip
import io
import json
import os
import time
from typing import Any, Iterable

import gin
import numpy as np

from lsc_align import gin_utils
from lsc_align import io_utils
from lsc_align.conventions import PROPERTIES, PROPERTY_SUBSETS
from lsc_align.world import vocabulary as word_vocab
from lsc_align.world import config as world_config
from lsc_align.world import gold as world_gold
from lsc_align.world import grammar as world_grammar

SPLITS = ('train', 'test')
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class WorldPair:
  """One labelled pair; `chosen`/`rejected` are the final Assistant turns (words)."""
  property: str
  split: str
  prompt_index: int
  prompt: tuple[str, ...]
  chosen: tuple[str, ...]
  rejected: tuple[str, ...]
  props: world_gold.PromptProperties
  gold_chosen: tuple[float, float]  # (h*, s*)
  gold_rejected: tuple[float, float]
  p_chosen: float  # BT probability of the label that was drawn

  @property
  def label_scale(self) -> float:
    return (self.props.label_scale_help if self.property == 'helpful'
            else self.props.label_scale_harm)


def _split_pairs(config: world_config.WorldConfig, lexicon: world_gold.Lexicon,
                 property_name: str, split: str) -> list[WorldPair]:
  rng = np.random.default_rng(
      [config.seed, PROPERTIES.index(property_name), SPLITS.index(split)])
  share = (config.helpful_harmful_share if property_name == 'helpful'
           else config.harmless_harmful_share)
  n_prompts = config.train_prompts if split == 'train' else config.test_prompts
  pairs = []
  for prompt_index in range(n_prompts):
    prompt = world_grammar.sample_prompt(config, rng, harmful=bool(rng.random() < share))
    props = world_gold.prompt_properties(lexicon, prompt)
    scale = props.label_scale_help if property_name == 'helpful' else props.label_scale_harm
    for _ in range(config.pairs_per_prompt):
      a = world_grammar.sample_response(config, props, rng)
      b = world_grammar.sample_response(config, props, rng)
      for _ in range(100):  # identical candidates carry no preference (and HH loaders reject them)
        if b != a:
          break
        b = world_grammar.sample_response(config, props, rng)
      else:
        raise ValueError(f'WorldConfig: the collection policy always writes {" ".join(a)!r} '
                         f'for prompt {" ".join(prompt)!r}; no pair can be formed')
      gold_a = world_gold.gold_utilities(lexicon, prompt, a)
      gold_b = world_gold.gold_utilities(lexicon, prompt, b)
      k = 0 if property_name == 'helpful' else 1
      p_a = world_gold.bt_probability(scale, gold_a[k], gold_b[k])
      if rng.random() < p_a:
        chosen, rejected, p_chosen, gold_c, gold_r = a, b, p_a, gold_a, gold_b
      else:
        chosen, rejected, p_chosen, gold_c, gold_r = b, a, 1.0 - p_a, gold_b, gold_a
      pairs.append(WorldPair(property_name, split, prompt_index, tuple(prompt), tuple(chosen),
                             tuple(rejected), props, gold_c, gold_r, p_chosen))
  return pairs


def generate_world(config: world_config.WorldConfig
                   ) -> dict[tuple[str, str], list[WorldPair]]:
  """All labelled pairs, keyed by (property, split); each split has its own random stream."""
  lexicon = world_gold.build_lexicon(config)
  return {(p, s): _split_pairs(config, lexicon, p, s) for p in PROPERTIES for s in SPLITS}


def world_vocabulary(config: world_config.WorldConfig) -> word_vocab.WordVocabulary:
  return word_vocab.WordVocabulary(world_config.world_words(config))


def _atomic_write_jsonl_gz(path: str, rows: Iterable[Any]) -> None:
  """Gzipped JSONL, written under a temporary name then renamed; mtime 0 keeps bytes stable."""
  buffer = io.BytesIO()
  with gzip.GzipFile(filename='', mode='wb', fileobj=buffer, mtime=0) as f:
    for row in rows:
      f.write((json.dumps(row, sort_keys=True) + '\n').encode('utf-8'))
  io_utils.atomic_write_bytes(path, buffer.getvalue())


def read_jsonl_gz(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
  """Rows of a gzipped JSONL file; a bad line raises ValueError naming file and line."""
  rows = []
  with io_utils.open_file(path, 'rb') as raw, \
      gzip.open(raw, 'rt', encoding='utf-8') as f:
    for number, line in enumerate(f, start=1):
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise ValueError(f'{os.fspath(path)}:{number}: {e}') from e
  return rows


def read_gold_rows(data_dir: str | os.PathLike[str], property_name: str,
                   split: str) -> list[dict[str, Any]] | None:
  """gold.jsonl.gz rows of one property and split in file order; None if not a world dir."""
  path = os.path.join(os.fspath(data_dir), 'gold.jsonl.gz')
  if not io_utils.exists(path):
    return None
  return sorted((r for r in read_jsonl_gz(path)
                 if r['property'] == property_name and r['split'] == split),
                key=lambda r: r['index'])


def gold_differences(rows: Iterable[dict[str, Any]], property_name: str) -> np.ndarray:
  """u(y+) − u(y−) of gold rows: h* for 'helpful', s* for 'harmless'."""
  key = 'h' if property_name == 'helpful' else 's'
  return np.array([r[f'{key}_chosen'] - r[f'{key}_rejected'] for r in rows], np.float64)


def _gold_row(index: int, pair: WorldPair) -> dict[str, Any]:
  return {
      'property': pair.property, 'split': pair.split, 'index': index,
      'prompt_index': pair.prompt_index,
      'h_chosen': pair.gold_chosen[0], 's_chosen': pair.gold_chosen[1],
      'h_rejected': pair.gold_rejected[0], 's_rejected': pair.gold_rejected[1],
      'label_scale': pair.label_scale, 'p_chosen': pair.p_chosen,
      'topic': pair.props.topic, 'severity': pair.props.severity,
      'difficulty': pair.props.difficulty, 'policy_spread': pair.props.policy_spread,
  }


def write_world(config: world_config.WorldConfig,
                pairs: dict[tuple[str, str], list[WorldPair]], out_dir: str) -> dict[str, Any]:
  """Writes every file of the data set atomically; returns the summary stored in world.json."""
  render = word_vocab.render
  gold_rows = []
  for (property_name, split), split_pairs in pairs.items():
    rows = [{'chosen': render(p.prompt + p.chosen), 'rejected': render(p.prompt + p.rejected)}
            for p in split_pairs]
    _atomic_write_jsonl_gz(
        os.path.join(out_dir, PROPERTY_SUBSETS[property_name], f'{split}.jsonl.gz'), rows)
    gold_rows += [_gold_row(i, p) for i, p in enumerate(split_pairs)]
    if property_name == 'helpful':
      sft = [{'prompt': render(p.prompt), 'response': render(p.chosen),
              'h': p.gold_chosen[0], 's': p.gold_chosen[1]} for p in split_pairs]
      _atomic_write_jsonl_gz(os.path.join(out_dir, 'sft', f'{split}.jsonl.gz'), sft)
  _atomic_write_jsonl_gz(os.path.join(out_dir, 'gold.jsonl.gz'), gold_rows)
  vocabulary = world_vocabulary(config)
  vocabulary.save(os.path.join(out_dir, 'vocab.txt'))
  summary = {
      'format_version': FORMAT_VERSION,
      'vocab_size': vocabulary.size,
      'pairs': {f'{PROPERTY_SUBSETS[p]}/{s}': len(v) for (p, s), v in pairs.items()},
      'config': config.to_dict(),
  }
  io_utils.atomic_write_json(os.path.join(out_dir, 'world.json'), summary)
  return summary


def load_config(data_dir: str | os.PathLike[str]) -> world_config.WorldConfig:
  """The WorldConfig stored in DIR/world.json."""
  path = os.path.join(os.fspath(data_dir), 'world.json')
  summary = json.loads(io_utils.read_text(path))
  try:
    return world_config.WorldConfig.from_dict(summary['config'])
  except (KeyError, TypeError, ValueError) as e:
    raise ValueError(f'{path}: bad world config: {e}') from e


@gin.configurable
def build_world(out_dir: str, config: world_config.WorldConfig | None = None) -> dict[str, Any]:
  """Generates and writes the world (config defaults to the gin-bound WorldConfig())."""
  config = config or world_config.WorldConfig()
  return write_world(config, generate_world(config), io_utils.abspath(out_dir))


def main(args: argparse.Namespace) -> int:
  """`lsc-align world --out DIR`: writes the data set; gin was parsed by the CLI."""
  start = time.time()
  if io_utils.exists(args.out) and not io_utils.isdir(args.out):
    raise ValueError(f'--out {args.out} is a file; the world is a directory')
  summary = build_world(args.out)
  gin_utils.write_operative_config(args.out)
  print(json.dumps({'out': args.out, 'vocab_size': summary['vocab_size'],
                    'pairs': summary['pairs'], 'seconds': round(time.time() - start, 2)},
                   indent=2))
  return 0
