#!/usr/bin/env python
"""Caffe's python/draw_net.py, as `minicaffe draw NET OUT`: see minicaffe/commands/draw_net.py."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minicaffe.commands.draw_net import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
