"""Tests for lsc_align.pipeline.commands: what the stage commands hand to the pipeline."""
import argparse

import gin

from lsc_align.pipeline import commands, runs
from lsc_align.train import loop


def _ppo_args(**kwargs):
  defaults = dict(exp_dir='EXP', objective='helpful_lsc', kl_coef=0.1, alpha=None, seed=None,
                  run_dir=None, resume=False)
  return argparse.Namespace(**{**defaults, **kwargs})


def test_ppo_command_runs_in_the_gin_scope_of_its_learner(monkeypatch, clean_gin):
  """Learner-scoped bindings (rloo/run_learner.batch_size) hold for `lsc-align ppo` as in a
  sweep."""
  seen = []

  def fake_run_learner(exp_dir, objective, resume, **given):
    seen.append((gin.current_scope_str(), exp_dir, objective, resume, given))

  monkeypatch.setattr(runs, 'run_learner', fake_run_learner)
  monkeypatch.setattr(commands, '_objective', lambda args: args.objective)
  assert commands.ppo_main(_ppo_args()) == loop.EXIT_CODE_PREEMPTED  # the fake returns None
  gin.parse_config("run_learner.learner = 'rloo'")
  commands.ppo_main(_ppo_args(seed=3, run_dir='RUN'))
  assert seen == [('ppo', 'EXP', 'helpful_lsc', False, {'kl_coef': 0.1}),
                  ('rloo', 'EXP', 'helpful_lsc', False,
                   {'kl_coef': 0.1, 'seed': 3, 'run_dir': 'RUN'})]
  assert commands.bound_learner() == 'rloo'
