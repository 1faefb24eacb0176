"""One small, valid configuration of every registered layer type, for sweeps
over all layer types (zero-size bottoms, in-place use).

``CASES[type] = Case(bottoms, param, n_top)``: each bottom is (shape, kind);
kind says how its values are drawn ('real', 'label:K' for class ids below K,
'index:N' for row indices below N, 'cont' for 0/1 sequence markers,
'positive').  Types that read no bottoms (data layers) are built from their
param alone.  ``make_net`` wires a case behind an Input layer.
"""
import collections

import numpy as np

import minicaffe as caffe
from minicaffe import protoio
from minicaffe.protoio import pb

Case = collections.namedtuple('Case', 'bottoms param n_top')


def _case(bottoms, param='', n_top=1):
    return Case(bottoms, param, n_top)


R = 'real'
IMG = ((2, 3, 5, 5), R)
VEC = ((2, 4), R)
FILLED = 'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 }'

CASES = {
    # element-wise (neuron) layers
    'AbsVal': _case([IMG]),
    'BNLL': _case([IMG]),
    'Clip': _case([IMG], 'clip_param { min: -0.5 max: 0.5 }'),
    'Dropout': _case([IMG]),
    'ELU': _case([IMG]),
    'Exp': _case([IMG]),
    'Log': _case([((2, 3, 5, 5), 'positive')]),
    'PReLU': _case([IMG]),
    'Power': _case([((2, 3, 5, 5), 'positive')], 'power_param { power: 2 scale: 0.5 shift: 0.1 }'),
    'ReLU': _case([IMG], 'relu_param { negative_slope: 0.1 }'),
    'Sigmoid': _case([IMG]),
    'Swish': _case([IMG]),
    'TanH': _case([IMG]),
    'Threshold': _case([IMG]),
    # vision
    'Convolution': _case([IMG], 'convolution_param { num_output: 4 kernel_size: 3 pad: 1 %s }' % FILLED),
    'Deconvolution': _case([IMG], 'convolution_param { num_output: 4 kernel_size: 3 stride: 2 %s }'
                           % FILLED),
    'Im2col': _case([IMG], 'convolution_param { kernel_size: 3 }'),
    'Pooling': _case([IMG], 'pooling_param { pool: MAX kernel_size: 2 stride: 2 }'),
    'SPP': _case([IMG], 'spp_param { pyramid_height: 2 }'),
    'LRN': _case([IMG], 'lrn_param { local_size: 3 }'),
    'Crop': _case([IMG, ((2, 3, 3, 3), R)], 'crop_param { axis: 2 offset: 1 }'),
    # normalization, scaling
    'BatchNorm': _case([IMG]),
    'MVN': _case([IMG]),
    'Scale': _case([IMG], 'scale_param { axis: 1 bias_term: true filler { type: "gaussian" } }'),
    'Bias': _case([IMG], 'bias_param { filler { type: "gaussian" } }'),
    'Softmax': _case([VEC]),
    # inner products, embeddings, recurrent
    'InnerProduct': _case([VEC], 'inner_product_param { num_output: 3 %s }' % FILLED),
    'Embed': _case([((4,), 'index:5')], 'embed_param { input_dim: 5 num_output: 3 %s }' % FILLED),
    'LSTM': _case([((3, 2, 4), R), ((3, 2), 'cont')],
                  'recurrent_param { num_output: 3 %s }' % FILLED),
    'RNN': _case([((3, 2, 4), R), ((3, 2), 'cont')],
                 'recurrent_param { num_output: 3 %s }' % FILLED),
    'LSTMUnit': _case([((1, 2, 3), R), ((1, 2, 12), R), ((1, 2), 'cont')], n_top=2),
    # structure
    'ArgMax': _case([VEC], 'argmax_param { top_k: 2 }'),
    'BatchReindex': _case([VEC, ((3,), 'index:2')]),
    'Concat': _case([VEC, VEC]),
    'Eltwise': _case([VEC, VEC]),
    'Filter': _case([VEC, ((2,), 'cont')]),
    'Flatten': _case([IMG]),
    'Reduction': _case([IMG], 'reduction_param { operation: SUMSQ axis: 1 }'),
    'Reshape': _case([IMG], 'reshape_param { shape { dim: -1 dim: 15 } }'),
    'Silence': _case([VEC], n_top=0),
    'Slice': _case([VEC], 'slice_param { slice_point: 1 }', n_top=2),
    'Split': _case([VEC], n_top=2),
    'Tile': _case([VEC], 'tile_param { axis: 1 tiles: 2 }'),
    'Parameter': _case([], 'parameter_param { shape { dim: 2 dim: 3 } }'),
    # losses
    'Accuracy': _case([((2, 5), R), ((2,), 'label:5')]),
    'ContrastiveLoss': _case([VEC, VEC, ((2, 1, 1, 1), 'cont')]),
    'EuclideanLoss': _case([VEC, VEC]),
    'HingeLoss': _case([((2, 5), R), ((2,), 'label:5')]),
    'InfogainLoss': _case([((2, 5), 'positive'), ((2,), 'label:5'), ((1, 1, 5, 5), 'positive')]),
    'MultinomialLogisticLoss': _case([((2, 5, 1, 1), 'positive'), ((2,), 'label:5')]),
    'SigmoidCrossEntropyLoss': _case([VEC, ((2, 4), 'cont')]),
    'SoftmaxWithLoss': _case([((2, 5), R), ((2,), 'label:5')]),
    # data layers: no bottoms; those reading files point at none (the sweeps
    # only ask that they fail cleanly)
    'Input': _case([], 'input_param { shape { dim: 2 dim: 3 } }'),
    'DummyData': _case([], 'dummy_data_param { shape { dim: 2 dim: 3 } }'),
    'MemoryData': _case([], 'memory_data_param { batch_size: 2 channels: 1 height: 2 width: 2 }',
                        n_top=2),
    'Data': _case([], 'data_param { source: "/nonexistent/db" batch_size: 2 }', n_top=2),
    'ImageData': _case([], 'image_data_param { source: "/nonexistent/list" batch_size: 2 }', n_top=2),
    'WindowData': _case([], 'window_data_param { source: "/nonexistent/w" batch_size: 2 }', n_top=2),
    'HDF5Data': _case([], 'hdf5_data_param { source: "/nonexistent/list" batch_size: 2 }'),
    'HDF5Output': _case([VEC, ((2,), 'label:5')], 'hdf5_output_param { file_name: "{tmp}/out.h5" }',
                        n_top=0),
    'Python': _case([VEC], 'python_param { module: "no_such_module" layer: "L" }'),
}

