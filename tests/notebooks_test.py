"""The Colab notebooks run headless on a tiny experiment; lsc_align.eval.inspect loads run dirs."""
import json
import os
import pathlib

import nbformat
import numpy as np
import pytest

from lsc_align.eval import inspect as run_inspect
from lsc_align.eval import results as results_lib

pytestmark = pytest.mark.slow  # trains models or runs whole commands

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / 'notebooks'
NOTEBOOK_NAMES = ('inspect_run.ipynb', 'compare_sweep.ipynb')
CELL_TIMEOUT_S = 120

_RUNS: dict[str, str] = {}  # the runs this module adds to the shared experiment, made once


@pytest.fixture
def nb_runs(tiny_experiment, tiny_ppo_run, tiny_gin):  # pylint: disable=unused-argument
  """Best-of-k and two optimum runs under EXP/runs/nb_*, and the shared PPO run."""
  if not _RUNS:
    from lsc_align.pipeline import experiment, runs  # pylint: disable=g-import-not-at-top
    runs_dir = os.path.join(tiny_experiment, 'runs')
    runs.run_best_of_k(tiny_experiment, experiment.load_objective('combined_lsc_sum_bok'),
                       ks=(1, 2, 4), name='nb_bok_combined_lsc_sum_bok')
    runs.run_optimum(tiny_experiment, experiment.load_objective('combined_raw_sum'),
                     kl_coefs=(0.1, 1.0), name='nb_optimum_combined_raw_sum')
    # The PPO objective's own optimum, so the PPO-against-optimum section has data.
    runs.run_optimum(tiny_experiment, experiment.load_objective('combined_lsc_sum'),
                     kl_coefs=(0.03, 0.3, 10.0), name='nb_optimum_combined_lsc_sum')
    ppo_dir, result = tiny_ppo_run
    assert result is not None and result.run == os.path.basename(ppo_dir)
    _RUNS.update(exp=tiny_experiment, ppo=ppo_dir,
                 bok=os.path.join(runs_dir, 'nb_bok_combined_lsc_sum_bok'),
                 optimum=os.path.join(runs_dir, 'nb_optimum_combined_raw_sum'))
  return dict(_RUNS)


def _execute(name: str, tmp_path: pathlib.Path, monkeypatch, **env: str):
  """Runs the notebook in a fresh python3 kernel with env set; returns the executed notebook."""
  from nbclient import NotebookClient  # pylint: disable=g-import-not-at-top
  for key, value in env.items():
    monkeypatch.setenv(key, value)
  monkeypatch.delenv('MPLBACKEND', raising=False)  # the kernel then picks the inline backend
  nb = nbformat.read(NOTEBOOKS / name, as_version=4)
  NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name='python3',
                 resources={'metadata': {'path': str(tmp_path)}}).execute()
  return nb


def _outputs(nb, kind: str) -> list[str]:
  """Every output of a kind ('image/png', 'text/markdown', 'stream') as text, in cell order."""
  out = []
  for cell in nb.cells:
    for output in cell.get('outputs', []):
      if kind == 'stream' and output.output_type == 'stream':
        out.append(output.text)
      elif kind in output.get('data', {}):
        out.append(output.data[kind])
  return out


# ---------------------------------------------------------------- committed notebooks


@pytest.mark.parametrize('name', NOTEBOOK_NAMES)
def test_committed_notebook_is_clean_and_colab_ready(name):
  nb = nbformat.read(NOTEBOOKS / name, as_version=4)
  nbformat.validate(nb)
  assert nb.nbformat == 4 and nb.metadata.kernelspec.name == 'python3'
  code = [cell for cell in nb.cells if cell.cell_type == 'code']
  assert all(not cell.outputs and cell.execution_count is None for cell in code)
  install = code[0].source
  assert 'import lsc_align' in install and 'except ImportError' in install
  assert "[sys.executable, '-m', 'pip', 'install'" in install and 'LSC_ALIGN_SOURCE' in install
  compile(install, 'install cell', 'exec')  # plain Python: no shell escapes
  variable = {'inspect_run.ipynb': 'LSC_ALIGN_RUN_DIR',
              'compare_sweep.ipynb': 'LSC_ALIGN_EXP_DIR'}[name]
  assert f"os.environ.get('{variable}'" in code[1].source
  assert not any(word in cell.source for cell in code
                 for word in ('run_learner', 'run_best_of_k', 'train_', 'tensorflow'))


# ---------------------------------------------------------------- inspect.py on synthetic files


def _write_lines(path: pathlib.Path, rows) -> None:
  path.write_text(''.join(json.dumps(r) + '\n' for r in rows))


