"""Upgrading legacy net and solver definitions (Caffe's util/upgrade_proto.cpp).

Nets, in Caffe's UpgradeNetAsNeeded order:

1. V0 -> V1 (``layers { layer { type: "conv" ... } }``): a "padding" layer is
   dropped and its ``pad`` moved into the conv/pool layer that reads it (which
   then reads the padding layer's input); each V0 layer becomes a
   V1LayerParameter (lower-case type names -> the V1 enum, flat V0 fields ->
   the matching ``*_param``, data scale/meanfile/cropsize/mirror ->
   ``transform_param``).  As in Caffe, only the net's name, layers, inputs and
   force_backward survive this step.
2. Data transformation: V1 Data/ImageData/WindowData layers with scale,
   mean_file, crop_size or mirror in their own ``*_param`` get them moved to
   ``transform_param``.
3. V1 -> current (``layers`` -> ``layer``): enum type -> type string;
   blobs_lr -> param.lr_mult, weight_decay -> param.decay_mult, param names ->
   param.name, blob_share_mode -> param.share_mode; bottom, top, name,
   include, exclude, blobs, loss_weight and every ``*_param`` are copied.
   Any current-format ``layer`` entries beside V1 ``layers`` are ignored (with
   a warning), as in Caffe.

Also ``upgrade_batchnorm`` (BatchNorm layers declaring three param specs get
lr_mult and decay_mult 0) and ``upgrade_solver`` (legacy ``solver_type`` enum
-> ``type`` string).  Problems Caffe only logs are logged as warnings; the
ones it aborts on raise NetDefinitionError naming the file and layer.
"""
import logging

from .errors import MinicaffeError, NetDefinitionError
from .protoio import pb

log = logging.getLogger('minicaffe')

V1 = pb.V1LayerParameter

# ------------------------------------------------------------------ tables
V0_TYPES = {
    'accuracy': V1.ACCURACY, 'bnll': V1.BNLL, 'concat': V1.CONCAT, 'conv': V1.CONVOLUTION,
    'data': V1.DATA, 'dropout': V1.DROPOUT, 'euclidean_loss': V1.EUCLIDEAN_LOSS,
    'flatten': V1.FLATTEN, 'hdf5_data': V1.HDF5_DATA, 'hdf5_output': V1.HDF5_OUTPUT,
    'im2col': V1.IM2COL, 'images': V1.IMAGE_DATA, 'infogain_loss': V1.INFOGAIN_LOSS,
    'innerproduct': V1.INNER_PRODUCT, 'lrn': V1.LRN,
    'multinomial_logistic_loss': V1.MULTINOMIAL_LOGISTIC_LOSS, 'pool': V1.POOLING,
    'relu': V1.RELU, 'sigmoid': V1.SIGMOID, 'softmax': V1.SOFTMAX,
    'softmax_loss': V1.SOFTMAX_LOSS, 'split': V1.SPLIT, 'tanh': V1.TANH,
    'window_data': V1.WINDOW_DATA,
}

V1_TYPES = {
    V1.NONE: '', V1.ABSVAL: 'AbsVal', V1.ACCURACY: 'Accuracy', V1.ARGMAX: 'ArgMax',
    V1.BNLL: 'BNLL', V1.CONCAT: 'Concat', V1.CONTRASTIVE_LOSS: 'ContrastiveLoss',
    V1.CONVOLUTION: 'Convolution', V1.DECONVOLUTION: 'Deconvolution', V1.DATA: 'Data',
    V1.DROPOUT: 'Dropout', V1.DUMMY_DATA: 'DummyData', V1.EUCLIDEAN_LOSS: 'EuclideanLoss',
    V1.ELTWISE: 'Eltwise', V1.EXP: 'Exp', V1.FLATTEN: 'Flatten', V1.HDF5_DATA: 'HDF5Data',
    V1.HDF5_OUTPUT: 'HDF5Output', V1.HINGE_LOSS: 'HingeLoss', V1.IM2COL: 'Im2col',
    V1.IMAGE_DATA: 'ImageData', V1.INFOGAIN_LOSS: 'InfogainLoss',
    V1.INNER_PRODUCT: 'InnerProduct', V1.LRN: 'LRN', V1.MEMORY_DATA: 'MemoryData',
    V1.MULTINOMIAL_LOGISTIC_LOSS: 'MultinomialLogisticLoss', V1.MVN: 'MVN',
    V1.POOLING: 'Pooling', V1.POWER: 'Power', V1.RELU: 'ReLU', V1.SIGMOID: 'Sigmoid',
    V1.SIGMOID_CROSS_ENTROPY_LOSS: 'SigmoidCrossEntropyLoss', V1.SILENCE: 'Silence',
    V1.SOFTMAX: 'Softmax', V1.SOFTMAX_LOSS: 'SoftmaxWithLoss', V1.SPLIT: 'Split',
    V1.SLICE: 'Slice', V1.TANH: 'TanH', V1.WINDOW_DATA: 'WindowData',
    V1.THRESHOLD: 'Threshold',
}

