"""`lsc-align claims` (lsc_align/pipeline/worlds.py): world bindings, the selection rule, matched
KL, paired intervals and the tally on synthetic results; one tiny end-to-end run (slow)."""
import json
import os
import shutil

import numpy as np
import pytest

from lsc_align.eval import results as results_lib
from lsc_align.eval import win_rates
from lsc_align.pipeline import worlds

LSC = ('lsc_a', 'lsc_b', 'lsc_c')
RAW = ('raw_w0.3', 'raw_w0.5', 'raw_w0.7')


def _result(objective, method, value, kl, k=None, gamma=None, ci=None):
  run = f'{method}_{objective}_' + (f'k{k}' if method == 'bok' else f'g{gamma:g}')
  return results_lib.RunResult(
      run=run, method=method, objective=objective, seed=0, kl=kl, win_rate={'helpful': 0.5},
      transform='raw' if objective.startswith('raw') else 'lsc', k=k, gamma=gamma,
      and_win_rate=value, and_win_rate_ci=ci or (value - 0.1, value + 0.1))


def _bok(values_at_k4, values_at_k1=None):
  """Best-of-k results at k = 1 and 4 for every setting: {setting: value at k=4}."""
  out = []
  for setting, value in values_at_k4.items():
    out.append(_result(setting, 'bok', value, np.log(4) - 0.75, k=4))
    out.append(_result(setting, 'bok', (values_at_k1 or {}).get(setting, 0.2), 0.0, k=1))
  return out


def test_parse_world_accepts_the_new_users_bindings():
  assert worlds.parse_world('').name == 'default' == worlds.parse_world([]).name
  world = worlds.parse_world('WorldConfig.seed = 2; WorldConfig.help_label_scale = 1.0\n'
                             'WorldConfig.list_value = 0.6')
  assert dict(world.overrides) == {'seed': 2, 'help_label_scale': 1.0, 'list_value': 0.6}
  assert world.name == 'seed2_help_label_scale1.0_list_value0.6'
  assert worlds.parse_world(['lsc_align.world.config.WorldConfig.seed = 1']).name == 'seed1'


@pytest.mark.parametrize('binding, named', [
    ('WorldConfig.sede = 1', "no field 'sede'"),
    ('run_learner.steps = 3', 'must be "WorldConfig.<field> = <value>"'),
    ('WorldConfig.seed = @foo()', 'not a literal'),
])
def test_parse_world_errors_name_the_binding(binding, named):
  with pytest.raises(ValueError, match='world binding') as info:
    worlds.parse_world(binding)
  assert binding in str(info.value) and named in str(info.value)


def test_best_of_k_claim_picks_each_sides_best_setting_at_the_largest_k():
  values = {'lsc_a': 0.30, 'lsc_b': 0.42, 'lsc_c': 0.35, 'raw_w0.3': 0.40, 'raw_w0.5': 0.33,
            'raw_w0.7': 0.38}
  # At k = 1 the order differs: the pick must use the claim's own point (the largest k).
  results = _bok(values, {'lsc_a': 0.9, 'raw_w0.7': 0.9})
  claim = worlds.world_claim('bok', 'w', results, LSC, RAW)
  assert claim.point == 'k=4'
  assert (claim.lsc.setting, claim.raw.setting) == ('lsc_b', 'raw_w0.3')
  assert claim.difference == pytest.approx(0.02) and claim.holds
  assert claim.lsc.interval == pytest.approx((0.32, 0.52)) and claim.interval is None
  assert dict(claim.lsc.candidates) == {s: values[s] for s in LSC}
  assert claim.verdict == 'holds'


def test_ties_go_to_the_first_listed_setting_on_both_sides():
  claim = worlds.world_claim('bok', 'w', _bok({s: 0.25 for s in LSC + RAW}), LSC, RAW)
  assert (claim.lsc.setting, claim.raw.setting) == ('lsc_a', 'raw_w0.3')
  assert not claim.holds and claim.verdict == 'tie'


def test_paired_interval_bootstraps_the_per_prompt_difference():
  rng = np.random.default_rng(0)
  per_prompt, values = {}, {}
  for i, setting in enumerate(LSC + RAW):
    pp = (rng.random(200) < (0.2 if setting.startswith('raw') else 0.5) + 0.01 * i).astype(float)
    values[setting] = float(pp.mean())
    per_prompt[f'bok_{setting}_k4'] = pp
  claim = worlds.world_claim('bok', 'w', _bok(values), LSC, RAW, per_prompt=per_prompt)
  best_lsc = max(LSC, key=values.get)
  best_raw = max(RAW, key=values.get)
  expected = win_rates.bootstrap_ci(per_prompt[f'bok_{best_lsc}_k4']
                                    - per_prompt[f'bok_{best_raw}_k4'])
  assert claim.interval == pytest.approx((expected.low, expected.high))
  assert claim.interval[0] > 0 and claim.verdict == 'holds (interval excludes 0)'
  # The reverse comparison fails, with the interval below 0.
  flipped = worlds.world_claim('bok', 'w', _bok(values), RAW, LSC, per_prompt=per_prompt)
  assert not flipped.holds and flipped.interval[1] < 0
  assert flipped.verdict == 'fails (interval excludes 0)'


def _frontier(setting, kls, values, method='optimum'):
  return [_result(setting, method, v, kl, gamma=g)
          for kl, v, g in zip(kls, values, (1.0, 0.3, 0.1, 0.03))]