def test_training_curves_sort_steps_and_fill_missing_metrics(tmp_path):
  _write_lines(tmp_path / 'metrics.jsonl', [
      {'step': 4, 'wall_time': 2.0, 'kl': 0.5, 'utility': -1.0, 'clip_fraction': 0.1},
      {'step': 2, 'wall_time': 1.0, 'kl': 0.2, 'reward_helpful': 0.3, 'time/rollout_s': 1.5}])
  curves = run_inspect.training_curves(tmp_path)
  np.testing.assert_array_equal(curves['step'], [2, 4])
  np.testing.assert_allclose(curves['kl'], [0.2, 0.5])
  assert np.isnan(curves['utility'][0]) and curves['utility'][1] == -1.0
  assert run_inspect.curve_panels(curves) == [
      ('KL(π ‖ π0) per sequence', ['kl']), ('utility and objective', ['utility']),
      ('proxy reward per property', ['reward_helpful']), ('clip fraction', ['clip_fraction']),
      ('seconds per iteration', ['time/rollout_s'])]
  assert run_inspect.training_curves(tmp_path / 'absent') == {}


def test_samples_latest_step_and_bad_lines(tmp_path):
  rows = [{'step': 2, 'prompt': 'a', 'response': 'x'}, {'step': 4, 'prompt': 'b', 'response': 'y'},
          {'step': 4, 'prompt': 'c', 'response': 'z'}]
  _write_lines(tmp_path / 'samples.jsonl', rows)
  assert run_inspect.read_samples(tmp_path) == rows
  assert [r['prompt'] for r in run_inspect.latest_samples(rows)] == ['b', 'c']
  assert run_inspect.latest_samples(rows, limit=1) == [rows[1]]
  assert run_inspect.latest_samples([]) == []
  (tmp_path / 'samples.jsonl').write_text('{"step": 1}\nnot json\n')
  with pytest.raises(ValueError, match='samples.jsonl:2'):
    run_inspect.read_samples(tmp_path)


def _result(run: str, method: str = 'bok', **fields) -> dict:
  base = dict(run=run, method=method, objective='combined_lsc_sum', transform='lsc', seed=0,
              kl=0.5, win_rate={'helpful': 0.4, 'harmless': 0.6}, and_win_rate=0.3,
              reward_samples={'helpful': [0.1, 0.2], 'harmless': []}, extra={})
  base.update({'k': 2} if method == 'bok' else {'gamma': 0.1})
  base.update(fields)
  return base


def test_load_run_and_headline_of_a_results_only_directory(tmp_path):
  run_dir = tmp_path / 'runs' / 'bok_x'
  run_dir.mkdir(parents=True)
  _write_lines(run_dir / 'eval_results.jsonl', [_result('bok_x_k2'), _result('bok_x_k4', k=4)])
  run = run_inspect.load_run(run_dir)
  assert run.name == 'bok_x' and run.curves == {} and run.samples == [] and run.info == {}
  assert [r.k for r in run.results] == [2, 4]
  row = run_inspect.headline_row(results_lib.RunResult.from_json(
      _result('p', method='ppo', utility=-0.7, objective_fraction_of_optimum=None)))
  assert row['point'] == 'γ=0.1' and row['and_win_rate'] == 0.3 and row['utility'] == -0.7
  assert 'objective_fraction_of_optimum' not in row  # null extras are left out
  names = [k for k in row if '/' in k or k in ('kl', 'and_win_rate')]
  assert names == ['kl', 'win_rate/helpful', 'win_rate/harmless', 'and_win_rate']
  arrays = run_inspect.reward_sample_arrays(run.results[0])
  assert list(arrays) == ['helpful'] and arrays['helpful'].dtype == np.float64
  assert [r.run for r in run_inspect.load_sweep(tmp_path)] == ['bok_x_k2', 'bok_x_k4']
  assert len(run_inspect.load_sweep(tmp_path / 'runs')) == 2  # a directory without runs/
  with pytest.raises(FileNotFoundError, match='does not exist'):
    run_inspect.load_run(tmp_path / 'absent')


def test_grouping_and_markdown_table():
  results = [results_lib.RunResult.from_json(r) for r in (
      _result('b1', k=1, kl=0.0), _result('b4', k=4, kl=0.6), _result('o', method='optimum'),
      _result('p', method='ppo', objective='helpful_lsc', and_win_rate=None))]
  points = results_lib.aggregate_seeds(results)
  groups = run_inspect.points_by_method_objective(points)
  assert list(groups) == [('ppo', 'helpful_lsc'), ('bok', 'combined_lsc_sum'),
                          ('optimum', 'combined_lsc_sum')]
  assert [p.k for p in groups[('bok', 'combined_lsc_sum')]] == [1, 4]
  assert {p.objective for p in run_inspect.combined_points(points)} == {'combined_lsc_sum'}
  assert run_inspect.objectives_with_ppo_and_optimum(points) == []
  row = run_inspect.point_row(groups[('bok', 'combined_lsc_sum')][1])
  assert row['point'] == 'k=4' and row['seeds'] == '0' and row['kl'] == 0.6
  table = run_inspect.markdown_table([{'a': 1, 'b': 0.25, 'c': '\n\nx|y\n\nz'}, {'a': None}])
  assert table.splitlines() == ['| a | b | c |', '|---|---|---|', '| 1 | 0.250 | x\\|y ⏎ z |',
                                '| – | – | – |']
  assert run_inspect.sort_properties(['reward_harmless', 'a', 'reward_helpful']) == [
      'reward_helpful', 'reward_harmless', 'a']


