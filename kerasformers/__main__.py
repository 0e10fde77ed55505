"""`python -m kerasformers ...`: the `kerasformers` command line."""

import sys

from kerasformers.cli import main

if __name__ == "__main__":
    sys.exit(main())
