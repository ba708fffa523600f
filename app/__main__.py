"""`python -m app`: start the service, like `storydiff serve`."""

import sys

from app.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
