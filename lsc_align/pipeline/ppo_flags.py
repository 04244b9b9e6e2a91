"""Command-line flags of `lsc-align ppo` that become gin bindings (standard library only).

`--learner rloo` appends the binding `run_learner.learner = 'rloo'` to the command's --gin_param
list, so the flag and a --gin_param binding are the same thing and the run's operative config
records it.
"""
from __future__ import annotations

import argparse
from typing import Any, Sequence

from lsc_align.conventions import LEARNERS


class GinBindingAction(argparse.Action):
  """Stores the value and appends `<binding> = '<value>'` to namespace.gin_param."""

  def __init__(self, option_strings: Sequence[str], dest: str, binding: str = '',
               **kwargs: Any) -> None:
    self.binding = binding
    super().__init__(option_strings, dest, **kwargs)

  def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
               values: Any, option_string: str | None = None) -> None:
    setattr(namespace, self.dest, values)
    params = list(getattr(namespace, 'gin_param', None) or [])
    params.append(f'{self.binding} = {values!r}')
    namespace.gin_param = params


LEARNER_FLAG = ('--learner', {
    'action': GinBindingAction, 'binding': 'run_learner.learner', 'choices': LEARNERS,
    'default': None,
    'help': "ppo (clipped PPO with a critic) or rloo (k samples per prompt, leave-one-out "
            "baseline, no critic; k = PPOHyperparams.samples_per_prompt, at least 2); "
            "the same as --gin_param \"run_learner.learner = 'rloo'\""})
