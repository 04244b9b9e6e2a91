"""Anthropic HH preference pairs: parse jsonl(.gz) files into (prompt, chosen, rejected) records.

Layout (the real data and the embedded world share it): `<root>/<subset>/<split>.jsonl.gz` (or
`.jsonl`), subsets such as 'helpful-base' and 'harmless-base'. Each line is
`{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": "..."}`: two whole dialogues that
share every turn but the final Assistant response.

Splitting a pair. The prompt x is the longest common prefix of the two dialogues, cut back to its
last "\\n\\nAssistant:" marker, so multi-turn prompts stay whole. The responses are the rest of each
dialogue with leading spaces removed. Responses that themselves contain "\\n\\nAssistant:" (the
model kept talking; 14 pairs of the test splits) are kept whole. A dialogue pair is rejected when
the prompts cannot be the same: no shared prefix ending in an Assistant marker, a divergence inside
a Human turn, or a response that contains a later "\\n\\nHuman:" turn.

Bad lines (not UTF-8, not JSON, missing or non-string keys, empty strings, empty responses,
different prompts, identical responses) raise `BadPairError` (a ValueError naming file, line and
reason). With `lenient=True` they are skipped and listed in the returned `ParseReport`; a pair is
never silently mis-split. Measured on the shared test splits: helpful-base has 2,354 lines of which
6 are bad (lines 121, 741, 1215, 2064: empty rejected response; 722, 2169: identical dialogues),
leaving 2,348 pairs; harmless-base has 2,312 lines of which 4 are bad (lines 87, 517, 926, 1104:
empty chosen response), leaving 2,308 pairs.

Splits. A user with the full data set uses its `train` split for training and `test` for
evaluation. The shared copy has only `test` files: when a subset has neither a `train` nor a
`validation` file, `load_split` derives `train` and `validation` from `test` by a hash of the
prompt (validation fraction 0.2 by default), so tests and examples train on 80% and evaluate on the
other 20% with no prompt on both sides. These derived splits are never a substitute for the real
train split.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import zlib
from typing import Iterator, Sequence

from lsc_align import io_utils

HUMAN_MARKER = '\n\nHuman:'
ASSISTANT_MARKER = '\n\nAssistant:'
DERIVED_FROM = 'test'
DERIVED_SPLITS = ('train', 'validation')
DEFAULT_VALIDATION_FRACTION = 0.2
_SUFFIXES = ('.jsonl.gz', '.jsonl')


class BadPairError(ValueError):
  """A line that is not a valid preference pair; says which file, which line, and why."""

  def __init__(self, source: str, line: int, reason: str):
    super().__init__(f'{source}:{line}: {reason}')
    self.source = source
    self.line = line
    self.reason = reason


@dataclasses.dataclass(frozen=True)
class PreferencePair:
  """One comparison: dialogue prompt x, preferred response y+, dispreferred response y-."""
  prompt: str  # every turn up to and including the final "\n\nAssistant:"
  chosen: str
  rejected: str
  source: str  # file the pair was read from
  line: int  # 1-based line number in that file


@dataclasses.dataclass(frozen=True)
class SkippedLine:
  source: str
  line: int
  reason: str

  def __str__(self) -> str:
    return f'{self.source}:{self.line}: {self.reason}'


@dataclasses.dataclass
class ParseReport:
  """What a lenient read skipped, line by line."""
  num_lines: int = 0
  num_pairs: int = 0
  skipped: list[SkippedLine] = dataclasses.field(default_factory=list)

  @property
  def num_skipped(self) -> int:
    return len(self.skipped)

  def merge(self, other: ParseReport) -> ParseReport:
    return ParseReport(self.num_lines + other.num_lines, self.num_pairs + other.num_pairs,
                       self.skipped + other.skipped)

  def summary(self) -> str:
    lines = [f'{self.num_pairs} pairs from {self.num_lines} lines, {self.num_skipped} skipped']
    lines += [f'  {s}' for s in self.skipped]
    return '\n'.join(lines)


def split_dialogue_pair(chosen: str, rejected: str) -> tuple[str, str, str]:
  """Splits two dialogues into (shared prompt, chosen response, rejected response).

  Raises:
    ValueError: with the reason, when the two dialogues are not a valid comparison.
  """
  if chosen == rejected:
    raise ValueError('chosen and rejected dialogues are identical')
  shared = os.path.commonprefix([chosen, rejected])
  last_assistant = shared.rfind(ASSISTANT_MARKER)
  if last_assistant < 0:
    raise ValueError('chosen and rejected share no dialogue prefix ending in "\\n\\nAssistant:" '
                     '(different prompts)')
  # A divergence after a Human marker means the humans said different things.
  if shared.rfind(HUMAN_MARKER) > last_assistant:
    raise ValueError('chosen and rejected diverge inside a Human turn (different prompts)')
  prompt = shared[:last_assistant + len(ASSISTANT_MARKER)]
  if not prompt.startswith(HUMAN_MARKER):
    raise ValueError('dialogue does not start with "\\n\\nHuman:"')
  chosen_response = chosen[len(prompt):].lstrip(' ')
  rejected_response = rejected[len(prompt):].lstrip(' ')
  for name, response in (('chosen', chosen_response), ('rejected', rejected_response)):
    if not response.strip():
      raise ValueError(f'empty {name} response')
    if HUMAN_MARKER in response:
      raise ValueError(f'{name} response contains a later "\\n\\nHuman:" turn '
                       '(the dialogues have different prompts)')
  if chosen_response.strip() == rejected_response.strip():
    raise ValueError('chosen and rejected responses are identical')
  return prompt, chosen_response, rejected_response


def parse_line(raw: bytes, source: str, line: int) -> PreferencePair:
  """Parses one jsonl line (bytes, without or with its newline) into a pair.

  Raises:
    BadPairError: naming source, line and reason.
  """
  try:
    text = raw.decode('utf-8')
  except UnicodeDecodeError as e:
    raise BadPairError(source, line, f'not UTF-8 ({e.reason} at byte {e.start})') from None
  if not text.strip():
    raise BadPairError(source, line, 'empty line')
  try:
    record = json.loads(text)
  except json.JSONDecodeError as e:
    raise BadPairError(source, line, f'not JSON ({e.msg} at column {e.colno})') from None
  if not isinstance(record, dict):
    raise BadPairError(source, line, f'not a JSON object (got {type(record).__name__})')
  for key in ('chosen', 'rejected'):
    if key not in record:
      raise BadPairError(source, line, f'missing key "{key}"')
    if not isinstance(record[key], str):
      raise BadPairError(source, line, f'"{key}" is not a string')
    if not record[key].strip():
      raise BadPairError(source, line, f'"{key}" is empty')
  try:
    prompt, chosen, rejected = split_dialogue_pair(record['chosen'], record['rejected'])
  except ValueError as e:
    raise BadPairError(source, line, str(e)) from None
  return PreferencePair(prompt, chosen, rejected, source, line)


def _raw_lines(path: str) -> Iterator[bytes]:
  with io_utils.open_file(path, 'rb') as raw:
    if path.endswith('.gz'):
      with gzip.GzipFile(fileobj=raw, mode='rb') as f:
        yield from f
    else:
      yield from raw


def read_pairs(path: str | os.PathLike[str], *,
               lenient: bool = False) -> tuple[list[PreferencePair], ParseReport]:
  """Reads every pair of one HH jsonl or jsonl.gz file, in file order.

  Args:
    path: the file.
    lenient: skip bad lines (listed in the report) instead of raising on the first one.

  Returns:
    (pairs, report).

  Raises:
    BadPairError: on the first bad line unless lenient; on a corrupt gzip stream always.
    ValueError: the file holds no valid pair.
  """
  source = os.fspath(path)
  pairs, report = [], ParseReport()
  line = 0
  try:
    for line, raw in enumerate(_raw_lines(source), start=1):
      report.num_lines = line
      try:
        pairs.append(parse_line(raw, source, line))
      except BadPairError as e:
        if not lenient:
          raise
        report.skipped.append(SkippedLine(source, line, e.reason))
  except (EOFError, OSError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
    raise BadPairError(source, line + 1, f'unreadable file ({e})') from None
  report.num_pairs = len(pairs)
  if not pairs:
    detail = (f' ({report.num_lines} lines, all skipped as bad)' if report.num_lines
              else ' (the file is empty)')
    raise ValueError(f'no preference pairs in {source}{detail}')
  return pairs, report


def prompt_fraction(prompt: str, salt: str = 'lsc_align') -> float:
  """A stable pseudo-uniform number in [0, 1) from the prompt text (sha256)."""
  digest = hashlib.sha256((salt + '\x00' + prompt).encode('utf-8')).digest()
  return int.from_bytes(digest[:8], 'big') / 2.0**64


def split_by_prompt(
    pairs: Sequence[PreferencePair], validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
    salt: str = 'lsc_align') -> tuple[list[PreferencePair], list[PreferencePair]]:
  """Deterministic (train, validation) split by a hash of the prompt; order is kept.

  A prompt's side depends on its text only (not on the rest of the data), and all pairs with one
  prompt land on the same side. The validation share is `validation_fraction` in expectation.
  """
  if not 0.0 <= validation_fraction <= 1.0:
    raise ValueError(f'validation_fraction must be in [0, 1], got {validation_fraction}')
  train, validation = [], []
  for pair in pairs:
    (validation if prompt_fraction(pair.prompt, salt) < validation_fraction else train).append(pair)
  return train, validation


def split_files(subset_dir: str | os.PathLike[str]) -> dict[str, str]:
  """The splits on disk: {split name: file path} for every <split>.jsonl(.gz) in subset_dir."""
  subset_dir = os.fspath(subset_dir)
  if not io_utils.isdir(subset_dir):
    raise ValueError(f'{subset_dir}: not a directory (expected <root>/<subset>/<split>.jsonl.gz)')
  files: dict[str, str] = {}
  for name in io_utils.listdir(subset_dir):
    for suffix in _SUFFIXES:
      if name.endswith(suffix) and not name.startswith('.'):
        split = name[:-len(suffix)]
        if split in files:
          raise ValueError(f'{subset_dir}: split "{split}" exists both as .jsonl and .jsonl.gz')
        files[split] = os.path.join(subset_dir, name)
        break
  return files


def derives_splits(files: dict[str, str]) -> bool:
  """Whether train/validation are derived from test (neither exists on disk, test does)."""
  return DERIVED_FROM in files and not any(s in files for s in DERIVED_SPLITS)


def available_splits(subset_dir: str | os.PathLike[str]) -> list[str]:
  """Split names load_split accepts for this subset: files on disk plus derived ones."""
  files = split_files(subset_dir)
  derived = list(DERIVED_SPLITS) if derives_splits(files) else []
  return sorted(files) + derived


def load_split(data_dir: str | os.PathLike[str], subset: str, split: str, *,
               lenient: bool = False,
               validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
               ) -> tuple[list[PreferencePair], ParseReport]:
  """Pairs of `<data_dir>/<subset>/<split>.jsonl(.gz)`, or of a split derived from test.

  Returns:
    (pairs in file order, report of the whole file read).
  """
  subset_dir = os.path.join(os.fspath(data_dir), subset)
  files = split_files(subset_dir)
  if split in files:
    return read_pairs(files[split], lenient=lenient)
  if split in DERIVED_SPLITS and derives_splits(files):
    pairs, report = read_pairs(files[DERIVED_FROM], lenient=lenient)
    train, validation = split_by_prompt(pairs, validation_fraction)
    chosen = train if split == 'train' else validation
    return chosen, dataclasses.replace(report, num_pairs=len(chosen))
  raise ValueError(f'{subset_dir}: no split "{split}" (available: {available_splits(subset_dir)})')


def check_splits(data_dir: str | os.PathLike[str], subsets: Sequence[str],
                 splits: Sequence[str], *, lenient: bool = False) -> ParseReport:
  """Reads each file behind (subset, split) once, before any work is done on the data.

  Strict (the default), the first bad line raises BadPairError naming file and line; lenient,
  the returned report lists every skipped line. Derived splits read their test file.

  Raises:
    BadPairError, ValueError: a bad line (strict), an empty file, a missing split.
  """
  report, seen = ParseReport(), set()
  for subset in subsets:
    subset_dir = os.path.join(os.fspath(data_dir), subset)
    files = split_files(subset_dir)
    for split in splits:
      if split in files:
        path = files[split]
      elif split in DERIVED_SPLITS and derives_splits(files):
        path = files[DERIVED_FROM]
      else:
        raise ValueError(f'{subset_dir}: no split "{split}" '
                         f'(available: {available_splits(subset_dir)})')
      if path not in seen:
        seen.add(path)
        report = report.merge(read_pairs(path, lenient=lenient)[1])
  return report
