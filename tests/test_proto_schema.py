"""Schema tests for minicaffe/proto/caffe.proto and its generated caffe_pb2.py.

(a) the committed caffe_pb2.py is exactly what tools/gen_proto.py produces;
(b) every conformance / upstream prototxt parses with text_format;
(c) Caffe-written .caffemodel / .solverstate files decode;
(d) spot checks of field numbers, types and defaults against BVLC caffe.proto.
"""
import importlib.util
import re
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor as _d
from google.protobuf import text_format

REPO = Path(__file__).resolve().parents[1]
CONF = Path(__file__).resolve().parents[1].parent / "shared" / "conformance"
PB2_PATH = REPO / "minicaffe" / "proto" / "caffe_pb2.py"


def _load_module(name, path):
    spec = importlib.util.spec_from_file_location(name, str(path))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _caffe_pb2():
    mod = sys.modules.get("minicaffe.proto.caffe_pb2")
    if mod is not None:
        return mod
    try:
        from minicaffe.proto import caffe_pb2 as mod
        return mod
    except Exception:  # noqa: BLE001 - broken package must not hide schema tests
        # Keep this schema test independent of the rest of the package
        # (minicaffe/__init__ imports the whole framework): a failing package
        # import may still have registered caffe_pb2 (and caffe.proto in the
        # global descriptor pool) before it failed.
        mod = sys.modules.get("minicaffe.proto.caffe_pb2")
        if mod is not None:
            return mod
        return _load_module("minicaffe.proto.caffe_pb2", PB2_PATH)


pb = _caffe_pb2()


# --------------------------------------------------------------------------
# (a) generated module is up to date

_VERSION_LINES = re.compile(
    r"^# Protobuf Python Version: .*$"
    r"|_runtime_version\.ValidateProtobufRuntimeVersion\(\n(?:.*\n)*?\)",
    re.M)


def test_generated_module_is_up_to_date(tmp_path):
    try:
        import grpc_tools  # noqa: F401
    except ImportError:
        pytest.skip("grpcio-tools not installed")
    gen = _load_module("_minicaffe_gen_proto", REPO / "tools" / "gen_proto.py")
    out = gen.generate(tmp_path)
    fresh = out.read_text()
    committed = PB2_PATH.read_text()
    if fresh == committed:
        return
    # A different grpcio-tools stamps a different version; everything else
    # (in particular the serialized descriptor) must still match exactly.
    assert _VERSION_LINES.sub("", fresh) == _VERSION_LINES.sub("", committed), (
        "minicaffe/proto/caffe_pb2.py is stale: run `python tools/gen_proto.py`")


# --------------------------------------------------------------------------
# (b) prototxt files parse

def _prototxts():
    files = set(CONF.glob("upstream/*.prototxt"))
    files |= set(CONF.glob("**/net.prototxt"))
    files |= set(CONF.glob("**/solver.prototxt"))
    return sorted(files)


def _is_solver(path):
    # lisa-caffe-public's solver is lstm_solver_RGB.prototxt
    return path.name.endswith("solver.prototxt") or "solver" in path.name


_PROTOTXTS = _prototxts()


@pytest.mark.skipif(not CONF.is_dir(), reason="shared/conformance not present")
def test_conformance_prototxts_found():
    assert len(_PROTOTXTS) > 50
    assert any(_is_solver(p) for p in _PROTOTXTS)


@pytest.mark.parametrize("path", _PROTOTXTS,
                         ids=[str(p.relative_to(CONF)) for p in _PROTOTXTS])
def test_prototxt_parses(path):
    msg = pb.SolverParameter() if _is_solver(path) else pb.NetParameter()
    text_format.Merge(path.read_text(), msg)
    if isinstance(msg, pb.NetParameter):
        assert len(msg.layer) + len(msg.layers) > 0
    else:
        assert msg.ListFields()


