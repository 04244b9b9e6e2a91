"""TensorFlow imported once, without its native start-up lines on stderr.

TensorFlow's C++ libraries log a few lines (oneDNN, CUDA stubs) when they load, before any
logging set-up can reach them, so a one-line CLI error would come out buried. Modules that use
seqio or tfds call `import_quietly()` before importing them; LSC_ALIGN_DEBUG=1 keeps the lines.
"""
from __future__ import annotations

import os
import sys


def import_quietly() -> None:
  """Imports tensorflow with file descriptor 2 pointed at /dev/null for the duration."""
  if 'tensorflow' in sys.modules or os.environ.get('LSC_ALIGN_DEBUG', '') not in ('', '0'):
    return
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  sys.stderr.flush()
  saved = os.dup(2)
  try:
    with open(os.devnull, 'wb') as devnull:
      os.dup2(devnull.fileno(), 2)
      import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
      import tensorflow_text  # pylint: disable=g-import-not-at-top,unused-import  (seqio's ops)
  except ImportError:
    pass  # the caller's own import reports it, with stderr back
  finally:
    os.dup2(saved, 2)
    os.close(saved)
