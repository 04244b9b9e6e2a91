"""lsc_align: aligning language models with transformed and combined rewards."""
import pathlib

import setuptools

_HERE = pathlib.Path(__file__).parent


def _requirements(name: str) -> list[str]:
  lines = (_HERE / name).read_text().splitlines()
  return [l.strip() for l in lines if l.strip() and not l.startswith(('#', '-r'))]


setuptools.setup(
    name='lsc_align',
    version='0.1.0',
    description='Aligning language models with transformed and combined rewards (LSC).',
    long_description=(_HERE / 'README.md').read_text(),
    long_description_content_type='text/markdown',
    python_requires='>=3.11',
    packages=setuptools.find_packages(include=['lsc_align', 'lsc_align.*', 'launch', 'launch.*']),
    package_data={'lsc_align': ['configs/**/*.gin']},
    install_requires=_requirements('requirements.txt'),
    extras_require={'test': _requirements('requirements-test.txt')},
    entry_points={'console_scripts': ['lsc-align=lsc_align.cli:main']},
)
