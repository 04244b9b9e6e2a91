"""report refuses KLs that make no sense before reading or writing anything."""
import pytest

from lsc_align.eval import report


@pytest.mark.parametrize('kwargs, message', [
    ({'matched_kl': -5.0}, 'report --matched_kl must be a finite KL >= 0, got -5.0'),
    ({'matched_kl': float('inf')}, '--matched_kl must be a finite KL >= 0, got inf'),
    ({'matched_kl': float('nan')}, '--matched_kl must be a finite KL >= 0, got nan'),
    ({'comparison_kls': [1.0, -0.1]}, 'comparison_kls must be a finite KL >= 0, got -0.1'),
])
def test_bad_kl_is_refused_before_anything_is_written(tmp_path, kwargs, message):
  out_dir = tmp_path / 'report'
  with pytest.raises(ValueError) as info:
    report.write_report(tmp_path / 'no_sweep_here', out_dir, **kwargs)
  assert message in str(info.value)
  assert not out_dir.exists()
