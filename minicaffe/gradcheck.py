"""Caffe's gradient checker (test/gradient_check_util.hpp), as a product feature.

For a layer, its bottoms and tops, the analytic gradient (``backward``) is
compared with central finite differences of an objective of the tops:

* all tops (``check_gradient``):   E = 1/2 sum_i sum_j top_i[j]^2,  so dE/dtop = top;
* one top element (``check_gradient_single`` with top_id, top_data_id, used by
  ``check_gradient_exhaustive`` for every element of every top):
  E = 2 * top_id[top_data_id], so dE/dtop is 2 there and 0 elsewhere;
* ``check_gradient_eltwise``: like exhaustive, but for a layer whose top j depends
  only on bottom element j: only that element is perturbed, every other
  computed gradient must be 0.

For every checked element x (learnable blobs, and the bottoms chosen by
``check_bottom``): estimate = (E(x + h) - E(x - h)) / 2h, with the random seed
reset to ``seed`` before every forward (Dropout draws the same mask).  Elements
with kink - kink_range <= |x| <= kink + kink_range are skipped (a ReLU's kink at
0).  The check passes iff |computed - estimate| <= threshold * max(|computed|,
|estimate|, 1) -- the "relative error" reported below is that ratio divided by
threshold's scale, i.e. |computed - estimate| / max(|computed|, |estimate|, 1).

``make_layer`` builds a stand-alone layer from a prototxt snippet and bottom
data (or shapes, filled with N(0, 1) values as Caffe's tests do);
``check_gradient_net`` checks the layers of a whole Net (the ``minicaffe
gradcheck`` command).

Layers run through :func:`minicaffe.mode.run_forward` / ``run_backward``, so in
GPU mode (``minicaffe gradcheck --gpu 0``) the device code (forward_gpu /
backward_gpu) is what gets checked.  Perturbations are written to the host copy
through ``blob.data`` each time, which makes the blob's device copy stale, so the
next device forward sees them.
"""
import collections

import numpy as np

from . import mode as _mode
from . import rng as _rng
from .blob import DTYPE, Blob
from .errors import MinicaffeError, NetDefinitionError
from .protoio import parse_text, pb


class GradientCheckError(AssertionError):
    """A computed gradient disagrees with the finite-difference estimate."""


# One checked blob of one layer: ``worst_error`` is the largest
# |computed - estimate| / max(|computed|, |estimate|, 1) seen.
CheckResult = collections.namedtuple(
    'CheckResult', 'layer blob worst_error passed checked failed worst_detail')


class _BlobStats(object):
    def __init__(self):
        self.worst = 0.0
        self.detail = ''
        self.checked = 0
        self.failed = 0
        self.first_failure = None


def _phase_value(phase):
    if phase is None:
        return pb.TRAIN
    if isinstance(phase, str):
        try:
            return {'TRAIN': pb.TRAIN, 'TEST': pb.TEST}[phase.upper()]
        except KeyError:
            raise ValueError('phase must be TRAIN or TEST, got %r' % phase)
    return int(phase)


