"""RLOO: the leave-one-out baseline by hand, the learner's choice by name and flag."""
import numpy as np
import pytest

from lsc_align import cli, conventions
from lsc_align.align import learners, ppo, rloo
from lsc_align.pipeline import ppo_flags


def test_leave_one_out_advantages_by_hand():
  returns = np.array([1.0, 2.0, 6.0, -1.0, -1.0, 5.0])  # two prompts, k = 3
  adv = np.asarray(rloo.leave_one_out_advantages(returns, 3))
  # prompt 0: 1 − (2+6)/2 = −3, 2 − (1+6)/2 = −1.5, 6 − (1+2)/2 = 4.5
  # prompt 1: −1 − 2 = −3, −1 − 2 = −3, 5 − (−1) = 6
  np.testing.assert_allclose(adv, [-3.0, -1.5, 4.5, -3.0, -3.0, 6.0], rtol=1e-6)
  np.testing.assert_allclose(adv.reshape(2, 3).sum(1), 0.0, atol=1e-6)
  with pytest.raises(ValueError, match='at least 2'):
    rloo.leave_one_out_advantages(returns, 1)


def test_iteration_fn_by_name():
  assert learners.iteration_fn('ppo') is ppo.ppo_iteration
  assert learners.iteration_fn('rloo') is rloo.rloo_iteration
  with pytest.raises(ValueError, match='learner'):
    learners.iteration_fn('grpo')
  assert tuple(learners.ITERATIONS) == conventions.LEARNERS == ppo_flags.LEARNERS


def test_learner_flag_is_a_gin_binding():
  args = cli.build_parser().parse_args(
      ['ppo', '--exp_dir', 'e', '--objective', 'o', '--learner', 'rloo',
       '--gin_param', 'run_learner.steps = 3'])
  assert args.gin_param == ["run_learner.learner = 'rloo'", 'run_learner.steps = 3']
  args = cli.build_parser().parse_args(['ppo', '--exp_dir', 'e', '--objective', 'o'])
  assert args.gin_param == []
  with pytest.raises(SystemExit):
    cli.build_parser().parse_args(['ppo', '--exp_dir', 'e', '--objective', 'o',
                                   '--learner', 'grpo'])
