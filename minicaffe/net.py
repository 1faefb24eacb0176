"""Net: a DAG of layers built from a NetParameter, run forward and backward.

Construction follows Caffe's Net::Init exactly (see netbuild for filtering and
splits): blob wiring with in-place tops, automatic tops for loss layers, loss
weights, parameter ownership and sharing by ParamSpec name, and the
need-backward analysis (lr_mult, blobs under a loss, propagate_down,
force_backward with each layer's refusals).  The public surface is pycaffe's.
"""
import collections
import logging
import os

import numpy as np

from . import mode as _mode
from . import fileio, memory, netbuild, protoio
from .blob import Blob
from .errors import MinicaffeError, NetDefinitionError, WeightsError, layer_context
from .layers.base import layer_class
from .protoio import pb

log = logging.getLogger('minicaffe')

TRAIN = pb.TRAIN
TEST = pb.TEST


def _phase_value(phase):
    if isinstance(phase, str):
        up = phase.upper()
        if up not in ('TRAIN', 'TEST'):
            raise ValueError('phase must be TRAIN or TEST, got %r' % phase)
        return TRAIN if up == 'TRAIN' else TEST
    if phase not in (TRAIN, TEST):
        raise ValueError('phase must be caffe.TRAIN or caffe.TEST, got %r' % (phase,))
    return int(phase)


def read_net_param(path):
    return protoio.read_text(path, pb.NetParameter)


