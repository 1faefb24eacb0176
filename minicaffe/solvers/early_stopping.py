"""Early stopping on a test output: stop training when the validation score has
not improved for ``patience`` tests, and keep the weights of the best test.

Caffe has no early stopping; this rides on two hooks our Solver already has, so
the solver itself is unchanged and runs without it exactly as Caffe's:

- ``solver.metrics`` receives every test's outputs (``test(iter, net_id, values)``);
  the stopper takes that place and passes every call on to the metrics writer
  that was there (``minicaffe train``'s JSONL), so the curve is still recorded;
- ``solver.action_request`` (pycaffe's / the SIGINT handler's hook) answers
  ``SolverAction.STOP`` once the criterion is met; the solver then ends ``step``
  after the iteration it is in, as for Ctrl-C.

"Improved" means ``value < best - min_delta`` (``mode='min'``, a loss) or
``value > best + min_delta`` (``mode='max'``, an accuracy).  The best weights
are copied (host arrays) at each improvement; ``restore_best(net)`` puts them
back, so the net that is saved/evaluated is the one of the best validation
score, not the last one.
"""
import numpy as np

from ..errors import MinicaffeError
from .solver import SolverAction


class EarlyStopping(object):
    def __init__(self, output, patience=5, min_delta=0.0, mode='min', test_net=0):
        if mode not in ('min', 'max'):
            raise MinicaffeError("early stopping: mode must be 'min' or 'max', not %r" % (mode,))
        if patience < 1:
            raise MinicaffeError('early stopping: patience must be at least 1 test, not %r' % (patience,))
        self.output = output
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.mode = mode
        self.test_net = int(test_net)
        self.history = []            # [(iter, value)] of every test of test_net
        self.best = None
        self.best_iter = None
        self.bad_tests = 0           # tests since the last improvement
        self.stopped_at = None       # iteration of the test that met the criterion
        self.inner = None            # the metrics writer this one passes calls on to
        self._solver = None
        self._best_params = None
        self._inner_request = None

    # ------------------------------------------------------------ wiring
    def attach(self, solver):
        """Take the solver's metrics and action_request hooks (chaining what was there)."""
        self._solver = solver
        self.inner, solver.metrics = solver.metrics, self
        self._inner_request, solver.action_request = solver.action_request, self.request
        return self

    def request(self):
        if self.stopped_at is not None:
            return SolverAction.STOP
        return self._inner_request() if self._inner_request else SolverAction.NONE

    # ------------------------------------------------------------ metrics interface
    def train(self, it, lr, loss, smoothed, outputs):
        if self.inner is not None:
            self.inner.train(it, lr, loss, smoothed, outputs)

    def test(self, it, net_id, values):
        if self.inner is not None:
            self.inner.test(it, net_id, values)
        if net_id != self.test_net:
            return
        if self.output not in values:
            raise MinicaffeError('early stopping: test net #%d has no output "%s" (it has: %s)'
                                 % (net_id, self.output, ', '.join(sorted(values)) or 'none'))
        value = float(np.asarray(values[self.output]).ravel()[0])
        self.history.append((int(it), value))
        if self._improved(value):
            self.best, self.best_iter, self.bad_tests = value, int(it), 0
            if self._solver is not None:
                self._best_params = [np.array(b.data, copy=True)
                                     for b in self._solver.net.learnable_params]
        else:
            self.bad_tests += 1
            if self.bad_tests >= self.patience and self.stopped_at is None:
                self.stopped_at = int(it)

    def close(self):
        if self.inner is not None:
            self.inner.close()

    # ------------------------------------------------------------ results
    def _improved(self, value):
        if not np.isfinite(value):
            return False
        if self.best is None:
            return True
        if self.mode == 'min':
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    @property
    def stopped(self):
        return self.stopped_at is not None

    def restore_best(self, net=None):
        """Copy the best test's weights into net (default: the solver's net)."""
        net = net if net is not None else self._solver.net
        if self._best_params is None:
            return False
        params = net.learnable_params
        if len(params) != len(self._best_params):
            raise MinicaffeError('early stopping: the net has %d learnable blobs, the kept weights %d'
                                 % (len(params), len(self._best_params)))
        for blob, kept in zip(params, self._best_params):
            blob.data = kept
        return True
