#!/usr/bin/env python
"""Random nets, run by real Caffe and by minicaffe, compared number for number.

    python tools/caffe_diff.py --caffe /path/to/caffe/build/tools/caffe --cases 50 --seed 1

Each case is a random chain of layers (convolution, pooling, neurons, LRN,
BatchNorm, Scale, MVN, two-branch Eltwise/Concat, InnerProduct, ...) with random
parameters, fed by an HDF5Data layer and ending in a loss.  minicaffe fills the
weights and writes them as a .caffemodel; then

* **forward**: ``caffe test`` prints every element of the net's outputs (the loss
  and the last feature blob); minicaffe's forward must match them;
* **backward**: one SGD step with base_lr 1 and no momentum or decay, so that the
  snapshot Caffe writes holds ``w - dL/dw`` for every parameter: minicaffe's
  ``solver.step(1)`` must give the same weights.

A case that differs is kept under ``--keep`` (net, solver, data, weights, both
outputs) with a line naming the blob or parameter and the largest error.  Real
Caffe is a reference tool, never a dependency: this script and its tests run only
when a ``caffe`` binary is given.  A few nets crash real Caffe itself ("double free or
corruption": its CPU MAX pooling writes the gradient of a window without a winner at
index -1, before the blob, for the first channel plane); they are reported as not
run.  tests/test_caffe_diff.py reads ``MINICAFFE_CAFFE_BIN``.  Exit status: 0 all
cases agree (or differ only where the case is ill-conditioned), 1 some differ.
"""
import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Caffe prints scores with C++'s default 6 significant digits; our float32 results
# are compared at that precision, plus an absolute floor for values near 0.
PRINT_RTOL, PRINT_ATOL = 2e-5, 2e-5
# Parameters after one step: float32 results of the same sums in other orders.
STEP_RTOL, STEP_ATOL = 1e-4, 1e-5