class Net(object):
    """pycaffe-compatible Net.

    ``Net(path, phase, level=0, stages=None, weights=None, strict=False)`` or the
    legacy ``Net(path, weights, phase)`` (``strict``: see :meth:`copy_from`);
    ``Net(net_param=NetParameter, phase=...)`` builds from a message (the solver does this).
    """

    def __init__(self, network_file=None, *args, phase=None, level=0, stages=None,
                 weights=None, net_param=None, source=None, strict=False):
        args = list(args)
        if args and isinstance(args[0], (str, bytes, os.PathLike)):
            weights = args.pop(0)           # legacy Net(file, weights, phase)
        if args:
            phase = args.pop(0)
        if args:
            level = args.pop(0)
        if args:
            stages = args.pop(0)
        if args:
            raise TypeError('too many positional arguments to Net()')
        if phase is None:
            raise TypeError('Net() needs a phase (caffe.TRAIN or caffe.TEST)')
        if net_param is None:
            if network_file is None:
                raise TypeError('Net() needs a prototxt path or net_param')
            source = os.fspath(network_file)
            net_param = read_net_param(source)
        else:
            param = pb.NetParameter()
            param.CopyFrom(net_param)
            net_param = param
        self.source = source or net_param.name or '<net>'
        netbuild.upgrade_net(net_param, self.source)
        net_param.state.phase = _phase_value(phase)
        net_param.state.level = int(level)
        for s in (stages or []):
            net_param.state.stage.append(s)
        self._init(net_param)
        if weights:
            self.copy_from(weights, strict=strict)

    # ------------------------------------------------------------ building
    def _init(self, in_param):
        src = self.source
        try:
            filtered = netbuild.filter_net(in_param, src)
            param = netbuild.insert_splits(filtered, src,
                                           netbuild.excluded_producers(in_param, filtered))
        except MinicaffeError as e:
            raise type(e)(self._locate_named(str(e))) from None
        log.info('Initializing net from parameters: \n%s', protoio.DebugString(filtered))
        self.net_param = param
        self.name = param.name
        self.phase = param.state.phase
        self.force_backward = param.force_backward
        self.debug_info = param.debug_info
        self._hooks = {'before_forward': [], 'after_forward': [], 'before_backward': [],
                       'after_backward': []}

        self.layers = []
        self._layer_names = []
        self._blob_list = []                  # Blob objects in creation order
        self._blob_names = []
        self._blob_index = {}
        self._blob_need_backward = []
        self._blob_loss_weight = []
        self.bottom_ids, self.top_ids = [], []
        self.bottom_need_backward = []
        self.layer_need_backward = []
        self._loss_tops = []                  # per layer: [(top idx, weight)]
        self._input_ids = []
        self._params = []                     # every param blob (owners and sharers)
        self._param_owner = []
        self._param_layer = []                # (layer id, param id)
        self._param_names = {}
        self.learnable_params = []
        self.learnable_param_ids = []
        self.params_lr, self.params_weight_decay = [], []
        self.has_params_lr, self.has_params_decay = [], []
        self.param_display_names = []
        self._workspace_bytes = []            # per layer: its scratch arrays (memory.estimate)
        self._kept_bytes = []                 # per layer: the arrays it keeps between passes
        available = collections.OrderedDict()
        self._memory_used = 0                 # top counts so far (Caffe's memory_used_)

        for lid, lp_net in enumerate(param.layer):
            try:
                self._add_layer(lid, lp_net, available)
            except MinicaffeError as e:
                # Same error class (DataSourceError stays one), now with file:line.
                raise type(e)(self._locate(lp_net, str(e))) from None

        self._backward_analysis()
        if self.force_backward:
            for lid, layer in enumerate(self.layers):
                self.layer_need_backward[lid] = True
                for bid, blob_id in enumerate(self.bottom_ids[lid]):
                    nb = self.bottom_need_backward[lid][bid] or layer.allow_force_backward(bid)
                    self.bottom_need_backward[lid][bid] = nb
                    self._blob_need_backward[blob_id] = self._blob_need_backward[blob_id] or nb
                layer.param_propagate_down = [True] * len(layer.blobs)
        self._output_ids = [self._blob_index[n] for n in sorted(available)]
        for name in sorted(available):
            log.info('This network produces output %s', name)
        self._share_weights()
        self._layer_index = {n: i for i, n in enumerate(self._layer_names)}
        self._plan = [_Step(self, lid) for lid in range(len(self.layers))]
        memory.check_net(self, NetDefinitionError)
        log.info('Network initialization done.')

    def _add_layer(self, lid, lp_net, available):
        src = self.source
        lp = pb.LayerParameter()
        lp.CopyFrom(lp_net)
        if not lp.HasField('phase'):
            lp.phase = self.phase
        if len(lp.propagate_down) and len(lp.propagate_down) != len(lp.bottom):
            raise NetDefinitionError(
                '%s: %s: propagate_down has %d values but the layer has %d bottoms'
                % (src, layer_context(lp), len(lp.propagate_down), len(lp.bottom)))
        cls = layer_class(lp.type, lp)
        layer = cls(lp, lp.phase)
        self.layers.append(layer)
        self._layer_names.append(lp.name)
        log.info('Creating Layer %s', lp.name)
        self.bottom_ids.append([])
        self.top_ids.append([])
        self.bottom_need_backward.append([])
        need_backward = False
        for bid, name in enumerate(lp.bottom):
            if name not in available:
                raise NetDefinitionError(
                    '%s: %s: unknown bottom blob "%s" (bottom %d); it is not produced by an'
                    ' earlier layer or was already consumed' % (src, layer_context(lp), name, bid))
            blob_id = self._blob_index[name]
            log.info('%s <- %s', lp.name, name)
            self.bottom_ids[lid].append(blob_id)
            del available[name]
            nb = self._blob_need_backward[blob_id]
            if len(lp.propagate_down):
                nb = bool(lp.propagate_down[bid])
            self.bottom_need_backward[lid].append(nb)
            need_backward |= self._blob_need_backward[blob_id]
        for tid, name in enumerate(lp.top):
            self._append_top(lid, lp, tid, name, available)
        if cls.auto_top_blobs:
            for tid in range(len(lp.top), layer.needed_auto_tops()):
                self._append_top(lid, lp, tid, None, None)
        if lp.type == 'Input':
            self._input_ids.extend(self.top_ids[lid])
        bottom = [self._blob_list[i] for i in self.bottom_ids[lid]]
        top = [self._blob_list[i] for i in self.top_ids[lid]]
        self._setup_layer(layer, lp, bottom, top)
        log.info('Setting up %s', lp.name)
        for tid, blob_id in enumerate(self.top_ids[lid]):
            w = dict(self._loss_tops[lid]).get(tid, 0.0)
            self._blob_loss_weight[blob_id] = w
            log.info('Top shape: %s', top[tid].shape_string())
            if w:
                log.info('    with loss weight %g', w)
            # Caffe counts every top, in-place ones again, as float32 (its "data" memory)
            self._memory_used += top[tid].count
        log.info('Memory required for data: %d', self._memory_used * 4)
        n_param = len(layer.blobs)
        if len(lp_net.param) > n_param:
            raise NetDefinitionError('%s: %s: %d param specs given but the layer has %d'
                                     ' learnable blobs' % (src, layer_context(lp), len(lp_net.param), n_param))
        # Caffe's Net::Init decides from the prototxt's specs (an absent spec means lr_mult 1),
        # not from the layer's own copy, to which set-up may add specs: a BatchNorm written
        # without its three lr_mult 0 specs needs backward (its statistics stay frozen anyway,
        # AppendParam reads the layer's copy).
        specs = lp_net.param
        layer.param_propagate_down = []
        for pid in range(n_param):
            spec = specs[pid] if pid < len(specs) else pb.ParamSpec()
            pnb = spec.lr_mult != 0
            need_backward |= pnb
            layer.param_propagate_down.append(pnb)
        for pid in range(n_param):
            self._append_param(lid, pid)
        self.layer_need_backward.append(need_backward)
        if need_backward:
            for blob_id in self.top_ids[lid]:
                self._blob_need_backward[blob_id] = True

    def _locate_named(self, msg):
        """Add file:line to a message that names a layer (layer "x") but no line."""
        import re
        m = re.search(r'layer "((?:[^"\\]|\\.)*)"', msg)
        if not m or re.match(re.escape(self.source) + r':\d+', msg):
            return msg
        lp = pb.LayerParameter(name=m.group(1))
        return self._locate(lp, msg)

    def _locate(self, lp, msg):
        """Prefix an error with file:line of the layer's definition when we can find it."""
        line = _layer_line(self.source, lp.name)
        where = '%s:%d' % (self.source, line) if line else self.source
        if msg.startswith(self.source + ': '):
            msg = msg[len(self.source) + 2:]
        return '%s: %s' % (where, msg)

    def _append_top(self, lid, lp, tid, name, available):
        if name is not None and tid < len(lp.bottom) and lp.bottom[tid] == name:
            if not layer_class(lp.type, lp).allows_in_place(lp):
                raise NetDefinitionError(
                    '%s: %s: this layer type does not support in-place computation (top %d "%s"'
                    ' is its bottom %d); give the top another name'
                    % (self.source, layer_context(lp), tid, name, tid))
            blob_id = self._blob_index[name]          # in place
            log.info('%s -> %s (in-place)', lp.name, name)
        elif name is not None and name in self._blob_index:
            raise NetDefinitionError('%s: %s: top blob "%s" is produced by more than one layer'
                                     ' (only in-place use, top i == bottom i, may repeat a name)'
                                     % (self.source, layer_context(lp), name))
        else:
            blob_id = len(self._blob_list)
            blob_name = name if name is not None else '(automatic)'
            log.info('%s -> %s', lp.name, blob_name)
            self._blob_list.append(Blob(name=blob_name))
            self._blob_names.append(blob_name)
            self._blob_need_backward.append(False)
            self._blob_loss_weight.append(0.0)
            if name is not None:
                self._blob_index[name] = blob_id
        self.top_ids[lid].append(blob_id)
        if available is not None:
            available[name] = True

    def _setup_layer(self, layer, lp, bottom, top):
        layer.check_blob_counts(bottom, top)
        try:
            layer.setup(bottom, top)
            layer.reshape(bottom, top)
            scratch = layer.workspace_shapes(bottom, top)
            kept = layer.kept_shapes(bottom, top)
        except MinicaffeError:
            raise
        except (ValueError, IndexError, TypeError, AssertionError, ZeroDivisionError, MemoryError) as e:
            shapes = ', '.join(str(b.shape) for b in bottom)
            raise NetDefinitionError('%s: %s: setup failed for bottom shapes [%s]: %s'
                                     % (self.source, layer_context(lp), shapes,
                                        e if str(e) else type(e).__name__)) from None
        sizes = []
        for arrays in (scratch, kept):      # sizes from params (pad, local_size...) checked
            nbytes = 0
            for what, shape, dtype in arrays:
                problem = memory.array_problem(shape, dtype, what)
                if problem:
                    raise NetDefinitionError('%s: %s: %s' % (self.source, layer_context(lp),
                                                             problem))
                nbytes += int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            sizes.append(nbytes)
        self._workspace_bytes.append(sizes[0])
        self._kept_bytes.append(sizes[1])
        # Loss weights (Caffe's SetLossWeights; loss layers default to 1 on top 0).
        weights = list(lp.loss_weight)
        if not weights and layer.is_loss:
            weights = [1.0]
        if weights and len(weights) != len(top) and not (layer.is_loss and not len(lp.loss_weight)):
            raise NetDefinitionError('%s: %s: loss_weight must be unspecified or given once per top'
                                     ' (%d tops, %d loss_weight values)'
                                     % (self.source, layer_context(lp), len(top), len(weights)))
        self._loss_tops.append([(i, float(w)) for i, w in enumerate(weights) if w != 0])
        layer.loss_weights = [0.0] * len(top)
        for i, w in self._loss_tops[-1]:
            layer.loss_weights[i] = w
            top[i].diff[...] = w

    def _append_param(self, lid, pid):
        layer = self.layers[lid]
        lp = layer.layer_param
        spec = lp.param[pid] if pid < len(lp.param) else pb.ParamSpec()
        name = spec.name if pid < len(lp.param) else ''
        self.param_display_names.append(name or str(pid))
        net_pid = len(self._params)
        self._params.append(layer.blobs[pid])
        self._param_layer.append((lid, pid))
        if not name or name not in self._param_names:
            self._param_owner.append(-1)
            if name:
                self._param_names[name] = net_pid
            self.learnable_param_ids.append(len(self.learnable_params))
            self.learnable_params.append(layer.blobs[pid])
            self.has_params_lr.append(spec.HasField('lr_mult'))
            self.has_params_decay.append(spec.HasField('decay_mult'))
            self.params_lr.append(spec.lr_mult)
            self.params_weight_decay.append(spec.decay_mult)
            return
        owner_pid = self._param_names[name]
        self._param_owner.append(owner_pid)
        olid, opid = self._param_layer[owner_pid]
        log.info("Sharing parameters '%s' owned by layer '%s', param index %d",
                 name, self._layer_names[olid], opid)
        this_blob, owner_blob = layer.blobs[pid], self.layers[olid].blobs[opid]
        if spec.share_mode == pb.ParamSpec.PERMISSIVE:
            if this_blob.count != owner_blob.count:
                raise NetDefinitionError(
                    '%s: cannot share param "%s" owned by layer "%s" with layer "%s": count mismatch'
                    ' (owner shape %s, sharing layer shape %s)'
                    % (self.source, name, self._layer_names[olid], lp.name, owner_blob.shape, this_blob.shape))
        elif this_blob.shape != owner_blob.shape:
            raise NetDefinitionError(
                '%s: cannot share param "%s" owned by layer "%s" with layer "%s": shape mismatch'
                ' (owner shape %s, sharing layer shape %s); use share_mode PERMISSIVE to share by count'
                % (self.source, name, self._layer_names[olid], lp.name, owner_blob.shape, this_blob.shape))
        lpid = self.learnable_param_ids[owner_pid]
        self.learnable_param_ids.append(lpid)
        if spec.HasField('lr_mult'):
            if self.has_params_lr[lpid] and spec.lr_mult != self.params_lr[lpid]:
                raise NetDefinitionError('%s: shared param "%s" has mismatched lr_mult' % (self.source, name))
            self.has_params_lr[lpid] = True
            self.params_lr[lpid] = spec.lr_mult
        if spec.HasField('decay_mult'):
            if self.has_params_decay[lpid] and spec.decay_mult != self.params_weight_decay[lpid]:
                raise NetDefinitionError('%s: shared param "%s" has mismatched decay_mult' % (self.source, name))
            self.has_params_decay[lpid] = True
            self.params_weight_decay[lpid] = spec.decay_mult

    def _share_weights(self):
        for i, owner in enumerate(self._param_owner):
            if owner >= 0:
                self._params[i].share_data(self._params[owner])
                self._params[i].share_diff(self._params[owner])

    def _backward_analysis(self):
        under_loss, skip_backp = set(), set()
        for lid in range(len(self.layers) - 1, -1, -1):
            contributes, skip = False, True
            for tid, blob_id in enumerate(self.top_ids[lid]):
                name = self._blob_names[blob_id]
                if self.layers[lid].loss_weights[tid] or name in under_loss:
                    contributes = True
                if name not in skip_backp:
                    skip = False
                if contributes and not skip:
                    break
            if self.layer_need_backward[lid] and skip:
                self.layer_need_backward[lid] = False
                self.bottom_need_backward[lid] = [False] * len(self.bottom_ids[lid])
            if not contributes:
                self.layer_need_backward[lid] = False
            log.info('%s %s backward computation.', self._layer_names[lid],
                     'needs' if self.layer_need_backward[lid] else 'does not need')
            for bid, blob_id in enumerate(self.bottom_ids[lid]):
                name = self._blob_names[blob_id]
                if contributes:
                    under_loss.add(name)
                else:
                    self.bottom_need_backward[lid][bid] = False
                if not self.bottom_need_backward[lid][bid]:
                    skip_backp.add(name)

    # ------------------------------------------------------------ running
    def _bottom(self, lid):
        return [self._blob_list[i] for i in self.bottom_ids[lid]]

    def _top(self, lid):
        return [self._blob_list[i] for i in self.top_ids[lid]]

    def _forward_layer(self, lid):
        step = self._plan[lid]
        layer, bottom, top = step.layer, step.bottom, step.top
        step.reshape()
        loss = 0.0
        if step.empty:
            # Zero-size blobs (a dim of 0; Caffe's Blob allows count 0): the layer has
            # no values to read or write, so it is not run (its code need not handle
            # empty arrays); loss tops are never empty (a loss is one value).
            return loss
        if _mode.is_gpu():
            _mode.run_forward(layer, bottom, top)
            for tid, w in self._loss_tops[lid]:
                top[tid].gpu_diff.fill(w)
                loss += w * float(top[tid].gpu_data.sum(dtype=np.float64))
        else:
            layer.forward(bottom, top)
            for tid, w in self._loss_tops[lid]:
                top[tid].diff[...] = w
                loss += w * float(np.sum(top[tid].data, dtype=np.float64))
        if self.debug_info:
            self._log_forward(lid)
        return loss

    def _out_of_memory(self, lid, what):
        """A MinicaffeError for a MemoryError in a layer (the set-up estimate could
        not see it: other processes took the memory, or a layer's scratch is larger)."""
        est = memory.estimate(self)
        return MinicaffeError('%s: %s: out of memory in %s (the net was estimated at %.2f GiB at'
                              ' set-up; other processes may hold the rest): free memory or use'
                              ' smaller inputs' % (self.source, layer_context(self.layers[lid].layer_param),
                                                   what, est['total'] / float(1 << 30)))

    def forward_from_to(self, start, end):
        loss = 0.0
        before, after = self._hooks['before_forward'], self._hooks['after_forward']
        try:
            for lid in range(start, end + 1):
                for hook in before:
                    hook(lid)
                try:
                    loss += self._forward_layer(lid)
                except MemoryError:
                    raise self._out_of_memory(lid, 'forward') from None
                for hook in after:
                    hook(lid)
        except MinicaffeError as e:     # a layer's error at run time: name the file and line too
            self._reraise_located(e)
        return loss

    def backward_from_to(self, start, end):
        before, after = self._hooks['before_backward'], self._hooks['after_backward']
        try:
            for lid in range(start, end - 1, -1):
                for hook in before:
                    hook(lid)
                step = self._plan[lid]
                if self.layer_need_backward[lid] and not _nothing_to_compute(step.bottom, step.top):
                    try:
                        _mode.run_backward(step.layer, step.top, self.bottom_need_backward[lid],
                                           step.bottom)
                    except MemoryError:
                        raise self._out_of_memory(lid, 'backward') from None
                    if self.debug_info:
                        self._log_backward(lid)
                for hook in after:
                    hook(lid)
        except MinicaffeError as e:
            self._reraise_located(e)
        if self.debug_info:
            self._log_update_norms()

    def _reraise_located(self, e):
        """Re-raise a layer's run-time error with the net's file:line added when
        it names a layer but no line; anything else (a hook's error, one that
        names its place already) unchanged, with its attributes."""
        msg = self._locate_named(str(e))
        plain = not (type(e).__dict__.keys() - {'__module__', '__doc__', '__qualname__', '__weakref__'})
        if msg == str(e) or not plain:
            raise e
        raise type(e)(msg) from None

    # Caffe's Net::Callback hooks (pycaffe's net.before_forward(f) etc.): called
    # with the layer id around every layer's Forward / Backward -- data-parallel
    # training reduces a layer's gradients right after its backward.  A hook is
    # a callable (pycaffe: python/train.py's timers) or an object with
    # run(layer_id) (Caffe's Callback; pycaffe's net.after_backward(nccl)).
    def before_forward(self, hook):
        self._hooks['before_forward'].append(_hook_call(hook))

    def after_forward(self, hook):
        self._hooks['after_forward'].append(_hook_call(hook))

    def before_backward(self, hook):
        self._hooks['before_backward'].append(_hook_call(hook))

    def after_backward(self, hook):
        self._hooks['after_backward'].append(_hook_call(hook))

    def _forward(self, start, end):
        return self.forward_from_to(start, end)

    def _backward(self, start, end):
        self.backward_from_to(start, end)

    def forward_all_loss(self):
        """Run the whole net forward; returns the total weighted loss (Caffe's Forward)."""
        return self.forward_from_to(0, len(self.layers) - 1)

    def backward_all(self):
        self.backward_from_to(len(self.layers) - 1, 0)

    def forward_backward(self):
        loss = self.forward_all_loss()
        self.backward_all()
        return loss

    def forward(self, blobs=None, start=None, end=None, **kwargs):
        """pycaffe's forward: returns {output name: data array}."""
        blobs = list(blobs or [])
        start_ind = self._layer_id(start) if start is not None else 0
        if end is not None:
            end_ind = self._layer_id(end)
            outputs = set(list(self.top_names[end]) + blobs)     # pycaffe master
        else:
            end_ind = len(self.layers) - 1
            outputs = set(self.outputs + blobs)
        if kwargs:
            if set(kwargs) != set(self.inputs):
                raise MinicaffeError('Input blob arguments %s do not match net inputs %s'
                                     % (sorted(kwargs), self.inputs))
            for name, value in kwargs.items():
                value = np.asarray(value)
                if value.shape[0] != self.blobs[name].shape[0]:
                    raise MinicaffeError('Input "%s" is not batch sized: %s vs blob %s'
                                         % (name, value.shape, self.blobs[name].shape))
                self.blobs[name].data[...] = value
        self._last_loss = self.forward_from_to(start_ind, end_ind)
        return {name: self.blobs[name].data for name in outputs}

    def backward(self, diffs=None, start=None, end=None, **kwargs):
        diffs = list(diffs or [])
        start_ind = self._layer_id(start) if start is not None else len(self.layers) - 1
        if end is not None:
            end_ind = self._layer_id(end)
            outputs = set(list(self.bottom_names[end]) + diffs)  # pycaffe master
        else:
            end_ind = 0
            outputs = set(self.inputs + diffs)
        if kwargs:
            if set(kwargs) != set(self.outputs):
                raise MinicaffeError('Top diff arguments %s do not match net outputs %s'
                                     % (sorted(kwargs), self.outputs))
            for name, value in kwargs.items():
                value = np.asarray(value)
                if value.shape[0] != self.blobs[name].shape[0]:
                    raise MinicaffeError('Diff "%s" is not batch sized' % name)
                self.blobs[name].diff[...] = value
        self.backward_from_to(start_ind, end_ind)
        return {name: self.blobs[name].diff for name in outputs}

    def _batches(self, arrays):
        """pycaffe's _batch: full batches, then a zero-padded last one."""
        num = len(next(iter(arrays.values())))
        batch_size = next(iter(self.blobs.values())).shape[0]
        for start in range(0, num - num % batch_size, batch_size):
            yield {k: v[start:start + batch_size] for k, v in arrays.items()}
        rem = num % batch_size
        if rem:
            yield {k: np.concatenate([v[-rem:], np.zeros((batch_size - rem,) + v.shape[1:], v.dtype)])
                   for k, v in arrays.items()}

    def forward_all(self, blobs=None, **kwargs):
        """Forward every batch of ``kwargs`` inputs; outputs concatenated, padding dropped."""
        outs = {name: [] for name in set(self.outputs + list(blobs or []))}
        for batch in self._batches({k: np.asarray(v) for k, v in kwargs.items()}):
            for name, value in self.forward(blobs=blobs, **batch).items():
                outs[name].extend(value.copy())
        outs = {k: np.asarray(v) for k, v in outs.items()}
        pad = len(next(iter(outs.values()))) - len(next(iter(kwargs.values())))
        return {k: v[:-pad] for k, v in outs.items()} if pad else outs

    def forward_backward_all(self, blobs=None, diffs=None, **kwargs):
        """pycaffe's forward_backward_all: kwargs hold inputs and output diffs."""
        outs = {name: [] for name in set(self.outputs + list(blobs or []))}
        grads = {name: [] for name in set(self.inputs + list(diffs or []))}
        fwd = {k: np.asarray(v) for k, v in kwargs.items() if k in self.inputs}
        bwd = {k: np.asarray(v) for k, v in kwargs.items() if k in self.outputs}
        for fb, bb in zip(self._batches(fwd), self._batches(bwd) if bwd else iter(lambda: {}, None)):
            for name, value in self.forward(blobs=blobs, **fb).items():
                outs[name].extend(value.copy())
            for name, value in self.backward(diffs=diffs, **bb).items():
                grads[name].extend(value.copy())
        outs = {k: np.asarray(v) for k, v in outs.items()}
        grads = {k: np.asarray(v) for k, v in grads.items()}
        pad = len(next(iter(outs.values()))) - len(next(iter(fwd.values())))
        if pad:
            outs = {k: v[:-pad] for k, v in outs.items()}
            grads = {k: v[:-pad] for k, v in grads.items()}
        return outs, grads

    def reshape(self):
        """Reshape every layer (Caffe's Net::Reshape), whatever changed."""
        for step in self._plan:
            step.reshape(always=True)

    def clear_param_diffs(self):
        on_gpu = _mode.is_gpu()
        for b in self.learnable_params:
            if on_gpu:
                b.gpu_diff.fill(0)      # no device -> host -> device round trip
            else:
                b.diff[...] = 0

    def _layer_id(self, name):
        try:
            return self._layer_index[name]
        except KeyError:
            raise MinicaffeError('no layer named "%s" in net %s' % (name, self.source)) from None

    # ------------------------------------------------------------ pycaffe views
    @property
    def blobs(self):
        return collections.OrderedDict((n, b) for n, b in zip(self._blob_names, self._blob_list)
                                       if n != '(automatic)')

    @property
    def params(self):
        return collections.OrderedDict((n, l.blobs) for n, l in zip(self._layer_names, self.layers)
                                       if len(l.blobs) > 0)

    @property
    def layer_dict(self):
        return collections.OrderedDict(zip(self._layer_names, self.layers))

    @property
    def inputs(self):
        return [self._blob_names[i] for i in self._input_ids]

    @property
    def outputs(self):
        return [self._blob_names[i] for i in self._output_ids]

    @property
    def top_names(self):
        return collections.OrderedDict((n, [self._blob_names[i] for i in ids])
                                       for n, ids in zip(self._layer_names, self.top_ids))

    @property
    def bottom_names(self):
        return collections.OrderedDict((n, [self._blob_names[i] for i in ids])
                                       for n, ids in zip(self._layer_names, self.bottom_ids))

    @property
    def blob_loss_weights(self):
        return collections.OrderedDict(zip(self._blob_names, self._blob_loss_weight))

    @property
    def blob_names(self):
        return list(self._blob_names)

    def layer_names(self):
        return list(self._layer_names)

    # pycaffe's underscore names (_caffe.cpp's raw views that pycaffe.py builds on;
    # scripts use them too).  _blob_names and _layer_names are the lists above.
    @property
    def _blobs(self):
        """Every blob in creation order, automatic tops included."""
        return list(self._blob_list)

    @property
    def _inputs(self):
        """Indices (into _blobs) of the net's input blobs."""
        return list(self._input_ids)

    @property
    def _outputs(self):
        return list(self._output_ids)

    @property
    def _blob_loss_weights(self):
        """The loss weight of each blob (by index into _blobs), 0 for non-loss blobs."""
        return list(self._blob_loss_weight)

    def _bottom_ids(self, layer_id):
        return list(self.bottom_ids[layer_id])

    def _top_ids(self, layer_id):
        return list(self.top_ids[layer_id])

    def _set_input_arrays(self, data, labels):
        return self.set_input_arrays(data, labels)

    def _batch(self, blobs):
        """pycaffe's batch generator over {name: array} (the last batch zero-padded)."""
        return self._batches(blobs)

    # ------------------------------------------------------------ weights
    def copy_from(self, path, strict=False):
        """Load weights from a .caffemodel (binary) or a Caffe HDF5 weights file.

        Learnable layers the file lacks keep their fillers' values: a warning
        names them (a file truncated at a layer boundary decodes cleanly, so only
        this comparison with the net can tell); ``strict=True`` makes that an
        IncompleteWeightsError before anything is copied.  Returns their names."""
        from . import weights as W
        path = os.fspath(path)
        missing = W.load_weights(self, path, strict)
        W.warn_unfilled(self, missing, path)
        return missing

    def copy_trained_layers_from(self, path):
        self.copy_from(path)

    def save(self, path, write_diff=False):
        from . import weights as W
        W.save_caffemodel(self, os.fspath(path), write_diff)

    def save_hdf5(self, path, write_diff=False):
        from . import weights as W
        W.save_hdf5(self, os.fspath(path), write_diff)

    def load_hdf5(self, path):
        from . import weights as W
        W.load_hdf5(self, os.fspath(path))

    def set_input_arrays(self, data, labels):
        from .layers.data import set_input_arrays
        return set_input_arrays(self, data, labels)

    def to_proto(self, write_diff=False):
        out = pb.NetParameter()
        out.name = self.name
        for layer in self.layers:
            lp = out.layer.add()
            lp.CopyFrom(layer.layer_param)
            del lp.blobs[:]
            for b in layer.blobs:
                protoio.blob_to_proto(b, lp.blobs.add(), write_diff)
        return out

    def share_with(self, other):
        """Caffe's ShareTrainedLayersWith: each learnable blob of a layer whose name
        is also in ``other`` uses that layer's data memory (its diff stays this
        net's own, so a backward here leaves ``other``'s gradients alone).  Other
        layers are left as they are."""
        for name, src_layer in zip(other._layer_names, other.layers):
            if name not in self._layer_index:
                continue
            dst = self.layers[self._layer_index[name]]
            if len(dst.blobs) != len(src_layer.blobs):
                raise WeightsError('share_with: layer "%s" has %d blobs here and %d in the source'
                                   % (name, len(dst.blobs), len(src_layer.blobs)))
            for i, (d, s) in enumerate(zip(dst.blobs, src_layer.blobs)):
                if d.shape != s.shape:
                    raise WeightsError('share_with: layer "%s" param %d shape %s != source %s'
                                       % (name, i, d.shape, s.shape))
                d.share_data(s)

    @property
    def param_owners(self):
        return list(self._param_owner)

    @property
    def all_params(self):
        return list(self._params)

    @property
    def param_layer_indices(self):
        return list(self._param_layer)

    # ------------------------------------------------------------ debug_info
    def _log_forward(self, lid):
        layer = self.layers[lid]
        for blob_id in self.top_ids[lid]:
            b = self._blob_list[blob_id]
            log.info('    [Forward] Layer %s, top blob %s data: %g', layer.name,
                     self._blob_names[blob_id], _asum_mean(b.data))
        for pid, b in enumerate(layer.blobs):
            log.info('    [Forward] Layer %s, param blob %d data: %g', layer.name, pid, _asum_mean(b.data))

    def _log_backward(self, lid):
        layer = self.layers[lid]
        for bid, blob_id in enumerate(self.bottom_ids[lid]):
            if self.bottom_need_backward[lid][bid]:
                log.info('    [Backward] Layer %s, bottom blob %s diff: %g', layer.name,
                         self._blob_names[blob_id], _asum_mean(self._blob_list[blob_id].diff))
        for pid, b in enumerate(layer.blobs):
            if layer.param_propagate_down[pid]:
                log.info('    [Backward] Layer %s, param blob %d diff: %g', layer.name, pid, _asum_mean(b.diff))

    def _log_update_norms(self):
        asum = sum(float(np.abs(b.data).sum()) for b in self.learnable_params)
        dsum = sum(float(np.abs(b.diff).sum()) for b in self.learnable_params)
        log.info('    [Backward] All net params (data, diff): L1 norm = (%g, %g)', asum, dsum)


