"""`python -m generalist_trainer`: the command line (generalist_trainer/trainer/cli.py)."""

import sys

from .trainer.cli import main

sys.exit(main())