# ---------------------------------------------------------------- random nets
class NetBuilder(object):
    """Grows a random layer chain; shapes are checked by building it in minicaffe."""

    def __init__(self, rs, batch, channels, height, width, classes, max_kernel=4):
        self.rs = rs
        self.max_kernel = max_kernel    # largest square convolution kernel drawn
        self.classes = classes
        self.data_shape = self.shape = (batch, channels, height, width)
        self.layers = []            # prototxt text of each layer
        self.top = 'data'
        self.count = 0

    def _name(self, kind):
        self.count += 1
        return '%s%d' % (kind.lower(), self.count)

    def shapes(self, layers):
        """Blob shapes of the net data -> layers (TEST phase), or None if it is invalid."""
        import minicaffe as caffe
        text = ('layer { name: "data" type: "Input" top: "data" input_param { shape { %s } } }\n'
                % ' '.join('dim: %d' % d for d in self.data_shape)) + '\n'.join(layers)
        with tempfile.NamedTemporaryFile('w', suffix='.prototxt', delete=False) as f:
            f.write(text)
        try:
            net = caffe.Net(f.name, caffe.TEST)
            return {k: tuple(b.data.shape) for k, b in net.blobs.items()}
        except Exception:
            return None
        finally:
            os.unlink(f.name)

    def try_add(self, texts, top):
        if not texts:
            return False
        shapes = self.shapes(self.layers + texts)
        if shapes is None or any(0 in s for s in shapes.values()) or np.prod(shapes[top]) > 20000:
            return False
        self.layers += texts
        self.top = top
        self.shape = shapes[top]
        return True

    # -- layer makers: each returns (texts, top) for the current top
    def conv(self, kind='Convolution'):
        rs, c = self.rs, self.shape[1]
        group = int(rs.choice([g for g in (1, 2, 3) if c % g == 0]))
        num_output = group * int(rs.randint(1, 5))
        k = int(rs.randint(1, self.max_kernel + 1))
        dilation = int(rs.choice([1, 1, 2]))
        if rs.rand() < 0.25:           # rectangular kernel, stride and padding
            geometry = ['kernel_h: %d' % k, 'kernel_w: %d' % rs.randint(1, 5),
                        'stride_h: %d' % rs.randint(1, 3), 'stride_w: %d' % rs.randint(1, 3),
                        'pad_h: %d' % rs.randint(0, 3), 'pad_w: %d' % rs.randint(0, 3)]
        else:
            geometry = ['kernel_size: %d' % k, 'stride: %d' % rs.randint(1, 3),
                        'pad: %d' % rs.randint(0, 3)]
        params = ['num_output: %d' % num_output] + geometry + [
                  'dilation: %d' % dilation, 'group: %d' % group,
                  'weight_filler { type: "gaussian" std: 0.3 }',
                  'bias_filler { type: "uniform" min: -0.5 max: 0.5 }']
        if rs.rand() < 0.2:
            params.append('bias_term: false')
        if kind == 'Convolution' and rs.rand() < 0.3:
            params.append('engine: CAFFE')
        name = self._name(kind)
        return (['layer { name: "%s" type: "%s" bottom: "%s" top: "%s" convolution_param { %s } }'
                 % (name, kind, self.top, name, ' '.join(params))], name)

    def pool(self):
        rs = self.rs
        k = int(rs.randint(1, 4))
        params = ['pool: %s' % rs.choice(['MAX', 'AVE']), 'kernel_size: %d' % k,
                  'stride: %d' % rs.randint(1, 3), 'pad: %d' % rs.randint(0, k)]
        if rs.rand() < 0.15:
            params = ['pool: %s' % rs.choice(['MAX', 'AVE']), 'global_pooling: true']
        name = self._name('pool')
        return (['layer { name: "%s" type: "Pooling" bottom: "%s" top: "%s" pooling_param { %s } }'
                 % (name, self.top, name, ' '.join(params))], name)

    def neuron(self):
        rs = self.rs
        kind = rs.choice(['ReLU', 'ReLU', 'PReLU', 'ELU', 'Sigmoid', 'TanH', 'AbsVal', 'BNLL',
                          'Power', 'Swish', 'Clip', 'Exp'])
        extra = ''
        if kind == 'ReLU' and rs.rand() < 0.5:
            extra = 'relu_param { negative_slope: %g }' % round(rs.uniform(0.01, 0.5), 3)
        elif kind == 'PReLU':
            extra = 'prelu_param { channel_shared: %s filler { type: "uniform" min: 0 max: 0.5 } }' % (
                'true' if rs.rand() < 0.3 else 'false')
        elif kind == 'ELU':
            extra = 'elu_param { alpha: %g }' % round(rs.uniform(0.5, 2), 3)
        elif kind == 'Power':
            extra = 'power_param { power: %g scale: %g shift: %g }' % (
                rs.choice([1, 2]), round(rs.uniform(0.5, 1.5), 3), round(rs.uniform(-0.5, 0.5), 3))
        elif kind == 'Swish':
            extra = 'swish_param { beta: %g }' % round(rs.uniform(0.5, 2), 3)
        elif kind == 'Clip':
            extra = 'clip_param { min: %g max: %g }' % (round(rs.uniform(-1, 0), 3),
                                                         round(rs.uniform(0.1, 1), 3))
        elif kind == 'Exp':
            extra = 'exp_param { scale: 0.5 }'
        name = self._name(kind)
        in_place = kind in ('ReLU', 'Sigmoid', 'TanH', 'Clip') and rs.rand() < 0.5
        top = self.top if in_place else name
        return (['layer { name: "%s" type: "%s" bottom: "%s" top: "%s" %s }'
                 % (name, kind, self.top, top, extra)], top)

    def lrn(self):
        rs = self.rs
        region = rs.choice(['ACROSS_CHANNELS', 'WITHIN_CHANNEL'])
        name = self._name('lrn')
        return (['layer { name: "%s" type: "LRN" bottom: "%s" top: "%s" lrn_param { local_size: %d'
                 ' alpha: %g beta: %g k: %g norm_region: %s } }'
                 % (name, self.top, name, rs.choice([1, 3, 5]), round(rs.uniform(0.1, 2), 3),
                    round(rs.uniform(0.5, 1), 3), round(rs.uniform(1, 2), 3), region)], name)

    def batchnorm(self):
        # With use_global_stats the stored statistics (filled in by _fill_weights)
        # normalise in both phases; without it TRAIN normalises with the batch's and
        # updates the stored moving averages (compared after the step).
        name = self._name('bn')
        eps = round(float(self.rs.uniform(1e-5, 1e-2)), 6)
        if self.rs.rand() < 0.5:
            extra = 'use_global_stats: true eps: %g' % eps
        else:
            extra = 'moving_average_fraction: %g eps: %g' % (round(float(self.rs.uniform(0.5, 1)), 3), eps)
        return (['layer { name: "%s" type: "BatchNorm" bottom: "%s" top: "%s"'
                 ' batch_norm_param { %s } }' % (name, self.top, name, extra)], name)

    def reshape_like(self):
        """Flatten, Reshape (to C*H, W) or Softmax over a random axis: shape plumbing."""
        rs = self.rs
        name = self._name('shape')
        which = rs.randint(3)
        if which == 0:
            return (['layer { name: "%s" type: "Flatten" bottom: "%s" top: "%s" }'
                     % (name, self.top, name)], name)
        if which == 1:
            return (['layer { name: "%s" type: "Reshape" bottom: "%s" top: "%s" reshape_param {'
                     ' shape { dim: 0 dim: 1 dim: -1 dim: %d } } }' % (name, self.top, name, self.shape[3])],
                    name)
        return (['layer { name: "%s" type: "Softmax" bottom: "%s" top: "%s" softmax_param { axis: %d } }'
                 % (name, self.top, name, rs.randint(1, 4))], name)

    def slice_concat(self):
        """Slice the channels (or rows) in two, treat one part, concatenate again."""
        rs = self.rs
        axis = int(rs.choice([1, 2]))
        if self.shape[axis] < 2:
            return [], self.top
        point = int(rs.randint(1, self.shape[axis]))
        a, b, t, name = self._name('sa'), self._name('sb'), self._name('st'), self._name('cat')
        return (['layer { name: "%s" type: "Slice" bottom: "%s" top: "%s" top: "%s" slice_param {'
                 ' axis: %d slice_point: %d } }' % (a, self.top, a, b, axis, point),
                 'layer { name: "%s" type: "TanH" bottom: "%s" top: "%s" }' % (t, b, t),
                 'layer { name: "%s" type: "Concat" bottom: "%s" bottom: "%s" top: "%s" concat_param {'
                 ' axis: %d } }' % (name, t, a, name, axis)], name)

    def spp_or_tile(self):
        rs = self.rs
        name = self._name('st')
        if rs.rand() < 0.5:
            return (['layer { name: "%s" type: "SPP" bottom: "%s" top: "%s" spp_param { pyramid_height: %d'
                     ' pool: %s } }' % (name, self.top, name, rs.randint(1, 3), rs.choice(['MAX', 'AVE']))],
                    name)
        return (['layer { name: "%s" type: "Tile" bottom: "%s" top: "%s" tile_param { axis: %d tiles: %d } }'
                 % (name, self.top, name, rs.randint(1, 4), rs.randint(1, 3))], name)

    def crop(self):
        """Crop a 1x1 convolution of the blob to a pooled copy of it (two bottoms)."""
        rs = self.rs
        small, big, name = self._name('small'), self._name('big'), self._name('crop')
        return (['layer { name: "%s" type: "Pooling" bottom: "%s" top: "%s" pooling_param { pool: MAX'
                 ' kernel_size: 2 stride: 2 } }' % (small, self.top, small),
                 'layer { name: "%s" type: "Convolution" bottom: "%s" top: "%s" convolution_param {'
                 ' num_output: %d kernel_size: 1 weight_filler { type: "gaussian" std: 0.3 } } }'
                 % (big, self.top, big, self.shape[1]),
                 'layer { name: "%s" type: "Crop" bottom: "%s" bottom: "%s" top: "%s" crop_param {'
                 ' axis: 2 offset: %d } }' % (name, big, small, name, rs.randint(0, 2))], name)

    def scale(self):
        rs = self.rs
        name = self._name('scale')
        kind = rs.choice(['Scale', 'Bias'])
        param = ('scale_param { bias_term: %s filler { type: "uniform" min: 0.5 max: 1.5 }'
                 ' bias_filler { type: "uniform" min: -0.5 max: 0.5 } }' % rs.choice(['true', 'false'])
                 if kind == 'Scale' else 'bias_param { filler { type: "uniform" min: -0.5 max: 0.5 } }')
        return (['layer { name: "%s" type: "%s" bottom: "%s" top: "%s" %s }'
                 % (name, kind, self.top, name, param)], name)

    def mvn(self):
        rs = self.rs
        name = self._name('mvn')
        return (['layer { name: "%s" type: "MVN" bottom: "%s" top: "%s" mvn_param {'
                 ' normalize_variance: %s across_channels: %s } }'
                 % (name, self.top, name, rs.choice(['true', 'false']), rs.choice(['true', 'false']))],
                name)

    def branches(self):
        """Two parallel branches (convolution / neuron / pooling 1x1) joined by Eltwise or Concat."""
        rs = self.rs
        a, b = self._name('a'), self._name('b')
        k = 'kernel_size: 3 pad: 1' if rs.rand() < 0.5 else 'kernel_size: 1'
        c = self.shape[1]
        num = c if rs.rand() < 0.5 else int(rs.randint(1, 6))
        conv = ('layer { name: "%s" type: "Convolution" bottom: "%s" top: "%s" convolution_param {'
                ' num_output: %d %s weight_filler { type: "gaussian" std: 0.3 } } }' % (a, self.top, a, num, k))
        other = ('layer { name: "%s" type: "Convolution" bottom: "%s" top: "%s" convolution_param {'
                 ' num_output: %d kernel_size: 1 weight_filler { type: "gaussian" std: 0.3 }'
                 ' bias_filler { type: "constant" value: 0.1 } } }' % (b, self.top, b, num))
        name = self._name('join')
        if rs.rand() < 0.5:
            op = rs.choice(['SUM', 'PROD', 'MAX'])
            coeff = ' coeff: %g coeff: %g' % (round(rs.uniform(-1, 2), 3), round(rs.uniform(-1, 2), 3)) \
                if op == 'SUM' and rs.rand() < 0.5 else ''
            join = ('layer { name: "%s" type: "Eltwise" bottom: "%s" bottom: "%s" top: "%s"'
                    ' eltwise_param { operation: %s%s } }' % (name, a, b, name, op, coeff))
        else:
            join = ('layer { name: "%s" type: "Concat" bottom: "%s" bottom: "%s" top: "%s" }'
                    % (name, a, b, name))
        return [conv, other, join], name

    def inner_product(self):
        rs = self.rs
        name = self._name('ip')
        return (['layer { name: "%s" type: "InnerProduct" bottom: "%s" top: "%s" inner_product_param {'
                 ' num_output: %d weight_filler { type: "gaussian" std: 0.1 }'
                 ' bias_filler { type: "uniform" min: -0.5 max: 0.5 } } }'
                 % (name, self.top, name, rs.randint(2, 12))], name)

    def build(self, depth):
        four_d = [self.conv, self.conv, self.pool, self.neuron, self.neuron, self.lrn, self.batchnorm,
                  self.scale, self.mvn, self.branches, lambda: self.conv('Deconvolution'),
                  self.reshape_like, self.slice_concat, self.spp_or_tile, self.crop]
        tries = 0
        while not self.try_add(*self.conv()):      # a parametric layer first: its step sees every gradient
            tries += 1
            if tries > 20:
                return None
        tries = 0
        while len(self.layers) < depth and tries < 60:
            tries += 1
            maker = four_d[self.rs.randint(len(four_d))] if len(self.shape) == 4 else self.neuron
            self.try_add(*maker())
        ip = self.inner_product()
        if not self.try_add(*ip):
            return None
        if self.rs.rand() < 0.5:
            self.try_add(*self.neuron())
        classes = self.inner_product_named('logits', self.classes)
        if not self.try_add(*classes):
            return None
        return self

    def inner_product_named(self, name, num):
        return (['layer { name: "%s" type: "InnerProduct" bottom: "%s" top: "%s" inner_product_param {'
                 ' num_output: %d weight_filler { type: "gaussian" std: 0.1 } } }'
                 % (name, self.top, name, num)], name)


