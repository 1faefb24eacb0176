#!/usr/bin/env python
"""Caffe's tools/compute_image_mean, as `minicaffe compute-mean`: see minicaffe/commands/lmdb_tools.py."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minicaffe.commands.lmdb_tools import compute_mean_main  # noqa: E402

if __name__ == '__main__':
    sys.exit(compute_mean_main())
