"""The plateau rule, and chunked training that stops on it and resumes to the same decision."""
import dataclasses
import enum

import pytest

from lsc_align.align import convergence


def test_plateaued_by_hand():
  # gain so far 1.0; tolerance 0.01: the last 2 checks must beat the earlier best by 0.01.
  assert not convergence.plateaued([0.0, 0.5, 0.9, 1.0], window=2, tolerance=0.01)
  assert convergence.plateaued([0.0, 0.5, 1.0, 1.005, 0.99], window=2, tolerance=0.01)
  assert not convergence.plateaued([0.0, 1.0, 1.0], window=2, tolerance=0.01)  # too few checks


class _Status(enum.Enum):
  COMPLETED = 'completed'


@dataclasses.dataclass
class _Result:
  state: int
  status: _Status = _Status.COMPLETED


def _curve(step):  # J rises then flattens at 1.0 after step 60
  return min(step, 60) / 60.0


def test_run_until_plateau_stops_and_resumes(tmp_path):
  rule = convergence.PlateauRule(check_every=20, window=2, tolerance=0.01, max_steps=1000)
  calls = []

  def run_chunk(state, total, resume):
    calls.append((total, resume))
    return _Result(state=total)

  path = str(tmp_path / 'history.json')
  result, history = convergence.run_until_plateau(
      0, run_chunk, lambda s: {'objective': _curve(s)}, rule, path, resume=False)
  # J at 0, 20, 40, 60, 80, 100: the checks at 80 and 100 add nothing over 60.
  assert [h['step'] for h in history] == [0, 20, 40, 60, 80, 100]
  assert result.state == 100 and calls[0] == (20, False) and calls[1] == (40, True)
  calls.clear()
  _, again = convergence.run_until_plateau(0, run_chunk, lambda s: {'objective': _curve(s)},
                                           rule, path, resume=True)
  assert again == history and calls == [(100, True)]  # nothing new trained
  with pytest.raises(ValueError, match='PlateauRule'):
    convergence.PlateauRule(check_every=0)