LOSSES = [
    'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "%(top)s" bottom: "label" top: "loss" }',
    'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "%(top)s" bottom: "label" top: "loss"'
    ' loss_param { ignore_label: 1 normalization: %(norm)s } }',
    'layer { name: "loss" type: "EuclideanLoss" bottom: "%(top)s" bottom: "target" top: "loss" }',
    'layer { name: "loss" type: "SigmoidCrossEntropyLoss" bottom: "%(top)s" bottom: "target01"'
    ' top: "loss" }',
    'layer { name: "loss" type: "HingeLoss" bottom: "%(top)s" bottom: "label" top: "loss"'
    ' hinge_loss_param { norm: %(hinge)s } }',
]


def net_text(builder, source, batch, loss=0, rs=None):
    """The whole net: HDF5Data (data, label, target, target01), the builder's layers,
    loss ``loss`` (an index into LOSSES) and an identity ``features`` output."""
    head = ('name: "random"\n'
            'layer { name: "data" type: "HDF5Data" top: "data" top: "label" top: "target"'
            ' top: "target01" hdf5_data_param { source: "%s" batch_size: %d } }\n' % (source, batch))
    rs = rs or np.random.RandomState(0)
    loss_text = LOSSES[loss] % {'top': builder.top, 'norm': rs.choice(['VALID', 'BATCH_SIZE', 'NONE', 'FULL']),
                                'hinge': rs.choice(['L1', 'L2'])}
    tail = ('\n%s\nlayer { name: "features" type: "Power" bottom: "%s" top: "features" }\n'
            % (loss_text, builder.top))
    return head + '\n'.join(builder.layers) + tail


# ---------------------------------------------------------------- running one case
@contextlib.contextmanager
def inside(folder):
    """Run the block in ``folder``: Caffe (started there) and minicaffe then resolve
    the case's relative file paths alike."""
    here = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(here)


def step_differences(ours, theirs, scale_atol=True):
    """(name, index, shape, report) for each parameter of net ``ours`` that differs
    from the same one of net ``theirs`` after training steps; the absolute tolerance
    grows with the parameter's largest value unless ``scale_atol`` is false."""
    out = []
    for name, blobs in ours.params.items():
        for i, b in enumerate(blobs):
            ref = theirs.params[name][i].data
            atol = STEP_ATOL * max(1.0, float(np.abs(ref).max())) if scale_atol else STEP_ATOL
            bad = _worst(b.data, ref, STEP_RTOL, atol)
            if bad:
                out.append((name, i, b.data.shape, bad))
    return out


def _fill_weights(net, rs):
    """BatchNorm's statistics (mean, variance > 0, scale factor) are not learned by a
    filler: give them values so that TEST-phase normalisation is exercised."""
    for name, layer in zip(net._layer_names, net.layers):
        if layer.type == 'BatchNorm':
            mean, var, factor = (b.data for b in layer.blobs)
            mean[...] = rs.uniform(-1, 1, mean.shape)
            var[...] = rs.uniform(0.2, 2, var.shape)
            factor[...] = rs.uniform(0.5, 2)


def _caffe_env():
    env = dict(os.environ, GLOG_logtostderr='1', OPENBLAS_NUM_THREADS='1', OMP_NUM_THREADS='1')
    return env


SCORE = re.compile(r'Batch 0, (\S+) = (\S+)$')