# The *_param fields UpgradeV1LayerParameter copies (same name in both messages).
V1_PARAM_FIELDS = (
    'accuracy_param', 'argmax_param', 'concat_param', 'contrastive_loss_param',
    'convolution_param', 'data_param', 'dropout_param', 'dummy_data_param', 'eltwise_param',
    'exp_param', 'hdf5_data_param', 'hdf5_output_param', 'hinge_loss_param',
    'image_data_param', 'infogain_loss_param', 'inner_product_param', 'lrn_param',
    'memory_data_param', 'mvn_param', 'pooling_param', 'power_param', 'relu_param',
    'sigmoid_param', 'softmax_param', 'slice_param', 'tanh_param', 'threshold_param',
    'window_data_param', 'transform_param', 'loss_param',
)

SOLVER_TYPES = {
    pb.SolverParameter.SGD: 'SGD', pb.SolverParameter.NESTEROV: 'Nesterov',
    pb.SolverParameter.ADAGRAD: 'AdaGrad', pb.SolverParameter.RMSPROP: 'RMSProp',
    pb.SolverParameter.ADADELTA: 'AdaDelta', pb.SolverParameter.ADAM: 'Adam',
}


# ------------------------------------------------------------------ checks
def net_needs_v0_upgrade(param):
    return any(l.HasField('layer') for l in param.layers)


def net_needs_v1_upgrade(param):
    return len(param.layers) > 0


def net_needs_data_upgrade(param):
    for l in param.layers:
        sub = _DATA_PARAMS.get(l.type)
        if sub is not None:
            p = getattr(l, sub)
            if any(p.HasField(f) for f in ('scale', 'mean_file', 'crop_size', 'mirror')):
                return True
    return False


_DATA_PARAMS = {V1.DATA: 'data_param', V1.IMAGE_DATA: 'image_data_param',
                V1.WINDOW_DATA: 'window_data_param'}


# ------------------------------------------------------------------ entry point
def upgrade_v1_net(param, source='<net>'):
    """Upgrade a NetParameter using V0/V1 ``layers`` to current ``layer`` syntax, in place."""
    if net_needs_v0_upgrade(param):
        log.info('Attempting to upgrade input file specified using deprecated V0LayerParameter: %s',
                 source)
        ok = upgrade_v0_net(param, source)
        if not ok:
            log.warning('%s: had one or more problems upgrading V0NetParameter to NetParameter'
                        ' (see above); continuing anyway.', source)
    if net_needs_data_upgrade(param):
        upgrade_net_data_transformation(param)
    if net_needs_v1_upgrade(param):
        ok = upgrade_v1_layers(param, source)
        if not ok:
            log.warning('%s: had one or more problems upgrading V1LayerParameter (see above);'
                        ' continuing anyway.', source)
    return param


def upgrade_net_as_needed(param, source='<net>'):
    """All of Caffe's net upgrades that minicaffe.upgrade owns: V0/V1 layers and BatchNorm."""
    if len(param.layers):
        upgrade_v1_net(param, source)
    upgrade_batchnorm(param)
    return param


# ------------------------------------------------------------------ V0 -> V1
def _where(source, conn, i):
    name = conn.layer.name if conn.HasField('layer') else conn.name
    return '%s: layers[%d] ("%s")' % (source, i, name)


