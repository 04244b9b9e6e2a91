"""Tests for lsc_align.eval.results / plots / report: schema, seed aggregation, report files."""
import hashlib
import json
import math

import numpy as np
import pytest
from scipy import stats

from lsc_align.eval import plots, report, results

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def _run(method, objective, transform, seed, kl, win, point, samples=True, **extra):
  """A synthetic eval result whose win rates rise with KL."""
  # A seed from the text itself: hash() of a str differs from process to process.
  key = f'{objective}|{method}|{point}|{seed}'.encode()
  rng = np.random.default_rng(int.from_bytes(hashlib.sha256(key).digest()[:8], 'big'))
  row = {
      'run': f'{method}-{objective}-{point}-s{seed}', 'method': method, 'objective': objective,
      'transform': transform, 'gamma': None if method == 'bok' else point,
      'k': point if method == 'bok' else None, 'seed': seed, 'kl': kl,
      'kl_ci': [kl * 0.9, kl * 1.1],
      'win_rate': {'helpful': win, 'harmless': 1 - win},
      'win_rate_ci': {'helpful': [win - 0.02, win + 0.02], 'harmless': [0.97 - win, 1.03 - win]},
      'and_win_rate': win / 2, 'and_win_rate_ci': [win / 2 - 0.01, win / 2 + 0.01],
      'pairwise_win_rate': {'helpful': min(win + 0.05, 1.0)},
      'shortcut_rate': {'list': min(kl / 20, 1.0), 'referral': min(kl / 40, 1.0)},
      'proxy_reward': {'helpful': kl}, 'gold_reward': {'helpful': math.sqrt(kl)},
      'reward_samples': {'helpful': (rng.normal(win, 1, 64)).tolist(),
                         'harmless': (rng.normal(1 - win, 1, 64)).tolist()} if samples else {},
  }
  row.update(extra)
  return row


def _sweep(samples=True):
  rows = []
  slopes = {'helpful_raw': 0.05, 'helpful_lsc': 0.08, 'helpful_centered': 0.05,
            'helpful_log_sigmoid': 0.06, 'combined_lsc_sum': 0.07, 'combined_raw_sum_w0.3': 0.04}
  for objective, slope in slopes.items():
    transform = objective.split('_', 1)[1].replace('_sum', '').split('_w')[0]
    transform = 'lsc' if 'lsc' in transform else transform
    for gamma, kl in [(0.2, 1.0), (0.1, 3.0), (0.05, 6.0)]:
      for seed in (0, 1):
        rows.append(_run('ppo', objective, transform, seed, kl + 0.1 * seed,
                         0.3 + slope * kl + 0.01 * seed, gamma, samples))
      rows.append(_run('optimum', objective, transform, 0, kl, 0.32 + slope * kl, gamma, samples))
    for k, kl in [(1, 0.0), (4, math.log(4) - 0.75), (16, math.log(16) - 15 / 16)]:
      rows.append(_run('bok', objective, transform, 0, kl, 0.3 + slope * kl, k, samples))
  return rows


def _all_figures_written(out_dir, text):
  for file_name, _, _, _ in report.FIGURES:
    data = (out_dir / file_name).read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000, file_name
    assert f']({file_name})' in text, file_name


def test_write_report_from_sweep_dir(tmp_path):
  sweep = tmp_path / 'sweep'
  rows = _sweep()
  for row in rows:
    (sweep / row['run']).mkdir(parents=True)
    (sweep / row['run'] / 'eval_results.json').write_text(json.dumps(row))
  path = report.write_report(str(sweep), tmp_path / 'out')
  text = (tmp_path / 'out' / 'report.md').read_text()
  assert path.endswith('report.md')
  _all_figures_written(tmp_path / 'out', text)
  assert 'skipped' not in text
  for row in rows:
    assert row['run'] in text
  # Headline: helpful_lsc against helpful_raw at the top of the common PPO KL range (6.05).
  line = next(l for l in text.splitlines() if l.startswith('| ppo | 6.050 | helpful_lsc | '
                                                           'helpful_raw |'))
  # (0.08 − 0.05) · 6: win rates were drawn at KL 6 for both seeds.
  assert '| 0.785 vs 0.605 (+0.180) |' in line


