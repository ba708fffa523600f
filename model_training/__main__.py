"""`python -m model_training` and `accelerate launch -m model_training`."""

import sys

from model_training.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