def test_lrcn_flow_extension():
    path = CONF / "upstream" / ("lisa-caffe-public__examples__LRCN_activity_"
                                "recognition__train_test_singleFrame_RGB.prototxt")
    if not path.exists():
        pytest.skip("LRCN activity prototxt not present")
    net = text_format.Merge(path.read_text(), pb.NetParameter())
    tps = [l.transform_param for l in net.layer if l.HasField("transform_param")]
    assert tps and all(tp.HasField("flow") and tp.flow is False for tp in tps)


# --------------------------------------------------------------------------
# (c) binary files written by Caffe decode

_SOLVER_DIRS = sorted(p for p in CONF.glob("solvers/*") if p.is_dir())


@pytest.mark.parametrize("d", _SOLVER_DIRS, ids=[p.name for p in _SOLVER_DIRS])
def test_caffemodels_and_solverstate_decode(d):
    for name in ("init.caffemodel", "snap_iter_4.caffemodel"):
        net = pb.NetParameter()
        net.ParseFromString((d / name).read_bytes())
        with_blobs = [l for l in net.layer if len(l.blobs)]
        assert with_blobs, name
        for layer in with_blobs:
            assert layer.name and layer.type
            for blob in layer.blobs:
                count = 1
                for dim in blob.shape.dim:
                    count *= dim
                assert len(blob.shape.dim) > 0
                assert len(blob.data) == count
    state = pb.SolverState()
    state.ParseFromString((d / "snap_iter_4.solverstate").read_bytes())
    assert state.iter == 4
    assert state.learned_net.endswith("snap_iter_4.caffemodel")
    assert len(state.history) > 0


@pytest.mark.skipif(not _SOLVER_DIRS, reason="shared/conformance not present")
def test_caffemodel_round_trip():
    data = (_SOLVER_DIRS[0] / "init.caffemodel").read_bytes()
    net = pb.NetParameter.FromString(data)
    assert net.SerializeToString() == data


# --------------------------------------------------------------------------
# (d) spot checks against BVLC caffe.proto (master, 9b89154)

def _field(msg, name):
    return getattr(pb, msg).DESCRIPTOR.fields_by_name[name]


