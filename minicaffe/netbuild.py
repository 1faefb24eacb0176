"""Turning a NetParameter into the exact list of layers Caffe would build.

* ``upgrade_net``   -- legacy ``input``/``input_shape``/``input_dim`` fields
                       become a first Input layer named "input"; V0/V1
                       ``layers`` are upgraded by :mod:`minicaffe.upgrade`.
* ``filter_net``    -- NetStateRule include/exclude against the NetState.
* ``insert_splits`` -- a top read by several bottoms (a nonzero explicit
                       loss_weight counts as one read) gets a Split layer.
"""
import logging

from google.protobuf import text_format

from .errors import NetDefinitionError
from .protoio import pb

log = logging.getLogger('minicaffe')


def upgrade_net(param, source='<net>'):
    """Upgrade legacy syntax in place (Caffe's UpgradeNetAsNeeded)."""
    if len(param.layers) or _has_v0(param):
        from . import upgrade
        upgrade.upgrade_v1_net(param, source)
    _upgrade_input_fields(param, source)
    from . import upgrade
    upgrade.upgrade_batchnorm(param)      # Caffe's UpgradeNetBatchNorm
    return param


def _has_v0(param):
    return any(l.HasField('layer') for l in param.layers)


def _upgrade_input_fields(param, source):
    if not len(param.input):
        return
    n = len(param.input)
    has_shape, has_dim = len(param.input_shape) > 0, len(param.input_dim) > 0
    if has_shape and len(param.input_shape) not in (1, n):
        raise NetDefinitionError('%s: %d inputs but %d input_shape entries'
                                 % (source, n, len(param.input_shape)))
    if has_dim and len(param.input_dim) != 4 * n:
        raise NetDefinitionError('%s: %d inputs need %d input_dim values (4 each), got %d'
                                 % (source, n, 4 * n, len(param.input_dim)))
    if not (has_shape or has_dim):
        raise NetDefinitionError('%s: input %s has no input_shape or input_dim'
                                 % (source, list(param.input)))
    layer = pb.LayerParameter(name='input', type='Input')
    for i, name in enumerate(param.input):
        layer.top.append(name)
        shape = layer.input_param.shape.add()
        if has_shape:
            shape.CopyFrom(param.input_shape[i if len(param.input_shape) > 1 else 0])
        else:
            shape.dim.extend(param.input_dim[4 * i:4 * i + 4])
    layers = [layer] + [pb.LayerParameter.FromString(l.SerializeToString()) for l in param.layer]
    del param.layer[:]
    param.layer.extend(layers)
    del param.input[:]
    del param.input_shape[:]
    del param.input_dim[:]


def state_meets_rule(state, rule, layer_name=None):
    """Caffe's StateMeetsRule; with ``layer_name``, the reason a rule is not met is
    logged in Caffe's words (its text, "is above the min_level" included)."""
    def log_broken(fmt, *args):
        if layer_name is not None:
            log.info(fmt + ' specified by a rule in layer %s', *(args + (layer_name,)), stacklevel=2)
        return False
    if rule.HasField('phase') and rule.phase != state.phase:
        return log_broken('The NetState phase (%d) differed from the phase (%d)', state.phase, rule.phase)
    if rule.HasField('min_level') and state.level < rule.min_level:
        return log_broken('The NetState level (%d) is above the min_level (%d)', state.level,
                      rule.min_level)
    if rule.HasField('max_level') and state.level > rule.max_level:
        return log_broken('The NetState level (%d) is above the max_level (%d)', state.level,
                      rule.max_level)
    stages = set(state.stage)
    for s in rule.stage:
        if s not in stages:
            return log_broken("The NetState did not contain stage '%s'", s)
    for s in rule.not_stage:
        if s in stages:
            return log_broken("The NetState contained a not_stage '%s'", s)
    return True


def filter_net(param, source='<net>'):
    """A copy of ``param`` holding only the layers its ``state`` selects."""
    out = pb.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    for lp in param.layer:
        if len(lp.include) and len(lp.exclude):
            raise NetDefinitionError('%s: layer "%s" specifies both include and exclude rules;'
                                     ' use one or the other' % (source, lp.name))
        # Caffe's loops (each stops once decided): the rules it checks are the ones it logs
        keep = len(lp.include) == 0
        for r in lp.exclude:
            if not keep:
                break
            if state_meets_rule(param.state, r, lp.name):
                keep = False
        for r in lp.include:
            if keep:
                break
            if state_meets_rule(param.state, r, lp.name):
                keep = True
        if keep:
            out.layer.add().CopyFrom(lp)
    return out