def make_layer(layer_param, bottoms, phase='TRAIN', seed=1701, num_tops=None):
    """Build and set up a stand-alone layer for gradient checking.

    ``layer_param``: a LayerParameter or its prototxt text (``name`` optional).
    ``bottoms``: one entry per bottom, either an array (copied, as float32) or a
    shape tuple (filled with N(0, 1) values from a generator seeded with ``seed``).
    Returns ``(layer, bottom_blobs, top_blobs)`` after setup and reshape.
    """
    from .layers.base import layer_class
    if isinstance(layer_param, str):
        layer_param = parse_text(layer_param, pb.LayerParameter(), '<make_layer>')
    else:
        copy = pb.LayerParameter()
        copy.CopyFrom(layer_param)
        layer_param = copy
    if not layer_param.name:
        layer_param.name = layer_param.type.lower() or 'layer'
    layer_param.phase = _phase_value(phase)
    gen = np.random.default_rng(seed)
    bottom = []
    for i, b in enumerate(bottoms):
        if isinstance(b, Blob):
            bottom.append(b)
            continue
        if isinstance(b, (tuple, list)) and all(isinstance(d, (int, np.integer)) for d in b):
            blob = Blob(tuple(b), name='bottom%d' % i)
            blob.data[...] = gen.standard_normal(blob.shape)
        else:
            arr = np.asarray(b, dtype=DTYPE)
            blob = Blob(arr.shape, name='bottom%d' % i)
            blob.data[...] = arr
        bottom.append(blob)
    cls = layer_class(layer_param.type, layer_param)
    layer = cls(layer_param, layer_param.phase)
    if num_tops is None:
        num_tops = len(layer_param.top) or max(layer.needed_auto_tops(), 1)
        if layer.exact_num_top >= 0:
            num_tops = layer.exact_num_top
        elif layer.max_num_top >= 0:
            num_tops = min(num_tops, layer.max_num_top)
    top = [Blob(name='top%d' % i) for i in range(num_tops)]
    layer.check_blob_counts(bottom, top)
    layer.setup(bottom, top)
    layer.reshape(bottom, top)
    if len(layer.param_propagate_down) != len(layer.blobs):
        layer.param_propagate_down = [True] * len(layer.blobs)
    return layer, bottom, top