def test_write_report_with_missing_data(tmp_path):
  rows = [r for r in _sweep(samples=False)
          if r['method'] == 'ppo' and r['objective'] in ('helpful_raw', 'helpful_lsc')]
  for row in rows:
    row.pop('gold_reward')
    row['pairwise_win_rate'] = None
  report.write_report(rows, tmp_path)
  text = (tmp_path / 'report.md').read_text()
  drawn = {'win_rate_vs_kl.png', 'shortcut_rate_vs_kl.png'}
  for file_name, _, _, _ in report.FIGURES:
    if file_name in drawn:
      assert (tmp_path / file_name).read_bytes().startswith(PNG_MAGIC)
      assert f']({file_name})' in text
    else:
      assert not (tmp_path / file_name).exists()
      assert f'Figure `{file_name}` skipped: ' in text
  assert 'no run with transform "centered" or "log_sigmoid"' in text
  assert 'no run has reward_samples' in text
  assert 'No gap computed' in text


def test_run_result_round_trip_and_validation(tmp_path):
  row = _sweep()[0]
  row['notes'] = 'kept'
  result = results.RunResult.from_json(row)
  assert results.RunResult.from_json(result.to_json()) == result
  assert result.to_json()['notes'] == 'kept'
  assert result.metric_ci('win_rate/helpful') == tuple(row['win_rate_ci']['helpful'])
  path = tmp_path / 'run' / 'eval_results.json'
  results.write_run_result(path, result)
  assert results.load_run_results(str(path)) == [result]

  broken = dict(row)
  del broken['kl']
  path.write_text(json.dumps(broken))
  with pytest.raises(ValueError, match=rf"{path}.*missing required field 'kl'"):
    results.load_run_results(str(tmp_path))
  with pytest.raises(ValueError, match='"k"'):
    results.RunResult.from_json(_sweep()[0] | {'method': 'bok'}, 'x.json')
  with pytest.raises(ValueError, match=r"x.json.*'win_rate.helpful'"):
    results.RunResult.from_json(row | {'win_rate': {'helpful': 1.5}}, 'x.json')
  with pytest.raises(ValueError, match='reward_samples.helpful'):
    results.RunResult.from_json(row | {'reward_samples': {'helpful': [0.0, float('nan')]}})
  with pytest.raises(ValueError, match='share the run name'):
    results.load_run_results([row, row])
  lines = tmp_path / 'sweep.jsonl'
  lines.write_text(json.dumps(row) + '\n' + json.dumps(row | {'run': 'b', 'seed': None}) + '\n')
  with pytest.raises(ValueError, match=rf"{lines}:2.*'seed'"):
    results.load_run_results(str(lines))


def test_seed_aggregation_mean_and_t_interval():
  rows = [_run('ppo', 'helpful_lsc', 'lsc', seed, 2.0 + seed, 0.5 + 0.1 * seed, 0.1)
          for seed in range(3)]
  rows.append(_run('ppo', 'helpful_lsc', 'lsc', 0, 5.0, 0.9, 0.01))
  points = results.aggregate_seeds(results.load_run_results(rows))
  assert [p.seeds for p in points] == [(0, 1, 2), (0,)]
  wins = np.array([0.5, 0.6, 0.7])
  half = stats.t.ppf(0.975, 2) * wins.std(ddof=1) / math.sqrt(3)
  assert points[0].values['win_rate/helpful'] == pytest.approx(0.6)
  assert points[0].cis['win_rate/helpful'] == pytest.approx((0.6 - half, 0.6 + half))
  assert points[0].kl == pytest.approx(3.0)
  assert points[1].cis['win_rate/helpful'] == pytest.approx((0.88, 0.92))  # single seed: own CI