def caffe_forward(caffe_bin, folder):
    proc = subprocess.run([caffe_bin, 'test', '-model', 'net.prototxt', '-weights', 'init.caffemodel',
                           '-iterations', '1'], cwd=folder, env=_caffe_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    if proc.returncode != 0:
        return None, proc.stdout[-3000:]
    scores = {}
    for line in proc.stdout.splitlines():
        m = SCORE.search(line)
        if m:
            scores.setdefault(m.group(1), []).append(float(m.group(2)))
    return scores, proc.stdout


def caffe_step(caffe_bin, folder, iterations=1):
    proc = subprocess.run([caffe_bin, 'train', '-solver', 'solver.prototxt', '-weights', 'init.caffemodel'],
                          cwd=folder, env=_caffe_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=600)
    path = os.path.join(folder, 'caffe_iter_%d.caffemodel' % iterations)
    if proc.returncode != 0 or not os.path.exists(path):
        return None, proc.stdout[-3000:]
    return path, proc.stdout


def _worst(ours, theirs, rtol, atol):
    ours = np.asarray(ours, np.float64).ravel()
    theirs = np.asarray(theirs, np.float64).ravel()
    if ours.shape != theirs.shape:
        return 'shape %s vs Caffe %s' % (ours.shape, theirs.shape)
    with np.errstate(invalid='ignore'):
        bad = ~((ours == theirs) | (np.abs(ours - theirs) <= atol + rtol * np.abs(theirs)))
    bad &= ~(np.isnan(ours) & np.isnan(theirs))
    if bad.any():
        i = int(np.argmax(np.where(bad, np.abs(ours - theirs), -1)))
        return '%d of %d differ; worst at %d: minicaffe %r, Caffe %r' % (
            bad.sum(), bad.size, i, float(ours[i]), float(theirs[i]))
    return None


def ill_conditioned(net):
    """Why this net's numbers are rounding noise in Caffe itself, or None.

    * activations that are huge (> 1e30) or not finite: whether a sum overflows
      depends on the order of its terms, which differs between BLAS builds;
    * MVN with normalize_variance over a group whose spread is small against its
      mean (std < 0.2 |mean|): x - mean cancels, and the rounding of the BLAS's
      sums (gemv, in an order each BLAS build chooses) is amplified by |mean| / std
      in the output and again in the gradient.
    """
    for name, blob in net.blobs.items():
        a = np.asarray(blob.data)
        if a.size and not (np.isfinite(a).all() and np.abs(a).max() <= 1e30):
            return 'blob %s holds huge or non-finite values' % name
    for lname, layer in zip(net._layer_names, net.layers):
        p = layer.layer_param if hasattr(layer, 'layer_param') else None
        if layer.type != 'MVN' or p is None or not p.mvn_param.normalize_variance:
            continue
        x = np.asarray(net.blobs[net.bottom_names[lname][0]].data, np.float64)
        groups = x.reshape(x.shape[0], -1) if p.mvn_param.across_channels else \
            x.reshape(x.shape[0] * x.shape[1], -1)
        mean, std = groups.mean(axis=1), groups.std(axis=1)
        if (std < 0.2 * np.abs(mean) + 1e-12).any():
            return ('MVN %s normalizes a group whose std is %.2g of its mean'
                    % (lname, float(np.min(std / np.maximum(np.abs(mean), 1e-30)))))
    return None


def run_case(caffe_bin, seed, folder, depth=6, max_kernel=4):
    """Build, run and compare one random net in ``folder``; returns a list of differences
    (empty: they agree) or raises RuntimeError when the case could not be run."""
    with inside(folder):
        return _run_case(caffe_bin, seed, folder, depth, max_kernel)


SOLVER = ('net: "net.prototxt"\nbase_lr: 1\nlr_policy: "fixed"\nmomentum: 0\nweight_decay: 0\n'
          'max_iter: 1\ndisplay: 0\nsnapshot_after_train: true\nsnapshot_prefix: "caffe"\n'
          'solver_mode: CPU\nrandom_seed: 1\n')


def _run_case(caffe_bin, seed, folder, depth, max_kernel=4):
    rs = np.random.RandomState(seed)
    batch = int(rs.randint(1, 4))
    shape = (batch, int(rs.randint(1, 5)), int(rs.randint(5, 14)), int(rs.randint(5, 14)))
    classes = int(rs.randint(2, 6))
    builder = NetBuilder(rs, *shape, classes=classes, max_kernel=max_kernel).build(depth)
    if builder is None:
        raise RuntimeError('no valid net drawn')
    arrays = {'data': rs.standard_normal(shape).astype(np.float32),
              'label': rs.randint(0, classes, batch).astype(np.float32),
              'target': rs.standard_normal((batch, classes)).astype(np.float32),
              'target01': rs.randint(0, 2, (batch, classes)).astype(np.float32)}
    loss = int(rs.randint(len(LOSSES)))
    return compare_net(caffe_bin, folder, net_text(builder, 'list.txt', batch, loss, rs), arrays, rs,
                       seed, outputs=('loss', 'features'))


def compare_net(caffe_bin, folder, text, arrays, rs, seed, outputs):
    """Write the case (data.h5, net, solver, minicaffe's initial weights) into
    ``folder`` (the current folder), then compare the ``outputs`` of a TEST forward
    and every parameter after one SGD step with Caffe's."""
    import h5py
    import minicaffe as caffe
    with h5py.File('data.h5', 'w') as f:
        for k, v in arrays.items():
            f[k] = v
    with open('list.txt', 'w') as f:
        f.write('data.h5\n')           # paths relative to the case folder, where both run
    with open('net.prototxt', 'w') as f:
        f.write(text)
    with open('solver.prototxt', 'w') as f:
        f.write(SOLVER)

    caffe.set_random_seed(seed)
    net = caffe.Net('net.prototxt', caffe.TEST)
    _fill_weights(net, rs)
    net.save('init.caffemodel')
    net.forward()
    differences = []
    reason = ill_conditioned(net)

    scores, log = caffe_forward(caffe_bin, folder)
    if scores is None:
        raise RuntimeError('caffe test failed:\n' + log)
    for blob in outputs:
        bad = _worst(net.blobs[blob].data, scores.get(blob, []), PRINT_RTOL, PRINT_ATOL)
        if bad:
            differences.append('forward %s: %s' % (blob, bad))

    snap, log = caffe_step(caffe_bin, folder)
    if snap is None:
        raise RuntimeError('caffe train failed:\n' + log)
    solver = caffe.get_solver('solver.prototxt')
    solver.net.copy_from('init.caffemodel')
    solver.step(1)
    theirs = caffe.Net('net.prototxt', caffe.TRAIN, weights=snap)
    for name, i, shape, bad in step_differences(solver.net, theirs):
        differences.append('after one step, %s[%d] %s: %s' % (name, i, shape, bad))
    if differences and reason:
        differences.insert(0, ILL + reason)
    return differences


# ---------------------------------------------------------------- recurrent nets
VOCAB = 7


def recurrent_text(rs, T, N, D, classes):
    """data (T, N, D) [or word indices (T, N) through Embed], cont (T, N) -> [InnerProduct]
    -> LSTM or RNN [-> a second one]
    -> InnerProduct over axis 2 -> SoftmaxWithLoss over axis 2 with label (T, N)."""
    layers = ['layer { name: "data" type: "HDF5Data" top: "data" top: "cont" top: "label"'
              ' hdf5_data_param { source: "list.txt" batch_size: %d } }' % T]
    bottom = 'data'
    if rs.rand() < 0.3:        # word indices through Embed, as LRCN's language model
        layers.append('layer { name: "embed" type: "Embed" bottom: "word" top: "embed" embed_param {'
                      ' num_output: %d input_dim: %d bias_term: %s weight_filler { type: "uniform"'
                      ' min: -0.5 max: 0.5 } bias_filler { type: "uniform" min: -0.1 max: 0.1 } } }'
                      % (rs.randint(1, 6), VOCAB, rs.choice(['true', 'false'])))
        layers[0] = layers[0].replace('top: "data"', 'top: "data" top: "word"')
        bottom = 'embed'
    elif rs.rand() < 0.4:
        layers.append('layer { name: "embed" type: "InnerProduct" bottom: "data" top: "embed"'
                      ' inner_product_param { num_output: %d axis: 2 weight_filler { type: "gaussian"'
                      ' std: 0.5 } bias_filler { type: "uniform" min: -0.5 max: 0.5 } } }' % rs.randint(2, 7))
        bottom = 'embed'
    static = rs.rand() < 0.3
    if static:          # its own data layer: HDF5Data cuts batches of T rows, static has N
        layers.append('layer { name: "static_data" type: "HDF5Data" top: "static"'
                      ' hdf5_data_param { source: "static_list.txt" batch_size: %d } }' % N)
    for k in range(1 + (rs.rand() < 0.3)):
        kind = rs.choice(['LSTM', 'RNN'])
        name = 'rec%d' % k
        extra = ' bottom: "static"' if static and k == 0 else ''
        layers.append('layer { name: "%s" type: "%s" bottom: "%s" bottom: "cont"%s top: "%s"'
                      ' recurrent_param { num_output: %d weight_filler { type: "uniform" min: -0.5'
                      ' max: 0.5 } bias_filler { type: "uniform" min: -0.5 max: 0.5 } } }'
                      % (name, kind, bottom, extra, name, rs.randint(1, 8)))
        bottom = name
    layers.append('layer { name: "logits" type: "InnerProduct" bottom: "%s" top: "logits"'
                  ' inner_product_param { num_output: %d axis: 2 weight_filler { type: "gaussian"'
                  ' std: 0.5 } } }' % (bottom, classes))
    layers.append('layer { name: "loss" type: "SoftmaxWithLoss" bottom: "logits" bottom: "label"'
                  ' top: "loss" softmax_param { axis: 2 } }')
    layers.append('layer { name: "features" type: "Power" bottom: "logits" top: "features" }')
    return 'name: "recurrent"\n' + '\n'.join(layers) + '\n', static


def run_recurrent_case(caffe_bin, seed, folder):
    with inside(folder):
        rs = np.random.RandomState(seed)
        T, N, D, classes = int(rs.randint(1, 6)), int(rs.randint(1, 4)), int(rs.randint(1, 6)), \
            int(rs.randint(2, 5))
        text, static = recurrent_text(rs, T, N, D, classes)
        cont = (rs.rand(T, N) < 0.7).astype(np.float32)
        cont[0] = 0                      # every stream starts at t = 0
        arrays = {'data': rs.standard_normal((T, N, D)).astype(np.float32), 'cont': cont,
                  'label': rs.randint(0, classes, (T, N)).astype(np.float32)}
        if '"word"' in text:
            arrays['word'] = rs.randint(0, VOCAB, (T, N)).astype(np.float32)
        if static:
            import h5py
            with h5py.File('static.h5', 'w') as f:
                f['static'] = rs.standard_normal((N, 2)).astype(np.float32)
            with open('static_list.txt', 'w') as f:
                f.write('static.h5\n')
        return compare_net(caffe_bin, folder, text, arrays, rs, seed, outputs=('loss', 'features'))


ILL = 'ill-conditioned: '


# ---------------------------------------------------------------- random solvers
SOLVER_NET = (
    'name: "solver_net"\n'
    'layer { name: "data" type: "HDF5Data" top: "data" top: "label"'
    ' hdf5_data_param { source: "list.txt" batch_size: %(batch)d } }\n'
    'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" %(conv_mult)s'
    ' convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.3 }'
    ' bias_filler { type: "uniform" min: -0.3 max: 0.3 } } }\n'
    'layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }\n'
    'layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip" %(ip_mult)s'
    ' inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.2 }'
    ' bias_filler { type: "uniform" min: -0.3 max: 0.3 } } }\n'
    'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }\n')


def random_solver(rs, iterations):
    """A solver.prototxt drawing the type, the learning-rate policy and the
    regularisation, momentum, gradient clipping and iter_size settings."""
    kind = str(rs.choice(['SGD', 'Nesterov', 'AdaGrad', 'RMSProp', 'AdaDelta', 'Adam']))
    lines = ['net: "net.prototxt"', 'type: "%s"' % kind, 'max_iter: %d' % iterations, 'display: 0',
             'snapshot_after_train: true', 'snapshot_prefix: "caffe"', 'solver_mode: CPU',
             'random_seed: 1', 'snapshot: %d' % (iterations - 1)]
    lr = {'AdaDelta': 1.0, 'Adam': 0.01}.get(kind, 0.1)
    lines.append('base_lr: %g' % round(lr * rs.uniform(0.5, 2), 4))
    policy = str(rs.choice(['fixed', 'step', 'exp', 'inv', 'multistep', 'poly', 'sigmoid']))
    lines.append('lr_policy: "%s"' % policy)
    if policy in ('step', 'exp', 'inv', 'multistep', 'sigmoid'):
        lines.append('gamma: %g' % round(rs.uniform(0.5, 0.99), 3))
    if policy in ('step', 'sigmoid'):
        lines.append('stepsize: %d' % rs.randint(1, 3))
    if policy in ('inv', 'poly'):
        lines.append('power: %g' % round(rs.uniform(0.5, 2), 3))
    if policy == 'multistep':
        lines += ['stepvalue: 1', 'stepvalue: 2']
    if kind in ('SGD', 'Nesterov', 'AdaDelta', 'Adam') and rs.rand() < 0.8:   # (Caffe refuses it
                                                                            # for AdaGrad, RMSProp)
        lines.append('momentum: %g' % round(rs.uniform(0.5, 0.95), 3))
    if kind == 'Adam':
        lines.append('momentum2: %g' % round(rs.uniform(0.9, 0.999), 4))
    if kind == 'RMSProp':
        lines.append('rms_decay: %g' % round(rs.uniform(0.8, 0.99), 3))
    if kind in ('AdaGrad', 'RMSProp', 'AdaDelta', 'Adam') and rs.rand() < 0.5:
        lines.append('delta: %g' % float(rs.choice([1e-8, 1e-6, 1e-4])))
    if rs.rand() < 0.7:
        lines.append('weight_decay: %g' % round(rs.uniform(1e-4, 1e-2), 5))
        lines.append('regularization_type: "%s"' % rs.choice(['L2', 'L1']))
    if rs.rand() < 0.4:
        lines.append('clip_gradients: %g' % round(rs.uniform(0.05, 1), 3))
    if rs.rand() < 0.3:
        lines.append('iter_size: 2')
    return '\n'.join(lines) + '\n', kind


NORMALIZING = ('AdaGrad', 'RMSProp', 'AdaDelta', 'Adam')


def _few(difference):
    """True when a difference line says fewer than 10% of the elements differ (a wrong
    update rule would move most of them)."""
    m = re.search(r'(\d+) of (\d+) differ', difference)
    return bool(m) and int(m.group(1)) < 0.1 * int(m.group(2))


def run_solver_case(caffe_bin, seed, folder, iterations=3):
    """A small net trained ``iterations`` steps by a random solver, in Caffe and in
    minicaffe from the same weights; the weights after the last step are compared."""
    import h5py
    import minicaffe as caffe
    with inside(folder):
        rs = np.random.RandomState(seed)
        batch = int(rs.randint(1, 4))
        mults = ['', 'param { lr_mult: 2 decay_mult: 0 } param { lr_mult: 0.5 decay_mult: 2 }']
        text = SOLVER_NET % {'batch': batch, 'conv_mult': mults[rs.randint(2)],
                             'ip_mult': mults[rs.randint(2)]}
        with h5py.File('data.h5', 'w') as f:       # 4 batches: iter_size 2 reads 2 per step
            f['data'] = rs.standard_normal((4 * batch, 2, 5, 5)).astype(np.float32)
            f['label'] = rs.randint(0, 3, 4 * batch).astype(np.float32)
        with open('list.txt', 'w') as f:
            f.write('data.h5\n')
        with open('net.prototxt', 'w') as f:
            f.write(text)
        solver_text, kind = random_solver(rs, iterations)
        with open('solver.prototxt', 'w') as f:
            f.write(solver_text)
        caffe.set_random_seed(seed)
        caffe.Net('net.prototxt', caffe.TEST).save('init.caffemodel')
        snap, log = caffe_step(caffe_bin, folder, iterations)
        if snap is None:
            raise RuntimeError('caffe train failed (%s):\n%s' % (kind, log))
        theirs = caffe.Net('net.prototxt', caffe.TRAIN, weights=snap)
        # Resumed from the solver state Caffe wrote one step earlier (history, iteration,
        # learning-rate step; the data layers start again from their first batch, in
        # Caffe as here): Caffe's resumed run against minicaffe's.  Caffe's files are
        # read before minicaffe runs: its snapshots have the same names.
        state = 'caffe_iter_%d.solverstate' % (iterations - 1)
        with open(state, 'rb') as f:
            state_bytes = f.read()
        proc = subprocess.run([caffe_bin, 'train', '-solver', 'solver.prototxt', '-snapshot', state],
                              env=_caffe_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError('caffe train -snapshot failed (%s):\n%s' % (kind, proc.stdout[-3000:]))
        theirs_resumed = caffe.Net('net.prototxt', caffe.TRAIN, weights=snap)
        os.makedirs('caffe_state', exist_ok=True)
        for f in (state, state.replace('.solverstate', '.caffemodel')):
            shutil.copy(f, os.path.join('caffe_state', f))
        solver = caffe.get_solver('solver.prototxt')
        solver.net.copy_from('init.caffemodel')
        solver.step(iterations)
        resumed = caffe.get_solver('solver.prototxt')
        with open(state, 'wb') as f:                # Caffe's state again (ours overwrote it)
            f.write(state_bytes)
        shutil.copy(os.path.join('caffe_state', state.replace('.solverstate', '.caffemodel')),
                    state.replace('.solverstate', '.caffemodel'))
        resumed.restore(state)
        resumed.step(1)
        differences = []
        for label, ours, ref_net in (
                ('after %d steps' % iterations, solver, theirs),
                ('resumed from the state at %d, after one more step' % (iterations - 1), resumed,
                 theirs_resumed)):
            for name, i, _, bad in step_differences(ours.net, ref_net):
                differences.append('%s %s, %s[%d]: %s' % (
                    ' '.join(solver_text.split('\n')[1:]), label, name, i, bad))
        if differences and kind in NORMALIZING and all(_few(d) for d in differences):
            differences.insert(0, ILL + '%s divides by the root of squared gradients, so a gradient'
                               ' that is rounding noise (near 0) still makes a full step; a few'
                               ' elements differ' % kind)
        return differences


# ---------------------------------------------------------------- validity
# One layer with parameters drawn around their valid range: real Caffe and minicaffe
# must accept the same nets (and refuse the same ones: a net Caffe refuses with a
# CHECK must get a clear error here, not numbers).
def _random_layer(rs, shape):
    """(type, layer parameter text, number of bottoms) for a 4-D input ``shape``."""
    c = shape[1]
    k = int(rs.randint(0, 6))
    kind = str(rs.choice(['Convolution', 'Deconvolution', 'Pooling', 'LRN', 'InnerProduct',
                          'Softmax', 'Concat', 'Slice', 'Eltwise', 'Crop', 'Reshape', 'Flatten',
                          'Tile', 'Reduction', 'Dropout', 'Power', 'ArgMax', 'BatchNorm', 'Scale',
                          'MVN', 'Embed', 'SPP']))
    if kind in ('Convolution', 'Deconvolution'):
        p = 'convolution_param { num_output: %d kernel_size: %d stride: %d pad: %d group: %d dilation: %d }' % (
            rs.randint(0, 5), k, rs.randint(0, 3), rs.randint(-1, 4), rs.randint(1, 4), rs.randint(0, 3))
        return kind, p, 1
    if kind == 'Pooling':
        extra = ' global_pooling: true' if rs.rand() < 0.2 else ''
        return kind, 'pooling_param { pool: %s kernel_size: %d stride: %d pad: %d%s }' % (
            rs.choice(['MAX', 'AVE', 'STOCHASTIC']), k, rs.randint(0, 3), rs.randint(0, 4), extra), 1
    if kind == 'LRN':
        return kind, 'lrn_param { local_size: %d norm_region: %s }' % (
            rs.randint(0, 6), rs.choice(['ACROSS_CHANNELS', 'WITHIN_CHANNEL'])), 1
    if kind == 'InnerProduct':
        return kind, 'inner_product_param { num_output: %d axis: %d }' % (rs.randint(0, 4), rs.randint(-5, 5)), 1
    if kind == 'Softmax':
        return kind, 'softmax_param { axis: %d }' % rs.randint(-5, 5), 1
    if kind == 'Concat':
        return kind, 'concat_param { axis: %d }' % rs.randint(-5, 5), 2
    if kind == 'Slice':
        points = sorted(rs.randint(-1, c + 2, rs.randint(0, 3)).tolist())
        return kind, 'slice_param { axis: %d %s }' % (
            rs.randint(-1, 4), ' '.join('slice_point: %d' % q for q in points)), 1
    if kind == 'Eltwise':
        coeffs = ' '.join('coeff: 1' for _ in range(rs.randint(0, 4)))
        return kind, 'eltwise_param { operation: %s %s }' % (rs.choice(['SUM', 'PROD', 'MAX']), coeffs), 2
    if kind == 'Crop':
        return kind, 'crop_param { axis: %d offset: %d }' % (rs.randint(-1, 5), rs.randint(0, 4)), 2
    if kind == 'Reshape':
        dims = ' '.join('dim: %d' % d for d in rs.randint(-2, 5, rs.randint(1, 5)))
        return kind, 'reshape_param { shape { %s } }' % dims, 1
    if kind == 'Flatten':
        return kind, 'flatten_param { axis: %d end_axis: %d }' % (rs.randint(-5, 5), rs.randint(-5, 5)), 1
    if kind == 'Tile':
        return kind, 'tile_param { axis: %d tiles: %d }' % (rs.randint(-5, 5), rs.randint(0, 3)), 1
    if kind == 'Reduction':
        return kind, 'reduction_param { operation: %s axis: %d }' % (
            rs.choice(['SUM', 'ASUM', 'SUMSQ', 'MEAN']), rs.randint(-5, 5)), 1
    if kind == 'Dropout':
        # (outside [0, 1) minicaffe refuses the ratio on purpose: Caffe's release build
        # skips its DCHECKs and scales by 1 / (1 - ratio) in TRAIN)
        return kind, 'dropout_param { dropout_ratio: %g }' % round(rs.uniform(0, 0.99), 2), 1
    if kind == 'Power':
        return kind, 'power_param { power: %g }' % rs.choice([0.5, 2, -1, 0]), 1
    if kind == 'ArgMax':
        return kind, 'argmax_param { top_k: %d %s }' % (
            rs.randint(0, 4), 'axis: %d' % rs.randint(-5, 5) if rs.rand() < 0.5 else ''), 1
    if kind == 'BatchNorm':
        return kind, 'batch_norm_param { eps: %g }' % rs.choice([1e-5, 0, -1]), 1
    if kind == 'Scale':
        return kind, 'scale_param { axis: %d num_axes: %d }' % (rs.randint(-5, 5), rs.randint(-2, 4)), 1
    if kind == 'MVN':
        return kind, 'mvn_param { eps: %g }' % rs.choice([1e-9, 0, -1]), 1
    if kind == 'Embed':
        return kind, 'embed_param { num_output: %d input_dim: %d }' % (rs.randint(0, 3), rs.randint(0, 3)), 1
    return kind, 'spp_param { pyramid_height: %d }' % rs.randint(0, 4), 1


def run_validity_case(caffe_bin, seed, folder):
    """Returns [] when Caffe and minicaffe agree on accepting the net, else one line."""
    import minicaffe as caffe
    with inside(folder):
        rs = np.random.RandomState(seed)
        shape = tuple(int(d) for d in (rs.randint(1, 3), rs.randint(1, 5), rs.randint(1, 7), rs.randint(1, 7)))
        kind, param, bottoms = _random_layer(rs, shape)
        other = tuple(int(d) for d in (shape[0], rs.randint(1, 5), shape[2], shape[3])) \
            if rs.rand() < 0.3 else shape
        inputs = 'layer { name: "in" type: "Input" top: "a" top: "b" input_param { shape { %s } shape { %s } } }' % (
            ' '.join('dim: %d' % d for d in shape), ' '.join('dim: %d' % d for d in other))
        text = '%s\nlayer { name: "l" type: "%s" %s top: "t" %s }\n' % (
            inputs, kind, ' '.join('bottom: "%s"' % b for b in 'ab'[:bottoms]), param)
        with open('net.prototxt', 'w') as f:
            f.write(text)
        from minicaffe.protoio import pb
        with open('none.caffemodel', 'wb') as f:    # `caffe test` wants weights: none to copy
            f.write(pb.NetParameter(name='none').SerializeToString())
        proc = subprocess.run([caffe_bin, 'test', '-model', 'net.prototxt', '-weights', 'none.caffemodel',
                               '-iterations', '1'],
                              env=_caffe_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=300)
        caffe_ok = proc.returncode == 0
        why = [ln.split('] ', 1)[-1] for ln in proc.stdout.splitlines()
               if ln.startswith('F') and 'Check failed' in ln or 'FATAL' in ln or 'Error' in ln]
        try:
            net = caffe.Net('net.prototxt', caffe.TEST)
            net.forward()
            ours, message = True, ''
        except caffe.MinicaffeError as e:
            ours, message = False, str(e).splitlines()[0]
        except Exception as e:          # anything else is a crash, never an answer
            return ['%s %s: minicaffe crashed: %s: %s' % (kind, param, type(e).__name__, e)]
        if ours == caffe_ok:
            return []
        if caffe_ok:
            return ['%s %s on %s: Caffe accepts it, minicaffe refuses: %s' % (kind, param, shape, message)]
        crash = proc.returncode < 0 and not why
        return ['%s %s on %s: Caffe %s, minicaffe accepts it' % (
            kind, param, shape, 'crashes (signal %d)' % -proc.returncode if crash else
            'refuses it (%s)' % (why[0] if why else 'exit %d' % proc.returncode))]


# ---------------------------------------------------------------- special values
# Element-wise layers fed NaN, infinities, signed zeros and huge values: Caffe's
# C++ expressions decide what comes out (NaN * 0 is NaN, std::max(NaN, 0) is NaN),
# and minicaffe must give the same.
SPECIAL_LAYERS = [
    ('ReLU', ''), ('ReLU', 'relu_param { negative_slope: 0.1 }'),
    ('PReLU', 'prelu_param { filler { type: "constant" value: 0.25 } }'),
    ('ELU', 'elu_param { alpha: 0.7 }'), ('Sigmoid', ''), ('TanH', ''), ('AbsVal', ''),
    ('BNLL', ''), ('Swish', 'swish_param { beta: 1.5 }'), ('Clip', 'clip_param { min: -1 max: 2 }'),
    ('Power', 'power_param { power: 2 scale: 0.5 shift: 1 }'),
    ('Power', 'power_param { power: 1 scale: -2 shift: 0.5 }'),
    ('Power', 'power_param { power: 0.5 scale: 1 shift: 0 }'),
    ('Power', 'power_param { power: 3 scale: 1 shift: 0 }'),
    ('Exp', ''), ('Exp', 'exp_param { base: 2 scale: 0.5 shift: 1 }'),
    ('Log', ''), ('Log', 'log_param { base: 10 scale: 2 shift: 1 }'),
    ('Threshold', 'threshold_param { threshold: 0.5 }'),
    ('Softmax', ''), ('LRN', 'lrn_param { local_size: 3 alpha: 1 beta: 0.75 }'),
    ('LRN', 'lrn_param { local_size: 3 alpha: 1 beta: 0.75 norm_region: WITHIN_CHANNEL }'),
    ('Pooling', 'pooling_param { pool: MAX kernel_size: 3 stride: 1 pad: 1 }'),
    ('Pooling', 'pooling_param { pool: AVE kernel_size: 3 stride: 1 pad: 1 }'),
    ('MVN', ''), ('Dropout', ''),
]
SPECIAL_VALUES = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e30, -1e30, 88.8, -88.8, 1e-30,
                           -1e-30, 0.5, -0.5, 2.0, -3.0, 1.0], np.float32)