# Bottoms a layer reads as indices, labels or markers: they carry no gradient.
NO_GRAD_KINDS = ('label', 'index', 'cont')


def values(shape, kind, rng):
    if kind.startswith(('label:', 'index:')):
        return rng.integers(0, int(kind.split(':')[1]), size=shape).astype(np.float32)
    if kind == 'cont':
        return (rng.random(shape) < 0.7).astype(np.float32)
    if kind == 'positive':
        return rng.uniform(0.1, 1.0, size=shape).astype(np.float32)
    return rng.standard_normal(shape).astype(np.float32)


def layer_text(type_name, bottoms, tops, param, name='l'):
    return ('layer { name: "%s" type: "%s" %s %s %s }'
            % (name, type_name, ''.join('bottom: "%s" ' % b for b in bottoms),
               ''.join('top: "%s" ' % t for t in tops), param))


def net_text(type_name, shapes, case, in_place=False, tmp='/tmp'):
    """Prototxt of an Input layer giving ``shapes`` and the layer under test
    (named "l"); ``in_place`` names top 0 like bottom 0."""
    names = ['b%d' % i for i in range(len(shapes))]
    tops = ['t%d' % i for i in range(case.n_top)]
    if in_place and names and tops:
        tops[0] = names[0]
    text = 'force_backward: true\n'
    if names:
        text += ('layer { name: "input" type: "Input" %s input_param { %s } }\n'
                 % (''.join('top: "%s" ' % n for n in names),
                    ''.join('shape { %s } ' % ' '.join('dim: %d' % d for d in s) for s in shapes)))
    text += layer_text(type_name, names, tops, case.param.replace('{tmp}', str(tmp)))
    return text


def make_net(type_name, shapes=None, in_place=False, tmp='/tmp', phase=caffe.TRAIN, seed=0):
    """The case's net, its inputs filled; ``shapes`` replaces the bottom shapes."""
    case = CASES[type_name]
    shapes = [s for s, _ in case.bottoms] if shapes is None else shapes
    net = caffe.Net(net_param=protoio.parse_text(net_text(type_name, shapes, case, in_place, tmp),
                                                 pb.NetParameter()),
                    phase=phase, source='%s-case' % type_name)
    rng = np.random.default_rng(seed)
    for i, (shape, (_, kind)) in enumerate(zip(shapes, case.bottoms)):
        net.blobs['b%d' % i].data[...] = values(shape, kind, rng)
    return net