class _Step(object):
    """One layer of the net's execution plan: the layer with its bottom and top
    Blob lists bound once (the Blob objects of a net never change; their arrays
    do, on reshape and sharing), and what its last reshape saw.

    Caffe reshapes every layer before every forward.  A layer whose reshape
    depends only on its blobs' shapes (``Layer.static_reshape``) is reshaped
    again only when the arrays of its bottoms or tops are not the ones its last
    reshape left: a Blob replaces its array whenever its shape changes
    (Blob.reshape) or it takes another blob's memory (share_data/share_diff,
    view_of), so an identity check of those arrays sees every such change --
    an input given a new shape, a top reshaped from outside, a Flatten bottom
    that now shares another blob's memory.  Other layers (data layers, Python
    layers, recurrent layers...) are reshaped before every forward, as in Caffe."""
    __slots__ = ('layer', 'bottom', 'top', 'blobs', 'arrays', 'empty')

    def __init__(self, net, lid):
        self.layer = net.layers[lid]
        self.bottom = net._bottom(lid)
        self.top = net._top(lid)
        self.blobs = self.bottom + self.top
        self.arrays = None          # the blobs' arrays after the last reshape
        self.empty = False          # _nothing_to_compute at the last reshape

    def _arrays(self):
        # the private arrays themselves (no host/device sync): identity is what counts
        return [a for b in self.blobs for a in (b._data, b._diff)]

    def current(self):
        """Whether the blobs hold the arrays the last reshape left."""
        arrays = self.arrays
        if arrays is None:
            return False
        i = 0
        for b in self.blobs:
            if b._data is not arrays[i] or b._diff is not arrays[i + 1]:
                return False
            i += 2
        return True

    def reshape(self, always=False):
        """The layer's reshape, unless it is static and nothing changed since."""
        if always or not self.layer.static_reshape or not self.current():
            self.layer.reshape(self.bottom, self.top)
            self.arrays = self._arrays()
            self.empty = _nothing_to_compute(self.bottom, self.top)


def _hook_call(hook):
    run = getattr(hook, 'run', None)
    if callable(run):
        return run
    if callable(hook):
        return hook
    raise TypeError('a net hook is a callable taking the layer id or an object with'
                    ' run(layer_id), not %r' % (hook,))


def _layer_line(source, layer_name):
    """Line of `name: "<layer_name>"` in a prototxt file, or None."""
    import re
    try:       # source may be only a net's name: never block on a FIFO it happens to name
        text = fileio.read_bytes(source, 'prototxt').decode('utf-8', errors='replace')
    except MinicaffeError:
        return None
    m = re.search(r'\bname\s*:\s*["\']%s["\']' % re.escape(layer_name), text)
    return text.count('\n', 0, m.start()) + 1 if m else None


def _nothing_to_compute(bottom, top):
    """True when a layer's blobs hold no values at all: it has tops, and every top
    and bottom is zero-size.  Its forward writes nothing and its backward adds
    nothing (param gradients are sums over the empty items)."""
    return bool(top) and all(b.count == 0 for b in top) and all(b.count == 0 for b in bottom)


def _asum_mean(a):
    return float(np.abs(a).mean()) if a.size else 0.0
