"""`python -m model_training.judge`."""

import sys

from model_training.judge.cli import main

if __name__ == "__main__":
    sys.exit(main())
