import sys

from sim.command import run_command
from sim.sweep.cli import main

sys.exit(run_command(main, "python -m sim.sweep"))