def special_text(kind, param, shape):
    return ('name: "special"\n'
            'layer { name: "data" type: "HDF5Data" top: "data" top: "factor"'
            ' hdf5_data_param { source: "list.txt" batch_size: %d } }\n'
            # a bias over the whole blob, starting at 0: after one step with base_lr 1 it
            # holds minus the layer's bottom gradient, element for element
            'layer { name: "grad" type: "Bias" bottom: "data" top: "x" bias_param { axis: 0 num_axes: -1'
            ' filler { type: "constant" value: 0 } } }\n'
            'layer { name: "layer" type: "%s" bottom: "x" top: "y" %s }\n'
            'layer { name: "seen" type: "Power" bottom: "y" top: "y_out" }\n'
            # the top gradient: the factors (special values too), through Scale's second bottom
            'layer { name: "weigh" type: "Scale" bottom: "y" bottom: "factor" top: "weighted"'
            ' scale_param { axis: 0 } loss_weight: 1 }\n' % (shape[0], kind, param))


def run_special_case(caffe_bin, index, folder, data_seed=None):
    """Layer setting ``index`` (of SPECIAL_LAYERS, cyclically) on data drawn from
    ``data_seed`` (default: the index)."""
    with inside(folder):
        return _run_special_case(caffe_bin, index, folder, index if data_seed is None else data_seed)


