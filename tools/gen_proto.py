#!/usr/bin/env python
"""Regenerate minicaffe/proto/caffe_pb2.py from minicaffe/proto/caffe.proto.

Usage (from anywhere):  python tools/gen_proto.py [OUT_DIR]

Runs ``python -m grpc_tools.protoc -I minicaffe/proto
--python_out=<OUT_DIR> minicaffe/proto/caffe.proto`` from the repository root
(paths resolved relative to this script).  OUT_DIR defaults to
minicaffe/proto, i.e. the committed module is overwritten in place.
``generate(out_dir)`` does the same from Python (used by the tests to check
that the committed caffe_pb2.py is up to date).
"""
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = REPO_ROOT / "minicaffe" / "proto"
PROTO_FILE = PROTO_DIR / "caffe.proto"


def generate(out_dir=None):
    """Compile caffe.proto into ``<out_dir>/caffe_pb2.py``; return its path."""
    out_dir = Path(out_dir) if out_dir is not None else PROTO_DIR
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    # Relative -I / file paths (run from the repo root) keep the descriptor's
    # file name "caffe.proto", independent of where the checkout lives.
    cmd = [
        sys.executable, "-m", "grpc_tools.protoc",
        "-I", os.path.relpath(PROTO_DIR, REPO_ROOT),
        "--python_out=" + str(out_dir),
        os.path.relpath(PROTO_FILE, REPO_ROOT),
    ]
    res = subprocess.run(cmd, cwd=str(REPO_ROOT), capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError("protoc failed (%d):\n%s%s"
                           % (res.returncode, res.stdout, res.stderr))
    return out_dir / "caffe_pb2.py"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    path = generate(argv[0] if argv else None)
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