class GradientChecker(object):
    """Caffe's GradientChecker(stepsize, threshold, seed, kink, kink_range)."""

    def __init__(self, stepsize=1e-2, threshold=1e-3, seed=1701, kink=0.0, kink_range=-1.0):
        self.stepsize = float(stepsize)
        self.threshold = float(threshold)
        self.seed = seed
        self.kink = float(kink)
        self.kink_range = float(kink_range)
        self.stats = collections.OrderedDict()   # label -> _BlobStats

    # ---- public checks (Caffe's names) ------------------------------------
    def check_gradient(self, layer, bottom, top, check_bottom=-1, raise_on_failure=True):
        """Objective over all tops (Caffe's CheckGradient)."""
        self._begin(layer, bottom, top)
        self.check_gradient_single(layer, bottom, top, check_bottom, -1, -1,
                                   raise_on_failure=False)
        return self._finish(raise_on_failure)

    def check_gradient_exhaustive(self, layer, bottom, top, check_bottom=-1,
                                  raise_on_failure=True):
        """One check per element of every top (Caffe's CheckGradientExhaustive)."""
        self._begin(layer, bottom, top)
        if not top:
            raise ValueError('exhaustive gradient check needs at least one top blob')
        for top_id in range(len(top)):
            for j in range(top[top_id].count):
                self.check_gradient_single(layer, bottom, top, check_bottom, top_id, j,
                                           raise_on_failure=False)
        return self._finish(raise_on_failure)

    def check_gradient_eltwise(self, layer, bottom, top, raise_on_failure=True):
        """Element-wise layers: top j depends on bottom element j only."""
        self._begin(layer, bottom, top)
        for top_id in range(len(top)):
            for j in range(top[top_id].count):
                self.check_gradient_single(layer, bottom, top, -1, top_id, j,
                                           element_wise=True, raise_on_failure=False)
        return self._finish(raise_on_failure)

    def check_gradient_single(self, layer, bottom, top, check_bottom=-1, top_id=-1,
                              top_data_id=-1, element_wise=False, raise_on_failure=True):
        """One objective (all tops when top_id < 0, else 2 * top[top_id][top_data_id])."""
        if element_wise:
            if layer.blobs:
                raise ValueError('element-wise check of a layer with learnable blobs')
            for b in bottom:
                if b.count != top[top_id].count:
                    raise ValueError('element-wise check needs bottoms the size of the top')
        targets = self._targets(layer, bottom, check_bottom)
        if not targets:
            raise ValueError('nothing to check: the layer has no learnable blobs and no'
                             ' bottom was selected')
        propagate_down = [i in self._bottom_ids(bottom, check_bottom) for i in range(len(bottom))]
        for blob in layer.blobs:
            blob.diff[...] = 0
        self._forward(layer, bottom, top)
        self._objective(top, top_id, top_data_id)
        _mode.run_backward(layer, top, propagate_down, bottom)
        computed = [blob.diff.copy() for _, blob in targets]
        for (label, blob), grad in zip(targets, computed):
            stats = self.stats.setdefault(label, _BlobStats())
            for feat in range(blob.count):
                estimate = 0.0
                if not element_wise or feat == top_data_id:
                    # blob.data on every write: it makes the host copy current (a
                    # device forward then copies the perturbed values over).
                    original = _flat(blob)[feat]
                    _flat(blob)[feat] = original + DTYPE(self.stepsize)
                    self._forward(layer, bottom, top)
                    positive = self._objective(top, top_id, top_data_id)
                    _flat(blob)[feat] = original - DTYPE(self.stepsize)
                    self._forward(layer, bottom, top)
                    negative = self._objective(top, top_id, top_data_id)
                    _flat(blob)[feat] = original
                    estimate = (positive - negative) / self.stepsize / 2.0
                value = float(_flat(blob)[feat])
                if self.kink - self.kink_range <= abs(value) <= self.kink + self.kink_range:
                    continue
                c = float(grad.reshape(-1)[feat])
                scale = max(abs(c), abs(estimate), 1.0)
                err = abs(c - estimate) / scale
                stats.checked += 1
                where = ('%s[%d] (top %d, element %d)' % (label, feat, top_id, top_data_id)
                         if top_id >= 0 else '%s[%d]' % (label, feat))
                if err > stats.worst:
                    stats.worst = err
                    stats.detail = '%s: computed %.6g, estimated %.6g' % (where, c, estimate)
                if err > self.threshold:
                    stats.failed += 1
                    if stats.first_failure is None:
                        stats.first_failure = ('%s: computed gradient %.6g, finite-difference'
                                               ' estimate %.6g (|diff| %.3g > threshold %g * %.3g)'
                                               % (where, c, estimate, abs(c - estimate),
                                                  self.threshold, scale))
        if raise_on_failure:
            return self._finish(True)
        return None

    # ---- whole nets -------------------------------------------------------------
    def check_gradient_net(self, net, layer_names=None, exhaustive=False, max_elements=None,
                           report=None):
        """Check each layer of ``net`` (all of them, or those named) on the net's current data.

        The net is run forward layer by layer; each layer is checked on private
        copies of its bottoms as they are just before it runs (so in-place layers
        see their real inputs and the net's state is untouched).
        ``max_elements`` caps how many elements of each blob are perturbed (a seeded
        sample) -- for big layers.  ``report(result)`` is called per checked blob.
        Returns a list of CheckResult; layers that cannot backpropagate are skipped.
        """
        from .layers.base import layer_class  # noqa: F401  (registry loaded)
        names = list(net._layer_names)
        if layer_names:
            missing = [n for n in layer_names if n not in names]
            if missing:
                raise NetDefinitionError('no layer named %s in the net (layers: %s)'
                                         % (', '.join('"%s"' % m for m in missing), ', '.join(names)))
        results = []
        for lid, name in enumerate(names):
            if lid > 0:
                # Bring the net up to this layer's inputs (not past them: an in-place
                # layer would already have overwritten its own bottom).
                net._forward_layer(lid - 1)
            if layer_names and name not in layer_names:
                continue
            layer = net.layers[lid]
            bottom_src = [net._blob_list[i] for i in net.bottom_ids[lid]]
            checkable = [i for i in range(len(bottom_src)) if layer.allow_force_backward(i)]
            if not layer.blobs and not checkable:
                continue
            bottom = []
            for b in bottom_src:
                copy = Blob(b.shape, name=b.name)
                copy.data[...] = b.data
                bottom.append(copy)
            top = [Blob(name=net._blob_names[i]) for i in net.top_ids[lid]]
            saved = [blob.diff.copy() for blob in layer.blobs]
            saved_ppd = list(layer.param_propagate_down)
            layer.param_propagate_down = [True] * len(layer.blobs)
            self.stats = collections.OrderedDict()
            try:
                layer.reshape(bottom, top)
                self._max_elements = max_elements
                if exhaustive:
                    self.check_gradient_exhaustive(layer, bottom, top, checkable,
                                                   raise_on_failure=False)
                else:
                    self.check_gradient(layer, bottom, top, checkable, raise_on_failure=False)
            except MinicaffeError as e:
                if 'cannot backpropagate' in str(e) or 'cannot backprop' in str(e):
                    continue
                raise
            finally:
                self._max_elements = None
                for blob, d in zip(layer.blobs, saved):
                    blob.diff[...] = d
                layer.param_propagate_down = saved_ppd
            for label, st in self.stats.items():
                res = CheckResult(name, label, st.worst, st.failed == 0, st.checked,
                                  st.failed, st.first_failure or st.detail)
                results.append(res)
                if report is not None:
                    report(res)
        return results

    # ---- internals ----------------------------------------------------------------
    _max_elements = None

    def _begin(self, layer, bottom, top):
        self.stats = collections.OrderedDict()
        if len(layer.param_propagate_down) != len(layer.blobs):
            layer.param_propagate_down = [True] * len(layer.blobs)
        self._forward(layer, bottom, top)      # tops take their final shapes

    def _finish(self, raise_on_failure):
        failures = [(label, st) for label, st in self.stats.items() if st.failed]
        if failures and raise_on_failure:
            lines = ['%d of %d checked gradient elements of %s disagree with the estimate:'
                     % (st.failed, st.checked, label) for label, st in failures]
            lines += ['  first: ' + st.first_failure for _, st in failures]
            raise GradientCheckError('\n'.join(lines))
        return self.stats

    @staticmethod
    def _bottom_ids(bottom, check_bottom):
        if isinstance(check_bottom, (list, tuple, set)):
            return set(check_bottom)
        if check_bottom is None or check_bottom < 0:
            return set(range(len(bottom)))
        return {check_bottom}

    def _targets(self, layer, bottom, check_bottom):
        targets = [('param[%d]' % j, blob) for j, blob in enumerate(layer.blobs)]
        targets += [('bottom[%d]' % i, bottom[i]) for i in sorted(self._bottom_ids(bottom, check_bottom))]
        if self._max_elements:
            targets = [(label, _Sampled(blob, self._max_elements, self.seed)) for label, blob in targets]
        return targets

    def _forward(self, layer, bottom, top):
        _rng.set_random_seed(self.seed)
        layer.reshape(bottom, top)
        _mode.run_forward(layer, bottom, top)

    @staticmethod
    def _objective(top, top_id, top_data_id):
        if top_id < 0:
            loss = 0.0
            for blob in top:
                d = blob.data
                loss += float(np.dot(d.reshape(-1).astype(np.float64), d.reshape(-1)))
                blob.diff[...] = d
            return loss / 2.0
        for blob in top:
            blob.diff[...] = 0
        weight = 2.0
        top[top_id].diff.reshape(-1)[top_data_id] = weight
        return float(top[top_id].data.reshape(-1)[top_data_id]) * weight


def _flat(blob):
    """The blob's host data, flat (a fresh access, so the host copy is the current one)."""
    return blob.data.reshape(-1)


class _Sampled(object):
    """A blob seen through a seeded sample of at most ``n`` of its elements.

    Lets the net check perturb a few elements of a large blob; ``data`` is a
    writable proxy whose flat positions map onto the sampled elements.
    """

    def __init__(self, blob, n, seed):
        self.blob = blob
        count = blob.count
        if count <= n:
            self.index = np.arange(count)
        else:
            self.index = np.sort(np.random.default_rng(seed).choice(count, n, replace=False))
        self.count = len(self.index)

    @property
    def data(self):
        return _FlatProxy(self.blob.data.reshape(-1), self.index)

    @property
    def diff(self):
        return self.blob.diff.reshape(-1)[self.index]


class _FlatProxy(object):
    def __init__(self, flat, index):
        self.flat, self.index = flat, index

    def reshape(self, *shape):
        return self

    def __getitem__(self, i):
        return self.flat[self.index[i]]

    def __setitem__(self, i, value):
        self.flat[self.index[i]] = value
