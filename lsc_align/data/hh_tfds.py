"""TFDS builder over a local directory in the HH layout, prepared as array_record (random access).

The source is `<source_dir>/<config>/<split>.jsonl(.gz)` (real Anthropic HH, or the embedded world);
nothing is downloaded. Configs: 'helpful-base' and 'harmless-base'. Splits are whatever split files
exist on disk; when a subset has neither `train` nor `validation` files (the shared copy has only
`test`), 'train' and 'validation' are also prepared, derived from 'test' by a hash of the prompt
(`lsc_align.data.hh.load_split`; 80/20 by default). Examples keep file order (shuffling disabled),
so index i of a split is its i-th valid pair. A bad line is an error naming file and line unless
`lenient` (the real test files contain 10), when bad lines are skipped and recorded in the
dataset's metadata under 'skipped_lines'.

    builder = hh_tfds.prepare('/work/shared/data/hh-rlhf', '/tmp/tfds', 'helpful-base')
    test = builder.as_data_source('test')     # random access: test[17]['prompt'] -> bytes

Once prepared, `tfds.builder('hh_preference/helpful-base', data_dir=...)` reads it without the
source directory.
"""
from __future__ import annotations

import os
from typing import Any, Iterator

from lsc_align import tf_import

tf_import.import_quietly()
from etils import epath
import tensorflow_datasets as tfds

from lsc_align import io_utils
from lsc_align.conventions import PROPERTY_SUBSETS
from lsc_align.data import hh

BUILDER_NAME = 'hh_preference'
SUBSETS = tuple(PROPERTY_SUBSETS.values())
FILE_FORMAT = 'array_record'


class HhPreference(tfds.core.GeneratorBasedBuilder):
  """Anthropic HH preference pairs (prompt, chosen response, rejected response) from local files."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Prompt = shared dialogue prefix; responses split off the final turn.'}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name=subset, description=f'Anthropic HH {subset} pairs')
      for subset in SUBSETS
  ]
  # tfds looks for checksum files beside the builder's code; resolving that path through
  # package resources needs `importlib_resources`, which this builder (no downloads) can do without.
  code_path = epath.Path(__file__)

  def __init__(self, *, source_dir: str | os.PathLike[str] | None = None, lenient: bool = False,
               validation_fraction: float = hh.DEFAULT_VALIDATION_FRACTION, **kwargs: Any):
    """Args: source_dir (root of the HH layout, needed only to prepare), lenient (skip bad lines),
    validation_fraction (for splits derived from test); the rest goes to tfds (data_dir, config)."""
    self._source_dir = None if source_dir is None else io_utils.abspath(source_dir)
    self._lenient = lenient
    self._validation_fraction = validation_fraction
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__.splitlines()[0],
        features=tfds.features.FeaturesDict({
            'prompt': tfds.features.Text(),
            'chosen': tfds.features.Text(),
            'rejected': tfds.features.Text(),
        }),
        homepage='https://github.com/anthropics/hh-rlhf',
        license='MIT',
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(),
    )

  def _subset_dir(self) -> str:
    if self._source_dir is None:
      raise ValueError(f'{BUILDER_NAME}/{self.builder_config.name} is not prepared in '
                       f'{self.data_dir}; pass source_dir=<root of the HH layout> to prepare it')
    return os.path.join(self._source_dir, self.builder_config.name)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
    del dl_manager  # local files only
    splits = hh.available_splits(self._subset_dir())
    self.info.metadata['source_dir'] = self._source_dir
    self.info.metadata['lenient'] = self._lenient
    self.info.metadata['validation_fraction'] = self._validation_fraction
    self.info.metadata['skipped_lines'] = []
    return {split: self._generate_examples(split) for split in splits}

  def _generate_examples(self, split: str) -> Iterator[tuple[str, dict[str, str]]]:
    pairs, report = hh.load_split(self._source_dir, self.builder_config.name, split,
                                  lenient=self._lenient,
                                  validation_fraction=self._validation_fraction)
    skipped = self.info.metadata['skipped_lines']
    # Derived splits read the same test file: list each skipped line once.
    skipped.extend(str(s) for s in report.skipped if str(s) not in skipped)
    for pair in pairs:
      # Line numbers are unique within a file, hence within a split (derived ones included).
      yield f'{pair.line:09d}', {'prompt': pair.prompt, 'chosen': pair.chosen,
                                 'rejected': pair.rejected}


def prepare(source_dir: str | os.PathLike[str], tfds_data_dir: str | os.PathLike[str],
            subset: str, *, lenient: bool = False,
            validation_fraction: float = hh.DEFAULT_VALIDATION_FRACTION) -> HhPreference:
  """Prepares `subset` of the local HH layout at source_dir into tfds_data_dir (array_record).

  Preparing is skipped when tfds_data_dir already holds this subset and version.

  Raises:
    ValueError: when tfds_data_dir holds this subset prepared from another source or settings.
  """
  if subset not in SUBSETS:
    raise ValueError(f'unknown subset "{subset}"; expected one of {SUBSETS}')
  builder = HhPreference(source_dir=source_dir, lenient=lenient,
                         validation_fraction=validation_fraction,
                         data_dir=os.fspath(tfds_data_dir), config=subset,
                         file_format=FILE_FORMAT)
  builder.download_and_prepare(
      file_format=FILE_FORMAT,
      download_config=tfds.download.DownloadConfig(
          compute_stats=tfds.download.ComputeStatsMode.SKIP))
  wanted = {'source_dir': io_utils.abspath(source_dir), 'lenient': lenient,
            'validation_fraction': validation_fraction}
  found = {key: builder.info.metadata.get(key) for key in wanted}
  if found != wanted:
    raise ValueError(f'{builder.data_dir} was prepared with {found}, not {wanted}; '
                     'use another tfds_data_dir or delete it')
  return builder
