"""eval.evaluate.evaluate against numbers computed by hand (every reported rate goes through it)."""
import numpy as np
import pytest

from lsc_align.eval import evaluate

SFT = {'helpful': np.array([[0., 1, 2, 3, 4], [10, 20, 30, 40, 50]]),
       'harmless': np.array([[0., 1, 2, 3, 4], [-4, -3, -2, -1, 0]])}
# Per-prompt SFT thresholds (linear quantiles): helpful q.85 → 3.4, 44; median 2, 30.
# harmless q.95 → 3.8, −0.2; median 2, −2.
POLICY = {'helpful': np.array([[3.5, 1.0], [45., 50.]]),
          'harmless': np.array([[3.9, 2.5], [-3., -0.1]])}


def _evaluate(**kwargs):
  return evaluate.evaluate(run='r', method='ppo', objective='o', transform='lsc', seed=0,
                           policy_judge=POLICY, sft_judge=SFT, kl_per_prompt=np.array([1., 3.]),
                           shortcut_flags={'list': np.array([[1, 0], [1, 1]])},
                           proxy_rewards={'helpful': np.array([[1., 2.], [3., 4.]])}, **kwargs)


def test_uniform_sample_rates_by_hand():
  r = _evaluate()
  # helpful wins [1, 0], [1, 1]; harmless wins [1, 0], [0, 1].
  assert r.win_rate == pytest.approx({'helpful': 0.75, 'harmless': 0.5})
  # AND over the medians: prompt 0 [T, F], prompt 1 [F, T].
  assert r.and_win_rate == pytest.approx(0.5)
  assert r.extra[evaluate.PER_PROMPT_AND] == pytest.approx([0.5, 0.5])
  assert r.gold_reward == pytest.approx({'helpful': (2.25 + 47.5) / 2,
                                         'harmless': (3.2 - 1.55) / 2})
  assert r.kl == pytest.approx(2.0)
  assert r.shortcut_rate == pytest.approx({'list': 0.75})
  assert r.proxy_reward == pytest.approx({'helpful': 2.5})
  for prop, ci in r.win_rate_ci.items():
    assert ci[0] <= r.win_rate[prop] <= ci[1]
  assert set(r.pairwise_win_rate) == {'helpful', 'harmless'}


def test_importance_weighted_rates_by_hand():
  # Unnormalised weights: evaluate normalises per prompt to [.75, .25] and [0, 1].
  r = _evaluate(sample_weights=np.array([[3., 1.], [0., 2.]]))
  assert r.win_rate == pytest.approx({'helpful': (0.75 + 1.0) / 2, 'harmless': (0.75 + 1) / 2})
  assert r.and_win_rate == pytest.approx((0.75 + 1.0) / 2)
  assert r.extra[evaluate.PER_PROMPT_AND] == pytest.approx([0.75, 1.0])
  assert r.gold_reward['helpful'] == pytest.approx((0.75 * 3.5 + 0.25 * 1.0 + 50.0) / 2)
  assert r.shortcut_rate == pytest.approx({'list': (0.75 + 1.0) / 2})
  assert r.proxy_reward == pytest.approx({'helpful': (0.75 * 1 + 0.25 * 2 + 4.0) / 2})
  assert r.pairwise_win_rate is None  # pairwise votes need real samples


def test_quantiles_can_be_overridden_and_bad_weights_are_refused():
  r = _evaluate(quantiles={'helpful': 0.5})  # median thresholds 2, 30: wins [1, 0], [1, 1]
  assert r.win_rate['helpful'] == pytest.approx(0.75)
  r = _evaluate(quantiles={'helpful': 0.99})  # 3.96, 49.6: wins [0, 0], [0, 1]
  assert r.win_rate['helpful'] == pytest.approx(0.25)
  with pytest.raises(ValueError, match='sample weights shape'):
    _evaluate(sample_weights=np.ones((2, 3)))
