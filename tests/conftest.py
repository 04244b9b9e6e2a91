"""Test session set-up: 8 fake CPU devices, so sharding is tested against 1 device.

XLA_FLAGS must be set before jax is first imported; conftest.py is imported by pytest before any
test module, so every test sees 8 CPU devices and builds 1-device meshes from jax.devices()[:1].
"""
import os

os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import pathlib  # pylint: disable=g-import-not-at-top

import pytest  # pylint: disable=g-import-not-at-top

REPO = pathlib.Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / 'shared' / 'data'


@pytest.fixture(scope='session')
def shared_data() -> pathlib.Path:
  """../shared/data, read in place; tests that need it are skipped only if it is truly absent."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f'{SHARED_DATA} not found (it sits beside the repository in CI)')
  return SHARED_DATA
