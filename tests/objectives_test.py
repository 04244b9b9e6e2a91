"""Tests for lsc_align.rewards.objectives and the gin configs under configs/."""
import glob
import os

import gin
import pytest

from lsc_align import gin_utils
from lsc_align.rewards import objectives

CONFIGS = sorted(glob.glob(os.path.join(gin_utils.CONFIG_DIR, '**', '*.gin'), recursive=True))


def test_there_are_configs():
  assert len([c for c in CONFIGS if '/objectives/' in c]) >= 13


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: os.path.relpath(p, gin_utils.CONFIG_DIR))
def test_every_gin_file_parses(path):
  gin_utils.parse([path], finalize=False)
  gin.clear_config()


@pytest.mark.parametrize('path', glob.glob(os.path.join(gin_utils.CONFIG_DIR, 'objectives',
                                                        '*.gin')))
def test_objective_configs_build_objectives(path):
  gin_utils.parse([path], finalize=False)
  obj = objectives.make_objective()
  gin.clear_config()
  assert obj.name == os.path.basename(path)[:-4]
  assert obj.properties in (('helpful',), ('harmless',), ('helpful', 'harmless'))
  hash(obj)  # usable as a static jit argument


def test_paper_default_references():
  gin_utils.parse(['objectives/combined_lsc_sum'], finalize=False)
  obj = objectives.make_objective()
  gin.clear_config()
  assert [r.quantile for r in obj.references] == [0.75, 0.5]
  gin_utils.parse(['objectives/harmless_lsc'], finalize=False)
  assert objectives.make_objective().references[0].kind == objectives.ReferenceKind.CANNED
  gin.clear_config()


def test_wrong_gin_binding_names_the_binding():
  with pytest.raises(gin_utils.GinConfigError, match="make_objective.tranform"):
    gin_utils.parse(['objectives/helpful_lsc'], ['make_objective.tranform = "lsc"'])
  gin.clear_config()
  with pytest.raises(gin_utils.GinConfigError, match='no_such_file'):
    gin_utils.parse(['no_such_file'])


def test_bad_objectives_are_errors():
  with pytest.raises(ValueError, match=r'quantile in \(0, 1\)'):
    objectives.make_objective('x', ['helpful'], 'lsc', {'helpful': ('quantile', 1.2)})
  with pytest.raises(ValueError, match="needs a reference for 'helpful'"):
    objectives.make_objective('x', ['helpful'], 'lsc')
  with pytest.raises(ValueError, match='unknown properties'):
    objectives.make_objective('x', ['helpful'], 'lsc', {'harmles': ('quantile', 0.5)})
  with pytest.raises(ValueError, match='helpful_weight must be in'):
    objectives.make_objective('x', ['helpful', 'harmless'], 'raw', helpful_weight=1.5)
  with pytest.raises(ValueError, match='unknown reward transform'):
    objectives.make_objective('x', ['helpful'], 'lsx', {'helpful': ('quantile', 0.5)})
  with pytest.raises(ValueError, match='empty response'):
    objectives.ReferenceSpec('canned', responses=('  ',))


def test_to_dict_is_plain_data():
  obj = objectives.make_objective('x', ['helpful', 'harmless'], 'raw', helpful_weight=0.2)
  d = obj.to_dict()
  assert d['transform'] == 'raw' and d['weights'] == (0.2, 0.8)
  assert d['references'][0]['kind'] == 'none'
