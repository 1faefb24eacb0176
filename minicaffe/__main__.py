"""``python -m minicaffe ...``: the ``minicaffe`` command (see minicaffe/cli.py)."""
import sys

from .cli import main

if __name__ == '__main__':
    sys.exit(main())
