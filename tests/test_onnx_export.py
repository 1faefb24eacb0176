"""ONNX export (minicaffe.onnx) verified by ONNX Runtime.

Every case of ../shared/conformance (layers/ and nets/) is exported with its
inputs and parameters and must match minicaffe's forward at the conformance
tolerance; where the model has a symbolic batch, also on a doubled batch.  The
LRCN deploy nets (image -> features, caption word step, activity clip) too.
"""
import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from onnx_support import (check_dynamic_batch, export_and_compare, mo, onnx, random_inputs,
                          run_model, set_inputs)

import minicaffe as caffe
from conformance import CONFORMANCE, ROOT, _prototxt_tops, case_dirs, h5name
from minicaffe.errors import ExportError, MinicaffeError

CASES = case_dirs('layers') + case_dirs('nets')
# Cases whose layers ONNX cannot express, with the reason the export gives.
# None today: every layer type of the suite has a converter.
REFUSED = {}


def build_case(case):
    """(net, inputs, named non-input tops) of a conformance case, parameters set."""
    ref = h5py.File(case / 'ref.h5', 'r')
    phase = caffe.TRAIN if ref.attrs['phase'] == 'TRAIN' else caffe.TEST
    caffe.set_random_seed(int(ref.attrs.get('seed', 1701)))
    net = caffe.Net(str(case / 'net.prototxt'), phase, stages=json.loads(ref.attrs.get('stages', '[]')))
    feeds = {h5name(k): ref['input'][k][()].astype(np.float32) for k in ref['input']}
    for lkey in ref.get('param', {}):
        for i in ref['param'][lkey]:
            net.params[h5name(lkey)][int(i)].data[...] = ref['param'][lkey][i][()]
    named = _prototxt_tops(case / 'net.prototxt')
    outputs = [n for n in net.blobs if n in named and n not in net.inputs]
    return net, feeds, outputs


def test_conformance_suite_present():
    assert len(CASES) >= 100


@pytest.mark.parametrize('case', CASES, ids=[c.name for c in CASES])
def test_conformance_case(case):
    net, feeds, outputs = build_case(case)
    if case.name in REFUSED:
        with pytest.raises(ExportError, match=REFUSED[case.name]):
            mo.to_model(net, outputs=outputs)
        return
    model, problems = export_and_compare(net, feeds, outputs)
    assert not problems, '\n'.join(problems)
    if mo.has_dynamic_batch(model):
        problems = check_dynamic_batch(net, model, feeds)
        assert not problems, '\n'.join(problems)


def test_layers_that_depend_on_the_batch_fix_it():
    net, feeds, outputs = build_case(CONFORMANCE / 'layers' / 'softmax_loss')
    set_inputs(net, feeds)
    model = mo.to_model(net, outputs=outputs)
    assert not mo.has_dynamic_batch(model)
    assert 'SoftmaxWithLoss' in model.doc_string
    net, feeds, outputs = build_case(CONFORMANCE / 'layers' / 'conv_basic')
    model = mo.to_model(net, outputs=outputs)
    assert mo.has_dynamic_batch(model)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == 'N'
    fixed = mo.to_model(net, outputs=outputs, dynamic_batch=False)
    assert not mo.has_dynamic_batch(fixed)


@pytest.mark.parametrize('opset', [13, 18, 21])
@pytest.mark.parametrize('name', ['batchnorm_train', 'mvn', 'lstm_static', 'slice_points',
                                  'reduction_sumsq_mean', 'pool_ave_ceil', 'lrn_within'])
def test_other_opsets(name, opset):
    """Reduce*, Split and Squeeze change form across opsets; the numbers must not."""
    net, feeds, outputs = build_case(CONFORMANCE / 'layers' / name)
    model, problems = export_and_compare(net, feeds, outputs, opset=opset)
    assert not problems, '\n'.join(problems)
    assert model.opset_import[0].version == opset


# ---------------------------------------------------------------- LRCN deploy nets
LRCN = ROOT / 'prototxt' / 'lrcn'