# ---------------------------------------------------------------- real runs and the notebooks


def test_inspect_reads_the_pipeline_run_directories(nb_runs):
  ppo = run_inspect.load_run(nb_runs['ppo'])
  for name in ('kl', 'utility', 'reward_helpful', 'reward_harmless', 'entropy',
               'clip_fraction', 'value_loss', 'approx_kl'):
    assert name in ppo.curves and np.all(np.isfinite(ppo.curves[name])), name
  assert list(ppo.curves['step']) == sorted(set(ppo.curves['step'])) and len(ppo.curves['step'])
  titles = [title for title, _ in run_inspect.curve_panels(ppo.curves)]
  assert titles[:4] == ['KL(π ‖ π0) per sequence', 'utility and objective',
                        'proxy reward per property', 'entropy']
  latest = run_inspect.latest_samples(ppo.samples)
  assert latest and {r['step'] for r in latest} == {max(r['step'] for r in ppo.samples)}
  assert ppo.info['kl_coef'] == 0.05 and ppo.info['objective']['name'] == 'combined_lsc_sum'
  [result] = ppo.results
  assert result.method == 'ppo' and result.run == ppo.name
  assert set(run_inspect.reward_sample_arrays(result)) == {'helpful', 'harmless'}
  row = run_inspect.headline_row(result)
  assert {'kl', 'win_rate/helpful', 'and_win_rate', 'utility'} <= set(row)
  bok = run_inspect.load_run(nb_runs['bok'])
  assert bok.curves == {} and bok.samples == [] and [r.k for r in bok.results] == [1, 2, 4]
  assert len(run_inspect.load_run(nb_runs['optimum']).results) == 2


def test_inspect_run_notebook_on_a_ppo_run(nb_runs, tmp_path, monkeypatch):
  nb = _execute('inspect_run.ipynb', tmp_path, monkeypatch, LSC_ALIGN_RUN_DIR=nb_runs['ppo'])
  assert len(_outputs(nb, 'image/png')) == 2  # training curves, reward histograms
  tables = '\n'.join(_outputs(nb, 'text/markdown'))
  assert '| metric | value |' in tables and 'combined_lsc_sum' in tables
  assert 'and_win_rate' in tables and '| step | prompt | response |' in tables
  assert 'ppo_combined_lsc_sum_g0.05_s0: ' in ''.join(_outputs(nb, 'stream'))


def test_inspect_run_notebook_on_a_best_of_k_run(nb_runs, tmp_path, monkeypatch):
  nb = _execute('inspect_run.ipynb', tmp_path, monkeypatch, LSC_ALIGN_RUN_DIR=nb_runs['bok'])
  assert len(_outputs(nb, 'image/png')) == 1  # reward histograms only
  assert 'k=4' in '\n'.join(_outputs(nb, 'text/markdown'))
  streams = ''.join(_outputs(nb, 'stream'))
  assert 'has no metrics.jsonl' in streams and 'has no samples.jsonl' in streams


def test_compare_sweep_notebook(nb_runs, tmp_path, monkeypatch):
  figures = tmp_path / 'figures'
  nb = _execute('compare_sweep.ipynb', tmp_path, monkeypatch, LSC_ALIGN_EXP_DIR=nb_runs['exp'],
                LSC_ALIGN_FIGURE_DIR=str(figures))
  # Other tests may add runs to the shared experiment: check for ours, not exact counts.
  tables = '\n'.join(_outputs(nb, 'text/markdown'))
  for heading in ('### bok: combined_lsc_sum_bok', '### optimum: combined_raw_sum',
                  '### ppo: combined_lsc_sum', '### optimum: combined_lsc_sum'):
    assert heading in tables, heading
  streams = ''.join(_outputs(nb, 'stream'))
  assert "objectives with PPO and optimum runs: ['combined_lsc_sum'" in streams
  # A 4-step PPO run's sampled KL may fall outside the optimum's KL range: then no gap rows.
  assert ('| objective | label | kl | metric | ppo | optimum | gap |' in tables
          or 'no PPO point lies inside the KL range' in streams)
  assert len(_outputs(nb, 'image/png')) == 5
  assert {'win_rate_vs_kl.png', 'and_win_rate_vs_kl.png', 'shortcut_rate_vs_kl.png',
          'reward_vs_kl.png', 'optimum_frontier.png'} <= set(os.listdir(figures))
