"""The benchmark nets of ../shared/bench and real Caffe's CPU figures for them,
shared by bench_cpu.py and bench_gpu.py."""
import re
from pathlib import Path

# (short name, file, stages, items per iteration, item unit, Caffe CPU fwd+bwd ms), in
# the order ../shared/conformance/README.md lists Caffe's figures
# ("... forward+backward ms per iteration: 16.7, 352, ...").
NETS = [
    ('lenet', 'lenet_b64.prototxt', [], 64, 'images', 16.7),
    ('caffenet', 'caffenet_b10.prototxt', [], 10, 'images', 352.0),
    ('lrcn_caption', 'lrcn_caption_T20_N10.prototxt', ['factored', '2-layer'], 10, 'captions', 643.0),
    ('lstm_lm', 'lstm_lm_T20_N100.prototxt', [], 100, 'sentences', 1101.0),
    ('lrcn_activity', 'lrcn_activity_T16_N2.prototxt', [], 32, 'frames', 1614.0),
]


def caffe_figures(readme):
    """Caffe's five CPU forward+backward ms figures from the conformance README, or None."""
    try:
        text = Path(readme).read_text()
    except OSError:
        return None
    m = re.search(r'forward\+backward ms per iteration:\s*([\d.,\s]+)', text)
    if not m:
        return None
    values = [float(v) for v in re.findall(r'\d+(?:\.\d+)?', m.group(1))]
    return values if len(values) == len(NETS) else None
