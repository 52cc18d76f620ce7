import sys

from sim.sweep.cli import main

sys.exit(main())
