"""The process-wide data-parallel state: how many solvers (ranks) train together
and which one this process is (Caffe's ``Caffe::solver_count()``,
``Caffe::solver_rank()``, ``Caffe::multiprocess()``; pycaffe's
``caffe.set_solver_count`` etc.).

Data layers read it to shard their stream (:func:`keeps_item`, Caffe's
``Skip()``), the trainer to decide who displays, tests and snapshots
(:func:`root_solver`).  One process training alone is count 1, rank 0.
"""

_state = {'count': 1, 'rank': 0, 'multiprocess': False}


def set_solver_count(count):
    count = int(count)
    if count < 1:
        raise ValueError('solver count must be >= 1, got %d' % count)
    _state['count'] = count


def set_solver_rank(rank):
    rank = int(rank)
    if rank < 0:
        raise ValueError('solver rank must be >= 0, got %d' % rank)
    _state['rank'] = rank


def set_multiprocess(value):
    _state['multiprocess'] = bool(value)


def solver_count():
    return _state['count']


def solver_rank():
    return _state['rank']


def multiprocess():
    return _state['multiprocess']


def root_solver():
    """Caffe::root_solver(): the rank that displays, tests and snapshots."""
    return _state['rank'] == 0


def keeps_item(k, phase_is_train=True):
    """Caffe's data-layer ``Skip()``, inverted: whether this rank keeps item ``k``
    (0-based position in the layer's stream).  In TRAIN each of N ranks keeps
    items k with k % N == rank, so N ranks of batch B together see what one
    process of batch N*B sees; TEST nets run unsharded."""
    if not phase_is_train:
        return True
    return k % _state['count'] == _state['rank']


def shards(phase_is_train=True):
    """Whether a data layer in this phase skips items (TRAIN with several ranks)."""
    return phase_is_train and _state['count'] > 1


def reset():
    """Back to one process (tests)."""
    _state.update(count=1, rank=0, multiprocess=False)