@pytest.mark.parametrize("msg,name,number", [
    ("BlobShape", "dim", 1),
    ("BlobProto", "shape", 7), ("BlobProto", "data", 5), ("BlobProto", "diff", 6),
    ("BlobProto", "double_data", 8), ("BlobProto", "double_diff", 9),
    ("BlobProto", "num", 1), ("BlobProto", "width", 4),
    ("Datum", "encoded", 7), ("Datum", "float_data", 6),
    ("NetParameter", "layer", 100), ("NetParameter", "layers", 2),
    ("NetParameter", "input_shape", 8), ("NetParameter", "input_dim", 4),
    ("SolverParameter", "type", 40), ("SolverParameter", "solver_type", 30),
    ("SolverParameter", "net", 24), ("SolverParameter", "snapshot_format", 37),
    ("SolverParameter", "iter_size", 36), ("SolverParameter", "clip_gradients", 35),
    ("SolverParameter", "momentum2", 39), ("SolverParameter", "rms_decay", 38),
    ("SolverParameter", "delta", 31), ("SolverParameter", "layer_wise_reduce", 41),
    ("SolverParameter", "weights", 42), ("SolverParameter", "random_seed", 20),
    ("SolverState", "iter", 1), ("SolverState", "history", 3),
    ("SolverState", "current_step", 4),
    ("LayerParameter", "blobs", 7), ("LayerParameter", "propagate_down", 11),
    ("LayerParameter", "phase", 10), ("LayerParameter", "loss_weight", 5),
    ("LayerParameter", "transform_param", 100), ("LayerParameter", "loss_param", 101),
    ("LayerParameter", "recurrent_param", 146), ("LayerParameter", "embed_param", 137),
    ("LayerParameter", "clip_param", 148), ("LayerParameter", "swish_param", 147),
    ("LayerParameter", "parameter_param", 145), ("LayerParameter", "crop_param", 144),
    ("LayerParameter", "input_param", 143), ("LayerParameter", "scale_param", 142),
    ("LayerParameter", "bias_param", 141), ("LayerParameter", "elu_param", 140),
    ("LayerParameter", "batch_norm_param", 139), ("LayerParameter", "tile_param", 138),
    ("LayerParameter", "reduction_param", 136), ("LayerParameter", "flatten_param", 135),
    ("LayerParameter", "log_param", 134), ("LayerParameter", "reshape_param", 133),
    ("LayerParameter", "spp_param", 132), ("LayerParameter", "prelu_param", 131),
    ("LayerParameter", "python_param", 130), ("LayerParameter", "window_data_param", 129),
    ("LayerParameter", "convolution_param", 106), ("LayerParameter", "pooling_param", 121),
    ("ConvolutionParameter", "dilation", 18), ("ConvolutionParameter", "stride", 6),
    ("ConvolutionParameter", "force_nd_im2col", 17),
    ("PoolingParameter", "round_mode", 13), ("PoolingParameter", "global_pooling", 12),
    ("ConcatParameter", "axis", 2), ("SliceParameter", "axis", 3),
    ("RecurrentParameter", "expose_hidden", 5), ("EmbedParameter", "input_dim", 2),
    ("InfogainLossParameter", "axis", 2), ("LossParameter", "normalization", 3),
    ("DummyDataParameter", "shape", 6), ("DataParameter", "prefetch", 10),
    ("WindowDataParameter", "root_folder", 13),
    ("V1LayerParameter", "blobs_lr", 7), ("V1LayerParameter", "weight_decay", 8),
    ("V1LayerParameter", "layer", 1), ("V1LayerParameter", "param", 1001),
    ("V1LayerParameter", "blob_share_mode", 1002), ("V1LayerParameter", "loss_param", 42),
    ("V1LayerParameter", "transform_param", 36), ("V1LayerParameter", "include", 32),
    ("V0LayerParameter", "pad", 7), ("V0LayerParameter", "det_context_pad", 58),
    ("V0LayerParameter", "det_crop_mode", 59), ("V0LayerParameter", "k", 22),
    ("V0LayerParameter", "concat_dim", 65), ("V0LayerParameter", "hdf5_output_param", 1001),
    ("TransformationParameter", "force_gray", 7),
])
def test_field_numbers(msg, name, number):
    assert _field(msg, name).number == number


def test_layer_param_ids_dense():
    # BVLC: layer-specific params occupy exactly 102..148.
    nums = sorted(f.number for f in pb.LayerParameter.DESCRIPTOR.fields
                  if f.name.endswith("_param") and f.number >= 102)
    assert nums == list(range(102, 149))


def test_packed_and_types():
    F = _d.FieldDescriptor
    for msg, name, typ in [("BlobShape", "dim", F.TYPE_INT64),
                           ("BlobProto", "data", F.TYPE_FLOAT),
                           ("BlobProto", "diff", F.TYPE_FLOAT),
                           ("BlobProto", "double_data", F.TYPE_DOUBLE),
                           ("BlobProto", "double_diff", F.TYPE_DOUBLE)]:
        f = _field(msg, name)
        assert f.type == typ and f.is_repeated and f.is_packed, (msg, name)
    assert not _field("Datum", "float_data").is_packed
    assert not _field("LayerParameter", "loss_weight").is_packed
    assert _field("BlobProto", "num").type == F.TYPE_INT32
    assert _field("SolverState", "iter").type == F.TYPE_INT32
    assert _field("SolverParameter", "random_seed").type == F.TYPE_INT64
    assert _field("ClipParameter", "min").is_required
    assert _field("ConvolutionParameter", "kernel_size").type == F.TYPE_UINT32


