"""lsc_align: aligning language models with transformed and combined rewards.

`import lsc_align` is cheap: it imports neither TensorFlow nor the training stack. Import the
sub-packages you need (`from lsc_align.rewards import transforms`).
"""

__version__ = '0.1.0'
