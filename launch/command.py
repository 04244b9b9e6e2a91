"""`lsc-align launch`: the TPU launcher as a command of the lsc-align CLI.

setup.py names COMMAND in the `lsc_align.commands` entry point group, which the CLI reads
(lsc_align.cli.plugin_commands): the launcher depends on the CLI, never the other way round.
"""
from launch import tpu
from lsc_align import cli

COMMAND = cli.Command(tpu.main,
                      'create / install / run / delete TPU VMs; sweeps per point or sequential',
                      tpu.FLAGS)
