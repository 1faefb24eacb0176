#!/usr/bin/env python
"""Caffe's tools/convert_imageset, as `minicaffe convert-imageset`: see minicaffe/commands/lmdb_tools.py."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minicaffe.commands.lmdb_tools import convert_imageset_main  # noqa: E402

if __name__ == '__main__':
    sys.exit(convert_imageset_main())
