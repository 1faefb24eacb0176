"""benchmarks/gemm_shapes.py: every BLAS call of a training iteration, grouped by
shape, counted and timed."""
import io
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'benchmarks'))
import gemm_shapes  # noqa: E402
import minicaffe  # noqa: E402
from minicaffe import blas  # noqa: E402

NET = '''name: "small"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 8 dim: 2 dim: 12 dim: 12 } shape { dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 6 kernel_size: 5 weight_filler { type: "xavier" } } }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
'''


def test_every_blas_call_is_counted_by_shape(tmp_path, capsys):
    path = tmp_path / 'net.prototxt'
    path.write_text(NET)
    net = minicaffe.Net(str(path), minicaffe.TRAIN)
    real = blas._call
    stats = gemm_shapes.profile(net, iterations=2, warmup=1)
    assert blas._call is real                          # restored
    # InnerProduct's weight gradient (3 x 384 over k = 8 images, accumulated into
    # the diff: always a BLAS call) once per iteration, on the chosen BLAS
    shapes = {key[:3]: (calls, key[-1]) for key, (calls, secs) in stats.items()}
    assert shapes[(3, 384, 8)] == (2, blas.name())
    out = io.StringIO()
    per_iteration = gemm_shapes.report(stats, 2, out)
    lines = out.getvalue().splitlines()
    assert lines[0].split()[:3] == ['m', 'n', 'k'] and len(lines) == len(stats) + 2
    assert per_iteration > 0 and lines[-1].startswith('total BLAS time per iteration')
    gemm_shapes.main([str(path), '--iterations', '1'])
    assert 'total BLAS time per iteration' in capsys.readouterr().out
