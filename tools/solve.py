#!/usr/bin/env python
"""Caffe's `caffe train`: train a net with a solver -- the same as `minicaffe train` (see minicaffe/commands/cli.py).

Runs from a checkout without installation: `python tools/solve.py --help`.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minicaffe.commands import cli  # noqa: E402

if __name__ == '__main__':
    sys.exit(cli.main(['train'] + sys.argv[1:]))