def test_matched_kl_comparisons_interpolate_each_frontier():
  rows = [_run('ppo', 'helpful_raw', 'raw', 0, kl, win, g)
          for g, kl, win in [(0.3, 0.0, 0.3), (0.2, 2.0, 0.5), (0.1, 4.0, 0.6)]]
  rows += [_run('ppo', 'helpful_lsc', 'lsc', 0, kl, win, g)
           for g, kl, win in [(0.3, 1.0, 0.5), (0.1, 5.0, 0.9)]]
  points = results.aggregate_seeds(results.load_run_results(rows))
  by_key = {(c.kl, c.metric): c for c in report.matched_kl_comparisons(points)}
  assert set(k[0] for k in by_key) == {2.5, 4.0}  # middle and top of the overlap [1, 4]
  at_top = by_key[(4.0, 'win_rate/helpful')]
  assert (at_top.objective, at_top.baseline) == ('helpful_lsc', 'helpful_raw')
  assert at_top.value == pytest.approx(0.8) and at_top.baseline_value == pytest.approx(0.6)
  assert at_top.difference == pytest.approx(0.2)
  assert by_key[(2.5, 'win_rate/helpful')].baseline_value == pytest.approx(0.525)
  explicit = report.matched_kl_comparisons(points, kls=[0.5, 3.0, 9.0])
  assert {c.kl for c in explicit} == {3.0}  # 0.5 and 9.0 lie outside a frontier


def test_matched_runs_pick_nearest_kl():
  rows = _sweep()
  points = results.aggregate_seeds(results.load_run_results(rows))
  chosen, target = plots.matched_runs(points, ['helpful'], 'ppo', target_kl=2.9)
  assert target == 2.9
  assert {run.kl for run in chosen.values()} == {3.0}
  chosen, target = plots.matched_runs(points, ['helpful'], 'bok', target_kl=None)
  assert target == pytest.approx(math.log(16) - 15 / 16)


def test_optimum_gaps_skip_metrics_the_optimum_lacks():
  rows = [r for r in _sweep() if r['objective'] == 'helpful_lsc' and r['method'] != 'bok']
  for row in rows:
    if row['method'] == 'optimum':
      row['pairwise_win_rate'] = None
  gaps = report.optimum_gaps(results.aggregate_seeds(results.load_run_results(rows)))
  assert gaps and not any(g['metric'].startswith('pairwise') for g in gaps)
  first = next(g for g in gaps if g['metric'] == 'win_rate/helpful' and g['kl'] == 3.05)
  assert first['ppo'] == pytest.approx(0.545)
  assert first['optimum'] == pytest.approx(0.32 + 0.08 * 3.05)  # linear optimum frontier


def test_report_compares_rloo_runs_on_their_own_frontier(tmp_path):
  """RLOO is a method of its own: its own matched-KL rows, paired rows and optimum gaps."""
  rows = [r for r in _sweep() if r['objective'] in ('helpful_raw', 'helpful_lsc')]
  rloo = [dict(r, method='rloo', run=r['run'].replace('ppo-', 'rloo-'),
               win_rate={**r['win_rate'], 'helpful': r['win_rate']['helpful'] - 0.1})
          for r in rows if r['method'] == 'ppo']
  report.write_report(rows + rloo, tmp_path)
  text = (tmp_path / 'report.md').read_text()
  ppo_line = next(l for l in text.splitlines() if l.startswith('| ppo | 6.050 | helpful_lsc |'))
  rloo_line = next(l for l in text.splitlines() if l.startswith('| rloo | 6.050 | helpful_lsc |'))
  assert '| 0.785 vs 0.605 (+0.180) |' in ppo_line
  assert '| 0.685 vs 0.505 (+0.180) |' in rloo_line  # RLOO's own values, not PPO's
  assert '## Against raw rewards, seed by seed at matched KL' in text
  paired_rows = [l for l in text.splitlines() if l.startswith('| rloo | win_rate/helpful |')]
  assert paired_rows and all('| helpful_lsc | helpful_raw | 2 |' in l for l in paired_rows)
  gaps = [l for l in text.splitlines() if l.startswith('| rloo | helpful_lsc | γ=')]
  assert gaps, 'RLOO points are compared with the optimum'
  with pytest.raises(ValueError, match='needs field "gamma"'):
    results.RunResult.from_json(dict(rloo[0], gamma=None))