def fold_padding_layers(param, source='<net>'):
    """Caffe's UpgradeV0PaddingLayers: a copy of ``param`` without V0 "padding" layers."""
    out = pb.NetParameter()
    out.CopyFrom(param)
    del out.layers[:]
    last_top = {name: -1 for name in param.input}
    for i, conn in enumerate(param.layers):
        v0 = conn.layer
        if v0.type != 'padding':
            out.layers.add().CopyFrom(conn)
        for j, blob in enumerate(conn.bottom):
            if blob not in last_top:
                raise NetDefinitionError('%s: unknown blob input "%s" (bottom %d); no earlier layer'
                                         ' or input produces it' % (_where(source, conn, i), blob, j))
            top_idx = last_top[blob]
            if top_idx == -1:
                continue
            src = param.layers[top_idx]
            if src.layer.type == 'padding':
                if v0.type not in ('conv', 'pool'):
                    raise NetDefinitionError('%s: a padding layer ("%s") may only feed a conv or pool'
                                             ' layer, not a "%s" layer'
                                             % (_where(source, conn, i), src.layer.name, v0.type))
                if len(conn.bottom) != 1:
                    raise NetDefinitionError('%s: a conv/pool layer fed by a padding layer must have'
                                             ' exactly one bottom' % _where(source, conn, i))
                if len(src.bottom) != 1 or len(src.top) != 1:
                    raise NetDefinitionError('%s: padding layer "%s" must have one bottom and one top'
                                             % (source, src.layer.name))
                target = out.layers[len(out.layers) - 1]
                target.layer.pad = src.layer.pad
                target.bottom[j] = src.bottom[0]
        for blob in conn.top:
            last_top[blob] = i
    return out


def upgrade_v0_net(param, source='<net>'):
    """Caffe's UpgradeV0Net, in place; returns False if some field could not be upgraded."""
    padded = fold_padding_layers(param, source)
    new = pb.NetParameter()
    if padded.HasField('name'):
        new.name = padded.name
    ok = True
    for i, conn in enumerate(padded.layers):
        ok &= upgrade_v0_layer(conn, new.layers.add(), '%s: layers[%d]' % (source, i))
    new.input.extend(padded.input)
    new.input_dim.extend(padded.input_dim)
    if padded.HasField('force_backward'):
        new.force_backward = padded.force_backward
    param.Clear()
    param.CopyFrom(new)
    return ok


def upgrade_v0_layer_type(type_name, where='<net>'):
    try:
        return V0_TYPES[type_name]
    except KeyError:
        raise NetDefinitionError('%s: unknown V0 layer type "%s" (known: %s)'
                                 % (where, type_name, ', '.join(sorted(V0_TYPES)))) from None