def split_layer_name(layer_name, blob_name, top_idx):
    return '%s_%s_%d_split' % (blob_name, layer_name, top_idx)


def split_blob_name(layer_name, blob_name, top_idx, k):
    return '%s_%s_%d_split_%d' % (blob_name, layer_name, top_idx, k)


def _data_source(lp):
    for field in ('data_param', 'image_data_param', 'hdf5_data_param', 'window_data_param'):
        if lp.HasField(field) and getattr(lp, field).source:
            return getattr(lp, field).source
    return ''


def excluded_producers(full, filtered):
    """Blob name -> text naming the layers that produce it in ``full`` but were
    left out of ``filtered`` by their include/exclude rules (for error hints)."""
    kept = set(lp.name for lp in filtered.layer)
    out = {}
    for lp in full.layer:
        if lp.name in kept:
            continue
        rules = ' '.join('include { %s }' % text_format.MessageToString(r, as_one_line=True)
                         for r in lp.include)
        rules += ' '.join('exclude { %s }' % text_format.MessageToString(r, as_one_line=True)
                          for r in lp.exclude)
        src = _data_source(lp)
        if not src and lp.HasField('python_param'):
            desc_src = ', module "%s", class "%s"' % (lp.python_param.module, lp.python_param.layer)
        else:
            desc_src = ', source "%s"' % src if src else ''
        desc = 'layer "%s" (%s%s) is left out by its rule %s' % (
            lp.name, lp.type, desc_src, rules.strip())
        for name in lp.top:
            out.setdefault(name, []).append(desc)
    return out


def insert_splits(param, source='<net>', excluded=None):
    """Caffe's InsertSplits: returns a new NetParameter with Split layers.

    ``excluded`` (from excluded_producers) adds a hint to the missing-bottom error
    when the producer exists but the net state (phase, level, stages) left it out.
    """
    last_top = {}            # blob name -> (layer idx, top idx) of its latest producer
    source_of_bottom = {}    # (layer, bottom) -> (layer, top)
    reads = {}               # (layer, top) -> how many bottoms (and losses) read it
    loss_weight_of = {}
    for i, lp in enumerate(param.layer):
        for j, name in enumerate(lp.bottom):
            if name not in last_top:
                hint = ''
                if excluded and name in excluded:
                    state = param.state
                    hint = ('; in this net state (phase %s, level %d, stages [%s]) its producer %s'
                            % (pb.Phase.Name(state.phase), state.level, ', '.join(state.stage),
                               '; '.join(excluded[name])))
                raise NetDefinitionError(
                    '%s: layer "%s" (%s) bottom %d is "%s", which no earlier layer produces%s'
                    % (source, lp.name, lp.type, j, name, hint))
            src = last_top[name]
            source_of_bottom[(i, j)] = src
            reads[src] = reads.get(src, 0) + 1
        for j, name in enumerate(lp.top):
            last_top[name] = (i, j)
        for j in range(min(len(lp.loss_weight), len(lp.top))):
            src = last_top[lp.top[j]]
            if lp.loss_weight[j]:
                loss_weight_of[src] = lp.loss_weight[j]
                reads[src] = reads.get(src, 0) + 1
    out = pb.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    next_split = {}
    for i, lp in enumerate(param.layer):
        new = out.layer.add()
        new.CopyFrom(lp)
        for j, name in enumerate(lp.bottom):
            src = source_of_bottom[(i, j)]
            if reads.get(src, 0) > 1:
                k = next_split.get(src, 0)
                new.bottom[j] = split_blob_name(param.layer[src[0]].name, name, src[1], k)
                next_split[src] = k + 1
        for j, name in enumerate(lp.top):
            src = (i, j)
            n = reads.get(src, 0)
            if n > 1:
                split = out.layer.add()
                split.name = split_layer_name(lp.name, name, j)
                split.type = 'Split'
                split.bottom.append(name)
                weight = loss_weight_of.get(src, 0)
                for k in range(n):
                    split.top.append(split_blob_name(lp.name, name, j, k))
                    if weight:
                        split.loss_weight.append(weight if k == 0 else 0)
                if weight:
                    del new.loss_weight[:]
                    next_split[src] = next_split.get(src, 0) + 1
    return out