def _run_special_case(caffe_bin, index, folder, data_seed):
    import h5py
    import minicaffe as caffe
    kind, param = SPECIAL_LAYERS[index % len(SPECIAL_LAYERS)]
    rs = np.random.RandomState(data_seed)
    shape = (2, 3, 3, 4)
    data = rs.choice(SPECIAL_VALUES, shape).astype(np.float32)
    # Top gradients: finite only.  Caffe's Scale backward multiplies through BLAS
    # scal, and OpenBLAS's scal with a NaN or infinite factor does not give what
    # IEEE multiplication gives: the harness would be testing the BLAS.
    factor = rs.choice(SPECIAL_VALUES[np.isfinite(SPECIAL_VALUES)], shape).astype(np.float32)
    factor[rs.rand(*shape) < 0.5] = 1.0        # mostly plain gradients
    with h5py.File('data.h5', 'w') as f:
        f['data'] = data
        f['factor'] = factor
    with open('list.txt', 'w') as f:
        f.write('data.h5\n')
    with open('net.prototxt', 'w') as f:
        f.write(special_text(kind, param, shape))
    with open('solver.prototxt', 'w') as f:
        f.write('net: "net.prototxt"\nbase_lr: 1\nlr_policy: "fixed"\nmomentum: 0\nweight_decay: 0\n'
                'max_iter: 1\ndisplay: 0\nsnapshot_after_train: true\nsnapshot_prefix: "caffe"\n'
                'solver_mode: CPU\nrandom_seed: 1\n')
    label = '%s %s' % (kind, param) if param else kind
    net = caffe.Net('net.prototxt', caffe.TEST)
    net.save('init.caffemodel')
    net.forward()
    differences = []
    scores, log = caffe_forward(caffe_bin, folder)
    if scores is None:
        raise RuntimeError('caffe test failed (%s):\n%s' % (label, log))
    bad = _worst(net.blobs['y_out'].data, scores.get('y_out', []), PRINT_RTOL, PRINT_ATOL)
    if bad:
        differences.append('%s forward: %s' % (label, bad))
    if kind in ('Dropout', 'Threshold'):
        return differences            # Dropout's TRAIN mask is random; Threshold has no backward
    snap, log = caffe_step(caffe_bin, folder)
    if snap is None:
        raise RuntimeError('caffe train failed (%s):\n%s' % (label, log))
    solver = caffe.get_solver('solver.prototxt')
    solver.net.copy_from('init.caffemodel')
    solver.step(1)
    theirs = caffe.Net('net.prototxt', caffe.TRAIN, weights=snap)
    for name, i, _, bad in step_differences(solver.net, theirs, scale_atol=False):
        what = 'bottom gradient' if name == 'grad' else '%s[%d] after one step' % (name, i)
        differences.append('%s %s: %s' % (label, what, bad))
    return differences