DEPLOY = [
    ('caption/image_to_feature.deploy.prototxt', [], {}),
    ('caption/lrcn_word_to_preds.deploy.prototxt', ['factored', '2-layer'], {'input_sentence': (0, 26)}),
    ('caption/lrcn_word_to_preds.deploy.prototxt', ['unfactored'], {'input_sentence': (0, 26)}),
    ('caption/lrcn_word_to_preds.deploy.prototxt', ['unfactored', '2-layer'],
     {'input_sentence': (0, 26)}),
    ('caption/lstm_lm.deploy.prototxt', [], {'input_sentence': (0, 26)}),
    ('video_description/svo_word_to_preds.deploy.prototxt', [], {'input_sentence': (0, 27)}),
    ('video_description/svo_word_to_preds.deploy.prototxt', ['factored'], {'input_sentence': (0, 27)}),
    ('activity/deploy_lstm.prototxt', [], {}),
    ('activity/deploy_singleFrame.prototxt', [], {}),
]


@pytest.mark.parametrize('path,stages,ints', DEPLOY,
                         ids=['%s[%s]' % (p.split('/')[-1], ','.join(s)) for p, s, _ in DEPLOY])
def test_lrcn_deploy_net(path, stages, ints):
    net = caffe.Net(str(LRCN / path), caffe.TEST, stages=stages)
    rng = np.random.RandomState(7)
    for blobs in net.params.values():          # weights a little larger than the fillers'
        for b in blobs:                        # so that the LSTM gates are not all ~0.5
            b.data[...] += rng.normal(0, 0.1, size=b.shape)
    feeds = random_inputs(net, rng, ints)
    model, problems = export_and_compare(net, feeds)
    assert not problems, '\n'.join(problems)
    assert [i.name for i in model.graph.input] == net.inputs


def test_lstm_op_types():
    """The recurrence is a Scan with Caffe's cell, not ONNX's LSTM op."""
    net, feeds, outputs = build_case(CONFORMANCE / 'layers' / 'lstm')
    ops = {n.op_type for n in mo.to_model(net, outputs=outputs).graph.node}
    assert 'Scan' in ops and 'LSTM' not in ops


# ---------------------------------------------------------------- refusals and errors
REFUSING_NET = """
name: "refusing"
layer { name: "in" type: "Input" top: "x" top: "y" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 3 } } }
layer { name: "drop" type: "Dropout" bottom: "x" top: "d" }
layer { name: "save" type: "HDF5Output" bottom: "d" bottom: "y" hdf5_output_param { file_name: "OUT" } }
layer { name: "ip" type: "InnerProduct" bottom: "d" top: "z" inner_product_param { num_output: 2 } }
layer { name: "after" type: "Power" bottom: "z" top: "w" }
"""


def _write(tmp_path, text, name='net.prototxt'):
    p = tmp_path / name
    p.write_text(text.replace('OUT', str(tmp_path / 'out.h5')))
    return p


def test_refused_layers_are_listed_together(tmp_path):
    path = _write(tmp_path, REFUSING_NET)
    net = caffe.Net(str(path), caffe.TRAIN)
    with pytest.raises(ExportError) as err:
        mo.export(net, tmp_path / 'm.onnx')
    msg = str(err.value)
    assert 'cannot export to ONNX: 2 layers' in msg
    assert '%s:4: layer "drop" (Dropout): TRAIN-phase dropout' % path in msg
    assert 'layer "save" (HDF5Output): no ONNX converter' in msg
    # layers below a refused one are not blamed for it
    assert '"ip"' not in msg and '"after"' not in msg
    assert not (tmp_path / 'm.onnx').exists()


def test_bad_opset_and_outputs(tmp_path):
    net = caffe.Net(str(ROOT / 'prototxt' / 'mnist' / 'lenet.prototxt'), caffe.TEST)
    with pytest.raises(ExportError, match='opset 7 is not supported'):
        mo.to_model(net, opset=7)
    with pytest.raises(ExportError, match='no blob named "nope"'):
        mo.to_model(net, outputs=['nope'])


def test_export_writes_a_loadable_model(tmp_path):
    net = caffe.Net(str(ROOT / 'prototxt' / 'mnist' / 'lenet.prototxt'), caffe.TEST)
    path = tmp_path / 'lenet.onnx'
    mo.export(net, path)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert [o.name for o in model.graph.output] == ['prob']
    assert not [p for p in tmp_path.iterdir() if p.name.endswith('.tmp')]


def test_the_package_does_not_shadow_onnx():
    import minicaffe.onnx.graph as g
    assert g.onnx.__name__ == 'onnx' and hasattr(g.onnx, 'ModelProto')