def upgrade_v0_layer(conn, out, where='<net>'):
    """Caffe's UpgradeV0LayerParameter: V1 ``conn`` holding a V0 ``layer`` -> V1 ``out``."""
    out.Clear()
    out.bottom.extend(conn.bottom)
    out.top.extend(conn.top)
    if not conn.HasField('layer'):
        return True
    v0 = conn.layer
    t = v0.type
    ok = [True]
    where = '%s ("%s")' % (where, v0.name)

    def bad(field):
        log.error('%s: unknown parameter %s for layer type %s', where, field, t)
        ok[0] = False

    def has(field):
        return v0.HasField(field)

    if has('name'):
        out.name = v0.name
    if has('type'):
        out.type = upgrade_v0_layer_type(t, where)
    out.blobs.extend(v0.blobs)
    out.blobs_lr.extend(v0.blobs_lr)
    out.weight_decay.extend(v0.weight_decay)
    conv_ip = {'conv': 'convolution_param', 'innerproduct': 'inner_product_param'}
    if has('num_output'):
        if t in conv_ip:
            getattr(out, conv_ip[t]).num_output = v0.num_output
        else:
            bad('num_output')
    if has('biasterm'):
        if t in conv_ip:
            getattr(out, conv_ip[t]).bias_term = v0.biasterm
        else:
            bad('biasterm')
    for f in ('weight_filler', 'bias_filler'):
        if has(f):
            if t in conv_ip:
                getattr(getattr(out, conv_ip[t]), f).CopyFrom(getattr(v0, f))
            else:
                bad(f)
    for v0_field, field in (('pad', 'pad'), ('kernelsize', 'kernel_size'), ('stride', 'stride')):
        if has(v0_field):
            value = getattr(v0, v0_field)
            if t == 'conv':
                getattr(out.convolution_param, field).append(value)
            elif t == 'pool':
                setattr(out.pooling_param, field, value)
            else:
                bad(v0_field)
    if has('group'):
        if t == 'conv':
            out.convolution_param.group = v0.group
        else:
            bad('group')
    if has('pool'):
        if t == 'pool':
            # V0 and current PoolMethod enums agree: MAX 0, AVE 1, STOCHASTIC 2.
            out.pooling_param.pool = {pb.V0LayerParameter.MAX: pb.PoolingParameter.MAX,
                                      pb.V0LayerParameter.AVE: pb.PoolingParameter.AVE,
                                      pb.V0LayerParameter.STOCHASTIC: pb.PoolingParameter.STOCHASTIC}[v0.pool]
        else:
            bad('pool')
    if has('dropout_ratio'):
        if t == 'dropout':
            out.dropout_param.dropout_ratio = v0.dropout_ratio
        else:
            bad('dropout_ratio')
    for f in ('local_size', 'alpha', 'beta', 'k'):
        if has(f):
            if t == 'lrn':
                setattr(out.lrn_param, f, getattr(v0, f))
            else:
                bad(f)
    source_params = {'data': 'data_param', 'hdf5_data': 'hdf5_data_param',
                     'images': 'image_data_param', 'window_data': 'window_data_param',
                     'infogain_loss': 'infogain_loss_param'}
    if has('source'):
        if t in source_params:
            getattr(out, source_params[t]).source = v0.source
        else:
            bad('source')
    if has('scale'):
        out.transform_param.scale = v0.scale
    if has('meanfile'):
        out.transform_param.mean_file = v0.meanfile
    if has('batchsize'):
        if t in ('data', 'hdf5_data', 'images', 'window_data'):
            getattr(out, source_params[t]).batch_size = v0.batchsize
        else:
            bad('batchsize')
    if has('cropsize'):
        out.transform_param.crop_size = v0.cropsize
    if has('mirror'):
        out.transform_param.mirror = v0.mirror
    if has('rand_skip'):
        if t in ('data', 'images'):
            getattr(out, source_params[t]).rand_skip = v0.rand_skip
        else:
            bad('rand_skip')
    for v0_field, field in (('shuffle_images', 'shuffle'), ('new_height', 'new_height'),
                            ('new_width', 'new_width')):
        if has(v0_field):
            if t == 'images':
                setattr(out.image_data_param, field, getattr(v0, v0_field))
            else:
                bad(v0_field)
    if has('concat_dim'):
        if t == 'concat':
            out.concat_param.concat_dim = v0.concat_dim
        else:
            bad('concat_dim')
    for v0_field, field in (('det_fg_threshold', 'fg_threshold'), ('det_bg_threshold', 'bg_threshold'),
                            ('det_fg_fraction', 'fg_fraction'), ('det_context_pad', 'context_pad'),
                            ('det_crop_mode', 'crop_mode')):
        if has(v0_field):
            if t == 'window_data':
                setattr(out.window_data_param, field, getattr(v0, v0_field))
            else:
                bad(v0_field)
    if has('hdf5_output_param'):
        if t == 'hdf5_output':
            out.hdf5_output_param.CopyFrom(v0.hdf5_output_param)
        else:
            bad('hdf5_output_param')
    return ok[0]


# ------------------------------------------------------------------ data transformation
def upgrade_net_data_transformation(param):
    """Caffe's UpgradeNetDataTransformation (V1 layers, in place)."""
    for l in param.layers:
        sub = _DATA_PARAMS.get(l.type)
        if sub is None:
            continue
        p = getattr(l, sub)
        for f in ('scale', 'mean_file', 'crop_size', 'mirror'):
            if p.HasField(f):
                setattr(l.transform_param, f, getattr(p, f))
                p.ClearField(f)
    return param