def test_defaults():
    s = pb.SolverParameter()
    assert s.type == "SGD" and s.solver_type == pb.SolverParameter.SGD
    assert s.solver_mode == pb.SolverParameter.GPU
    assert s.snapshot_format == pb.SolverParameter.BINARYPROTO
    assert s.random_seed == -1 and s.average_loss == 1 and s.iter_size == 1
    assert s.regularization_type == "L2" and s.clip_gradients == -1
    assert s.test_initialization is True and s.snapshot_after_train is True
    assert abs(s.delta - 1e-8) < 1e-15 and abs(s.momentum2 - 0.999) < 1e-7
    assert abs(s.rms_decay - 0.99) < 1e-7
    assert pb.NetState().phase == pb.TEST
    assert pb.FillerParameter().type == "constant" and pb.FillerParameter().std == 1
    assert pb.FillerParameter().sparse == -1
    assert pb.ParamSpec().lr_mult == 1 and pb.ParamSpec().decay_mult == 1
    assert pb.LossParameter().normalization == pb.LossParameter.VALID
    assert pb.ConvolutionParameter().bias_term is True
    assert pb.ConvolutionParameter().group == 1 and pb.ConvolutionParameter().axis == 1
    assert pb.PoolingParameter().stride == 1
    assert pb.PoolingParameter().round_mode == pb.PoolingParameter.CEIL
    assert pb.LRNParameter().local_size == 5 and pb.LRNParameter().beta == 0.75
    assert pb.EltwiseParameter().operation == pb.EltwiseParameter.SUM
    assert pb.EltwiseParameter().stable_prod_grad is True
    assert abs(pb.BatchNormParameter().moving_average_fraction - 0.999) < 1e-7
    assert abs(pb.BatchNormParameter().eps - 1e-5) < 1e-12
    assert abs(pb.MVNParameter().eps - 1e-9) < 1e-16
    assert pb.CropParameter().axis == 2
    assert pb.ReshapeParameter().num_axes == -1
    assert pb.FlattenParameter().end_axis == -1
    assert pb.ExpParameter().base == -1 and pb.LogParameter().base == -1
    assert pb.ReductionParameter().operation == pb.ReductionParameter.SUM
    assert pb.HingeLossParameter().norm == pb.HingeLossParameter.L1
    assert pb.DataParameter().prefetch == 4 and pb.ImageDataParameter().batch_size == 1
    assert pb.WindowDataParameter().crop_mode == "warp"
    assert pb.V0LayerParameter().det_crop_mode == "warp"
    assert pb.SwishParameter().beta == 1 and pb.ELUParameter().alpha == 1
    assert pb.AccuracyParameter().top_k == 1
    assert pb.TransformationParameter().scale == 1
    assert pb.TransformationParameter().flow is False


def test_enums():
    V1 = pb.V1LayerParameter
    assert V1.CONVOLUTION == 4 and V1.DECONVOLUTION == 39 and V1.ABSVAL == 35
    assert V1.SLICE == 33 and V1.DUMMY_DATA == 32 and V1.THRESHOLD == 31
    assert V1.SOFTMAX_LOSS == 21 and V1.SILENCE == 36 and V1.EXP == 38
    S = pb.SolverParameter
    assert (S.SGD, S.NESTEROV, S.ADAGRAD, S.RMSPROP, S.ADADELTA, S.ADAM) == (0, 1, 2, 3, 4, 5)
    assert pb.TRAIN == 0 and pb.TEST == 1
    L = pb.LossParameter
    assert (L.FULL, L.VALID, L.BATCH_SIZE, L.NONE) == (0, 1, 2, 3)
    assert pb.ParamSpec.PERMISSIVE == 1 and pb.DataParameter.LMDB == 1
    assert pb.ReductionParameter.MEAN == 4 and pb.HingeLossParameter.L2 == 2
    for m in ("ConvolutionParameter", "PoolingParameter", "ReLUParameter", "LRNParameter",
              "SigmoidParameter", "SoftmaxParameter", "TanHParameter", "SPPParameter"):
        e = getattr(pb, m)
        assert (e.DEFAULT, e.CAFFE, e.CUDNN) == (0, 1, 2), m