# ---------------------------------------------------------------- command line
def _cli(*args, cwd):
    env = dict(__import__('os').environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, '-m', 'minicaffe', 'export-onnx'] + list(args), cwd=cwd,
                          env=env, capture_output=True, text=True)


def test_cli_exports_with_weights(tmp_path):
    net = caffe.Net(str(ROOT / 'prototxt' / 'mnist' / 'lenet.prototxt'), caffe.TEST)
    rng = np.random.RandomState(3)
    for blobs in net.params.values():
        for b in blobs:
            b.data[...] = rng.normal(0, 0.1, size=b.shape)
    net.save(str(tmp_path / 'w.caffemodel'))
    r = _cli(str(ROOT / 'prototxt' / 'mnist' / 'lenet.prototxt'), 'w.caffemodel', '-o', 'm.onnx',
             '--opset', '18', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "inputs:  data ('N', 1, 28, 28)" in r.stdout
    model = onnx.load(str(tmp_path / 'm.onnx'))
    x = rng.uniform(size=(3, 1, 28, 28)).astype(np.float32)
    net.blobs['data'].reshape(x.shape)
    net.blobs['data'].data[...] = x
    want = net.forward()['prob']
    assert np.allclose(run_model(model, {'data': x})['prob'], want, atol=1e-5)


def test_cli_stages_and_errors(tmp_path):
    deploy = LRCN / 'caption' / 'lrcn_word_to_preds.deploy.prototxt'
    r = _cli(str(deploy), '-o', 'w.onnx', '--stage', 'factored,2-layer', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert 'fixed batch: layer "lstm1" (LSTM)' in r.stdout
    path = _write(tmp_path, REFUSING_NET)
    r = _cli(str(path), '-o', 'x.onnx', '--phase', 'TRAIN', cwd=tmp_path)
    assert r.returncode == 2
    # the error follows the net's set-up log lines (Caffe's, on stderr too)
    assert '\nminicaffe: error: ' in r.stderr and 'Traceback' not in r.stderr
    error = r.stderr[r.stderr.index('\nminicaffe: error: '):]
    assert '"drop" (Dropout)' in error and '"save" (HDF5Output)' in error


# ---------------------------------------------------------------- coverage of layer types
# Layer types without an ONNX form, and why: data layers read files or generate
# data (a deploy net feeds Input blobs instead), HDF5Output writes a file,
# Python layers run arbitrary code.  A new layer type must get a converter or a
# line here.
NOT_EXPORTABLE = {'Data', 'DummyData', 'HDF5Data', 'HDF5Output', 'ImageData', 'MemoryData',
                  'Python', 'WindowData'}


def test_every_layer_type_has_a_converter_or_a_reason():
    from minicaffe.layers.base import layer_type_list
    missing = set(layer_type_list()) - set(mo.supported_types()) - NOT_EXPORTABLE - {'Input', 'Silence'}
    assert not missing, 'layer types with no ONNX converter: %s' % sorted(missing)
    assert not NOT_EXPORTABLE & set(mo.supported_types())


INFOGAIN_NET = """
name: "infogain"
layer { name: "in" type: "Input" top: "x" top: "label" top: "H"
        input_param { shape { dim: 3 dim: 4 dim: 2 } shape { dim: 3 dim: 2 } shape { dim: 4 dim: 4 } } }
layer { name: "loss" type: "InfogainLoss" bottom: "x" bottom: "label" bottom: "H" top: "loss" top: "prob"
        loss_param { ignore_label: 2 } }
"""


@pytest.mark.parametrize('from_file', [False, True])
def test_infogain_loss(tmp_path, from_file):
    from minicaffe.protoio import pb
    rng = np.random.RandomState(1)
    H = rng.uniform(0, 1, (4, 4)).astype(np.float32)
    text = INFOGAIN_NET
    if from_file:
        bp = pb.BlobProto()
        bp.shape.dim.extend([1, 1, 4, 4])
        bp.data.extend(H.ravel().tolist())
        (tmp_path / 'H.binaryproto').write_bytes(bp.SerializeToString())
        text = text.replace(' top: "H"', '').replace(' shape { dim: 4 dim: 4 }', '') \
                   .replace(' bottom: "H"', '').replace(
            'loss_param {', 'infogain_loss_param { source: "%s" } loss_param {' % (tmp_path / 'H.binaryproto'))
    net = caffe.Net(str(_write(tmp_path, text)), caffe.TEST)
    feeds = {'x': rng.normal(size=(3, 4, 2)).astype(np.float32),
             'label': np.array([[0, 1], [2, 3], [1, 2]], np.float32)}
    if not from_file:
        feeds['H'] = H
    model, problems = export_and_compare(net, feeds, ['loss', 'prob'])
    assert not problems, '\n'.join(problems)


# ---------------------------------------------------------------- geometry sweeps
def _one_layer_net(tmp_path, shape, layer_text):
    text = ('name: "sweep"\nlayer { name: "in" type: "Input" top: "x" input_param { shape { %s } } }\n'
            % ' '.join('dim: %d' % d for d in shape)) + layer_text
    return caffe.Net(str(_write(tmp_path, text)), caffe.TEST)


def _pool_configs():
    rng = np.random.RandomState(0)
    out = [(8, 9, 3, 3, 2, 2, 0, 1, 'AVE'), (8, 9, 3, 3, 2, 2, 0, 1, 'MAX'),   # pad_h 0, pad_w 1
           (7, 7, 2, 2, 3, 3, 0, 0, 'MAX'), (7, 7, 2, 2, 3, 3, 1, 1, 'AVE')]   # stride > kernel
    while len(out) < 40:
        kh, kw = rng.randint(1, 5, 2)
        sh, sw = rng.randint(1, 4, 2)
        ph, pw = rng.randint(0, kh), rng.randint(0, kw)
        h, w = rng.randint(max(kh, 2), 12, 2)
        out.append(tuple(int(v) for v in (h, w, kh, kw, sh, sw, ph, pw)) + ('MAX' if rng.rand() < 0.5 else 'AVE',))
    return out


@pytest.mark.parametrize('h,w,kh,kw,sh,sw,ph,pw,method', _pool_configs())
def test_pooling_geometry_sweep(tmp_path, h, w, kh, kw, sh, sw, ph, pw, method):
    """Caffe's ceil rounding, last-window clipping and AVE divisor for random
    kernel/stride/pad (all smaller pads than kernels, as Caffe requires)."""
    layer = ('layer { name: "pool" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: %s'
             ' kernel_h: %d kernel_w: %d stride_h: %d stride_w: %d pad_h: %d pad_w: %d } }'
             % (method, kh, kw, sh, sw, ph, pw))
    try:
        net = _one_layer_net(tmp_path, (2, 3, h, w), layer)
    except MinicaffeError:
        pytest.skip('a geometry Caffe refuses')
    x = np.random.RandomState(h * w).normal(size=(2, 3, h, w)).astype(np.float32)
    model, problems = export_and_compare(net, {'x': x})
    assert not problems, '\n'.join(problems)


CONV_CONFIGS = [
    # (input shape, convolution_param)
    ((2, 4, 9), 'num_output: 6 kernel_size: 3 stride: 2 pad: 1'),                       # 1-D
    ((2, 4, 5, 6, 7), 'num_output: 4 kernel_size: 3 pad: 1 group: 2'),                  # 3-D
    ((2, 4, 5, 6, 7), 'num_output: 2 kernel_size: 2 kernel_size: 3 kernel_size: 1 stride: 2'),
    ((2, 6, 9, 11), 'num_output: 6 kernel_size: 3 dilation: 2 group: 3 pad: 2'),
    ((2, 6, 9, 11), 'num_output: 4 kernel_h: 2 kernel_w: 4 stride_h: 2 stride_w: 3 bias_term: false'),
]


@pytest.mark.parametrize('kind', ['Convolution', 'Deconvolution'])
@pytest.mark.parametrize('shape,param', CONV_CONFIGS, ids=[c[1] for c in CONV_CONFIGS])
def test_convolution_sweep(tmp_path, kind, shape, param):
    """Groups, dilation, N-D and rectangular kernels, for Conv and ConvTranspose."""
    layer = ('layer { name: "conv" type: "%s" bottom: "x" top: "y" convolution_param { %s'
             ' weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.3 } } }'
             % (kind, param))
    net = _one_layer_net(tmp_path, shape, layer)
    x = np.random.RandomState(1).normal(size=shape).astype(np.float32)
    model, problems = export_and_compare(net, {'x': x})
    assert not problems, '\n'.join(problems)
    assert mo.has_dynamic_batch(model)
    problems = check_dynamic_batch(net, model, {'x': x})
    assert not problems, '\n'.join(problems)