def test_matched_kl_interpolates_every_frontier_at_the_top_of_the_common_range():
  results = []
  for setting, top in zip(LSC + RAW, (3.0, 4.0, 5.0, 2.5, 4.0, 6.0)):
    slope = 0.1 if setting.startswith('lsc') else 0.08
    kls = [0.0, top / 2, top]
    results += _frontier(setting, kls, [0.2 + slope * kl + (0.01 if setting.endswith(('_b', '0.5'))
                                                            else 0.0) for kl in kls])
  claim = worlds.world_claim('optimum', 'w', results, LSC, RAW)
  assert claim.point == 'KL=2.50'  # the smallest of the frontiers' top KLs
  assert claim.lsc.setting == 'lsc_b' and claim.lsc.value == pytest.approx(0.2 + 0.25 + 0.01)
  assert claim.raw.setting == 'raw_w0.5' and claim.raw.value == pytest.approx(0.2 + 0.2 + 0.01)
  capped = worlds.world_claim('optimum', 'w', results, LSC, RAW, kl_cap=1.0)
  assert capped.point == 'KL=1.00' and capped.difference == pytest.approx(0.02)
  low_results = [r for r in results if r.kl > 0]  # every frontier now starts above KL 1.25
  assert worlds.world_claim('optimum', 'w', low_results, LSC, RAW, kl_cap=1.0) is None


def test_matched_kl_per_prompt_values_interpolate_with_the_frontiers_weights():
  results, per_prompt = [], {}
  for i, setting in enumerate(LSC + RAW):
    a, b = np.full(10, 0.1 + 0.01 * i), np.full(10, 0.5 + 0.01 * i)
    results += _frontier(setting, [0.0, 2.0], [a.mean(), b.mean()])
    per_prompt[f'optimum_{setting}_g1'], per_prompt[f'optimum_{setting}_g0.3'] = a, b
  claim = worlds.world_claim('optimum', 'w', results, LSC, RAW, per_prompt=per_prompt)
  np.testing.assert_allclose(claim.lsc.per_prompt, 0.5 + 0.02)  # lsc_c at the top, KL 2
  assert claim.difference == pytest.approx(-0.03) and claim.interval == pytest.approx(
      (-0.03, -0.03))


def test_a_missing_setting_leaves_the_claim_out():
  values = {s: 0.3 for s in LSC + RAW[:2]}
  assert worlds.world_claim('bok', 'w', _bok(values), LSC, RAW) is None
  with pytest.raises(ValueError, match='claim'):
    worlds.world_claim('rlhf', 'w', [], LSC, RAW)


def test_tally_and_table_count_worlds():
  win = worlds.world_claim('bok', 'w1', _bok({**{s: 0.4 for s in LSC}, **{s: 0.3 for s in RAW}}),
                           LSC, RAW)
  loss = worlds.world_claim('bok', 'w2', _bok({**{s: 0.2 for s in LSC}, **{s: 0.3 for s in RAW}}),
                            LSC, RAW)
  assert worlds.tally([win, loss]) == {'bok': {'worlds': 2, 'holds': 1, 'above_0': 0,
                                               'below_0': 0}}
  text = worlds.render_markdown([win, loss], {'lsc_a': 'q=(0.5, 0.5)'}, {'w1': [], 'w2': ['x']})
  assert '**Holds in 1 of 2 worlds**' in text
  assert '| w2 | k=4 | q=(0.5, 0.5) | 0.200 [0.100, 0.300] | raw_w0.3 |' in text


def test_unequal_tuning_budget_is_an_error_naming_the_bindings():
  with pytest.raises(ValueError, match='lsc_objectives .2. as helpful_weights .3.'):
    worlds.run_claims('/nonexistent', lsc_objectives=['combined_lsc_sum', 'combined_lsc_sum_bok'])
  with pytest.raises(ValueError, match='raw_objective'):
    worlds.run_claims('/nonexistent', raw_objective='combined_lsc_sum')


@pytest.mark.slow  # two tiny worlds end to end (the default one copied from the shared fixture)
def test_claims_on_two_tiny_worlds(tiny_experiment, tiny_gin, tmp_path):  # pylint: disable=unused-argument
  shutil.copytree(tiny_experiment, tmp_path / 'default',
                  ignore=shutil.ignore_patterns('runs', 'checkpoints'))
  kwargs = {'worlds': [[], ['WorldConfig.seed = 1']], 'log': lambda _: None}
  claims, text = worlds.run_claims(str(tmp_path), **kwargs)
  assert [(c.claim, c.world) for c in claims] == [
      ('bok', 'default'), ('optimum', 'default'), ('bok', 'seed1'), ('optimum', 'seed1')]
  assert all(c.interval is not None for c in claims)  # per-prompt data matched the stored runs
  world = json.loads((tmp_path / 'seed1' / 'world' / 'world.json').read_text())
  assert world['config']['seed'] == 1 and world['config']['train_prompts'] == 60
  assert len(os.listdir(tmp_path / 'seed1' / 'runs')) == 12  # 2 methods x 6 settings
  assert (tmp_path / 'claims.md').read_text().strip() == text.strip()
  assert 'of 2 worlds' in text
  again, _ = worlds.run_claims(str(tmp_path), **kwargs)  # every stage done: the same table
  assert [(c.lsc.value, c.raw.value) for c in again] == [(c.lsc.value, c.raw.value)
                                                         for c in claims]