# ------------------------------------------------------------------ V1 -> current
def upgrade_v1_layers(param, source='<net>'):
    """Caffe's UpgradeV1Net, in place; returns False if some layer had problems."""
    ok = True
    if len(param.layer):
        log.error('%s: the NetParameter to be upgraded already specifies "layer" fields; these'
                  ' will be ignored for the upgrade (use either V1 "layers" or "layer", not both)',
                  source)
        ok = False
    v1_layers = list(param.layers)
    new_layers = []
    for i, v1 in enumerate(v1_layers):
        lp = pb.LayerParameter()
        if not upgrade_v1_layer(v1, lp, '%s: layers[%d] ("%s")' % (source, i, v1.name)):
            log.error('%s: upgrade of input layer %d failed.', source, i)
            ok = False
        new_layers.append(lp)
    del param.layers[:]
    del param.layer[:]
    param.layer.extend(new_layers)
    return ok


def upgrade_v1_layer_type(v1_type, where='<net>'):
    try:
        return V1_TYPES[v1_type]
    except KeyError:
        raise NetDefinitionError('%s: unknown V1LayerParameter layer type %d' % (where, v1_type)) from None


def upgrade_v1_layer(v1, lp, where='<net>'):
    """Caffe's UpgradeV1LayerParameter: V1LayerParameter ``v1`` -> LayerParameter ``lp``."""
    lp.Clear()
    ok = True
    lp.bottom.extend(v1.bottom)
    lp.top.extend(v1.top)
    if v1.HasField('name'):
        lp.name = v1.name
    for rule in v1.include:
        lp.include.add().CopyFrom(rule)
    for rule in v1.exclude:
        lp.exclude.add().CopyFrom(rule)
    if v1.HasField('type'):
        lp.type = upgrade_v1_layer_type(v1.type, where)
    lp.blobs.extend(v1.blobs)

    def spec(i):
        while len(lp.param) <= i:
            lp.param.add()
        return lp.param[i]

    for i, name in enumerate(v1.param):
        spec(i).name = name
    for i, mode in enumerate(v1.blob_share_mode):
        if mode == V1.STRICT:
            spec(i).share_mode = pb.ParamSpec.STRICT
        elif mode == V1.PERMISSIVE:
            spec(i).share_mode = pb.ParamSpec.PERMISSIVE
        else:
            raise NetDefinitionError('%s: unknown blob_share_mode %d' % (where, mode))
    for i, lr in enumerate(v1.blobs_lr):
        spec(i).lr_mult = lr
    for i, decay in enumerate(v1.weight_decay):
        spec(i).decay_mult = decay
    lp.loss_weight.extend(v1.loss_weight)
    for f in V1_PARAM_FIELDS:
        if v1.HasField(f):
            getattr(lp, f).CopyFrom(getattr(v1, f))
    if v1.HasField('layer'):
        log.error('%s: input NetParameter has V0 layer -- ignoring.', where)
        ok = False
    return ok


# ------------------------------------------------------------------ BatchNorm
def net_needs_batchnorm_upgrade(param):
    return any(l.type == 'BatchNorm' and len(l.param) == 3 for l in param.layer)


def upgrade_batchnorm(param):
    """Caffe's UpgradeNetBatchNorm: three declared param specs -> lr_mult = decay_mult = 0."""
    for l in param.layer:
        if l.type == 'BatchNorm' and len(l.param) == 3:
            for p in l.param:
                p.lr_mult = 0.0
                p.decay_mult = 0.0
    return param


# ------------------------------------------------------------------ solver
def solver_needs_type_upgrade(param):
    return param.HasField('solver_type')


def upgrade_solver(param, source='<solver>'):
    """Caffe's UpgradeSolverType: legacy ``solver_type`` enum -> ``type`` string, in place."""
    if not param.HasField('solver_type'):
        return param
    if param.HasField('type'):
        raise MinicaffeError('%s: failed to upgrade solver: the old solver_type field (enum) and the'
                             ' new type field (string) cannot both be given; keep only type' % source)
    try:
        param.type = SOLVER_TYPES[param.solver_type]
    except KeyError:
        raise MinicaffeError('%s: unknown solver_type %d' % (source, param.solver_type)) from None
    param.ClearField('solver_type')
    return param