# ---------------------------------------------------------------- bisecting a kept case
def bisect_forward(caffe_bin, case_dir):
    """Every blob of a kept case's TEST forward, compared with Caffe's: the first
    line that differs names the layer to look at.  Returns the report lines."""
    import minicaffe as caffe
    from minicaffe.protoio import pb, read_text
    case_dir = os.path.abspath(case_dir)
    work = tempfile.mkdtemp(prefix='caffe_diff_bisect_')
    try:
        for f in os.listdir(case_dir):
            shutil.copy(os.path.join(case_dir, f), work)
        with inside(work):
            param = read_text('net.prototxt', pb.NetParameter)
            tops = []
            for lp in param.layer:
                for t in lp.top:
                    if t not in tops and lp.type not in ('HDF5Data', 'Input'):
                        tops.append(t)
            for t in tops:       # an identity layer per blob makes it an output Caffe prints
                lp = param.layer.add(name='seen_' + t, type='Power')
                lp.bottom.append(t)
                lp.top.append('seen_' + t)
            with open('net.prototxt', 'w') as f:
                f.write(str(param))
            net = caffe.Net('net.prototxt', caffe.TEST, weights='init.caffemodel')
            net.forward()
            scores, log = caffe_forward(caffe_bin, work)
            if scores is None:
                return ['caffe test failed:', log]
            lines = []
            for t in tops:
                bad = _worst(net.blobs['seen_' + t].data, scores.get('seen_' + t, []), PRINT_RTOL,
                             PRINT_ATOL)
                lines.append('forward  %-24s %s' % (t, bad or 'agrees'))
            lines += _bisect_backward(caffe_bin, work, case_dir, tops)
            return lines
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _bisect_backward(caffe_bin, work, case_dir, tops):
    """The gradient of every blob, through probes: a Bias layer over the whole blob,
    in place right after the layer that wrote it, starting at 0; one SGD step with
    base_lr 1 leaves minus the blob's gradient in it."""
    import minicaffe as caffe
    from minicaffe.protoio import pb, read_text
    for f in os.listdir(case_dir):
        shutil.copy(os.path.join(case_dir, f), work)
    param = read_text('net.prototxt', pb.NetParameter)
    probed = pb.NetParameter()
    probed.CopyFrom(param)
    del probed.layer[:]
    names = []
    for lp in param.layer:
        probed.layer.add().CopyFrom(lp)
        if lp.type in ('HDF5Data', 'Input') or 'Loss' in lp.type or lp.name == 'features':
            continue
        for t in lp.top:
            probe = probed.layer.add(name='probe_%s_%s' % (lp.name, t), type='Bias')
            probe.bottom.append(t)
            probe.top.append(t)
            probe.bias_param.axis = 0
            probe.bias_param.num_axes = -1
            probe.bias_param.filler.type = 'constant'
            names.append((probe.name, '%s (written by %s)' % (t, lp.name)))
    with open('net.prototxt', 'w') as f:
        f.write(str(probed))
    net = caffe.Net('net.prototxt', caffe.TEST)
    for src_name, blobs in caffe.Net(os.path.join(case_dir, 'net.prototxt'), caffe.TEST,
                                     weights=os.path.join(case_dir, 'init.caffemodel')).params.items():
        for i, b in enumerate(blobs):
            net.params[src_name][i].data[...] = b.data
    net.save('init.caffemodel')
    snap, log = caffe_step(caffe_bin, work)
    if snap is None:
        return ['backward: caffe train failed:', log[-2000:]]
    solver = caffe.get_solver('solver.prototxt')
    solver.net.copy_from('init.caffemodel')
    solver.step(1)
    theirs = caffe.Net('net.prototxt', caffe.TRAIN, weights=snap)
    lines = []
    for probe, what in reversed(names):       # backward order: the first that differs is the culprit
        ref = theirs.params[probe][0].data
        bad = _worst(solver.net.params[probe][0].data, ref, STEP_RTOL,
                     STEP_ATOL * max(1.0, float(np.abs(ref).max())))
        lines.append('gradient %-40s %s' % (what, bad or 'agrees'))
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--caffe', required=True, help="real Caffe's caffe binary")
    p.add_argument('--cases', type=int, default=20, help='random nets to compare')
    p.add_argument('--seed', type=int, default=1, help='seed of the first case (then +1 each)')
    p.add_argument('--depth', type=int, default=6, help='layers drawn per net (at most)')
    p.add_argument('--max-kernel', type=int, default=4,
                   help='largest square convolution kernel drawn (5-7 reach the 5x5 and'
                        ' strided Winograd forms under MINICAFFE_CONV_ENGINE=winograd;'
                        ' the default draws what earlier runs drew, seed for seed)')
    p.add_argument('--keep', default='caffe_diff_cases', help='folder for the cases that differ')
    p.add_argument('--special', action='store_true',
                   help='instead of random nets: each element-wise layer fed NaN, infinities,'
                        ' signed zeros and huge values (one case per layer setting; --cases'
                        ' rounds up to all %d)' % len(SPECIAL_LAYERS))
    p.add_argument('--solvers', action='store_true',
                   help='random solvers (type, lr policy, momentum, decay L1/L2, clipping,'
                        ' iter_size, lr/decay multipliers) on a small net, 3 steps, instead')
    p.add_argument('--validity', action='store_true',
                   help='one layer with parameters drawn around their valid range: Caffe and'
                        ' minicaffe must accept (and refuse) the same nets')
    p.add_argument('--recurrent', action='store_true',
                   help='random LSTM/RNN nets (sequences with cont, static input) instead')
    p.add_argument('--bisect', metavar='CASE_DIR',
                   help='compare every blob of a kept case (forward) and stop')
    args = p.parse_args(argv)
    if not os.access(args.caffe, os.X_OK):
        print('caffe_diff: %s is not an executable caffe binary' % args.caffe, file=sys.stderr)
        return 2
    import logging
    logging.getLogger('minicaffe').setLevel(logging.WARNING)
    if args.bisect:
        lines = bisect_forward(args.caffe, args.bisect)
        print('\n'.join(lines))
        return 1 if any('differ' in line for line in lines) else 0
    differ = skipped = noisy = 0
    cases = max(args.cases, len(SPECIAL_LAYERS)) if args.special else args.cases
    for seed in range(args.seed, args.seed + cases):
        folder = tempfile.mkdtemp(prefix='caffe_diff_%d_' % seed)
        try:
            if args.special:
                result = run_special_case(args.caffe, seed - args.seed, folder, data_seed=seed)
            elif args.validity:
                result = run_validity_case(args.caffe, seed, folder)
            elif args.solvers:
                result = run_solver_case(args.caffe, seed, folder)
            elif args.recurrent:
                result = run_recurrent_case(args.caffe, seed, folder)
            else:
                result = run_case(args.caffe, seed, folder, args.depth, args.max_kernel)
        except RuntimeError as e:
            skipped += 1
            text = str(e)
            why = [ln for ln in text.splitlines() if 'Check failed' in ln or 'corruption' in ln
                   or 'free()' in ln or 'Segmentation' in ln]
            print('case %d: not run: %s%s' % (seed, text.splitlines()[0],
                                               (' ' + why[0].strip()) if why else ''))
            result = None
        if result:
            keep = os.path.join(args.keep, 'case_%d' % seed)
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(folder, keep)
            if result[0].startswith(ILL):
                noisy += 1
                print('case %d: differs where Caffe itself is rounding noise (kept in %s)' % (seed, keep))
            else:
                differ += 1
                print('case %d: DIFFERS (kept in %s)' % (seed, keep))
            for line in result:
                print('    ' + line)
        elif result is not None:
            print('case %d: agrees' % seed)
        shutil.rmtree(folder, ignore_errors=True)
    print('%d cases: %d agree, %d differ, %d differ where the case is ill-conditioned, %d not run'
          % (cases, cases - differ - noisy - skipped, differ, noisy, skipped))
    return 1 if differ else 0


if __name__ == '__main__':
    sys.exit(main())
