"""The net a command's arguments name (model, phase, level, stages, weights)."""


def build_net(model, phase='TRAIN', level=0, stages=(), weights=None):
    """The Net of ``model`` in ``phase`` with ``level``/``stages``, and ``weights``
    (comma-separated .caffemodel/.h5 files) loaded when given."""
    from ..net import Net, TEST, TRAIN
    net = Net(model, TRAIN if str(phase).upper() == 'TRAIN' else TEST,
              level=level, stages=list(stages or []))
    if weights:
        from ..weights import load_weight_files
        load_weight_files(net, [w for w in str(weights).split(',') if w])
    return net


def split_stages(stages):
    """Repeatable and comma-separated values: ['a,b', 'c'] -> ['a', 'b', 'c']."""
    out = []
    for s in stages or []:
        out.extend(x for x in s.split(',') if x)
    return out
