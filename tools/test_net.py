#!/usr/bin/env python
"""Caffe's `caffe test`: score a trained net -- the same as `minicaffe test` (see minicaffe/commands/cli.py).

Runs from a checkout without installation: `python tools/test_net.py --help`.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minicaffe.commands import cli  # noqa: E402

if __name__ == '__main__':
    sys.exit(cli.main(['test'] + sys.argv[1:]))
