"""The world's answers to trainers and diagnostics (lsc_align.world.supervision)."""
import numpy as np
import pytest

from lsc_align.world import supervision


def test_gold_targets_are_the_gold_sign_and_probability(tiny_world):
  n = 120
  sign = supervision.gold_label_targets(str(tiny_world), 'helpful', 'train', n, 'gold_sign')
  prob = supervision.gold_label_targets(str(tiny_world), 'helpful', 'train', n, 'gold_probability')
  diff = supervision.gold_pair_differences(str(tiny_world), 'helpful', 'train', n)
  np.testing.assert_array_equal(sign, np.where(np.isclose(diff, 0), 0.5, diff > 0))
  assert prob.shape == (n,) and np.all((prob > 0) & (prob < 1))
  # p_chosen is the probability of the label drawn: at least 1/2 where the label agrees with gold
  assert np.all(prob[sign == 1.0] >= 0.5) and np.all(prob[sign == 0.0] <= 0.5)
  with pytest.raises(ValueError, match="world_labels 'gold'"):
    supervision.gold_label_targets(str(tiny_world), 'helpful', 'train', n, 'gold')
  with pytest.raises(ValueError, match='has 120 gold rows'):
    supervision.gold_label_targets(str(tiny_world), 'helpful', 'train', n + 1, 'gold_sign')


def test_other_data_has_no_gold(tmp_path):
  assert not supervision.is_world(tmp_path)
  assert supervision.gold_pair_differences(str(tmp_path), 'helpful', 'test', 3) is None
  assert supervision.refusal_phrases(str(tmp_path)) is None
  with pytest.raises(ValueError, match='needs an embedded world'):
    supervision.gold_label_targets(str(tmp_path), 'helpful', 'train', 3, 'gold_sign')


def test_gold_agreement_by_hand():
  gold = np.array([1.0, -2.0, 0.0, 3.0])
  margins = np.array([0.5, 0.1, 9.0, -1.0])  # agrees, disagrees, (tie: left out), disagrees
  result = supervision.gold_agreement(margins, gold)
  assert result['gold_label_agreement'] == pytest.approx((1 + 0 + 0.5 + 1) / 4)
  assert result['gold_tie_share'] == pytest.approx(0.25)
  assert result['model_gold_agreement'] == pytest.approx(1 / 3)
