"""``python -m minicaffe ...``: the ``minicaffe`` command (see minicaffe/commands/cli.py)."""
import sys

from .commands.cli import main

if __name__ == '__main__':
    sys.exit(main())
