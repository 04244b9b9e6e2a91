"""lsc_align: aligning language models with transformed and combined rewards."""
import pathlib

import setuptools

_HERE = pathlib.Path(__file__).parent


# Every gin file under configs/, relative to it (what the wheel must carry).
CONFIG_FILES = sorted(str(p.relative_to(_HERE / 'configs'))
                      for p in (_HERE / 'configs').rglob('*.gin'))


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
    packages=[*setuptools.find_packages(include=['lsc_align', 'lsc_align.*', 'launch', 'launch.*']),
              'lsc_align.configs'],
    # The gin configs live at the top (configs/, where people edit them) and ship inside the
    # package as lsc_align.configs; lsc_align.gin_utils reads them through importlib.resources.
    package_dir={'lsc_align.configs': 'configs'},
    package_data={'lsc_align.configs': CONFIG_FILES},
    install_requires=_requirements('requirements.txt'),
    extras_require={'test': _requirements('requirements-test.txt')},
    entry_points={'console_scripts': ['lsc-align=lsc_align.cli:main'],
                  # Commands added to lsc-align from above the library (lsc_align.cli).
                  'lsc_align.commands': ['launch=launch.command:COMMAND']},
)
