"""The training progress bar's rate and ETA (minicaffe.commands.progress.SmoothedRate and
training.ProgressBar), driven by a fake clock: only training iterations count,
smoothed; the test passes (the one at iteration 0 included) do not."""
import io

import pytest

from minicaffe.commands.progress import SmoothedRate
from minicaffe.protoio import pb
from minicaffe.commands.training import ProgressBar


class FakeClock(object):
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


def test_nothing_is_known_before_the_first_iteration():
    rate = SmoothedRate(clock=FakeClock())
    assert rate.eta(100) is None and rate.per_second() == 0.0
    rate.iteration_started()
    assert rate.eta(100) is None


def test_first_estimate_is_the_first_iteration_then_full_samples_replace_it():
    clock = FakeClock()
    rate = SmoothedRate(smoothing=0.5, clock=clock)
    rate.iteration_started()
    clock.advance(0.5)                       # forward + backward of iteration 0
    rate.progress()
    assert rate.seconds_per_iter == pytest.approx(0.5)
    assert rate.eta(10) == pytest.approx(5.0)
    clock.advance(0.5)                       # the update
    rate.iteration_started()                 # iteration 1: the first full sample, 1 s
    assert rate.seconds_per_iter == pytest.approx(1.0)
    rate.progress()                          # no longer replaces anything
    clock.advance(3.0)
    rate.iteration_started()                 # 3 s, smoothed: 0.5 * 3 + 0.5 * 1
    assert rate.seconds_per_iter == pytest.approx(2.0)
    assert rate.per_second() == pytest.approx(0.5)
    assert rate.eta(4) == pytest.approx(8.0)
    assert rate.eta(-1) == 0


def test_an_interrupted_interval_is_not_a_sample():
    clock = FakeClock()
    rate = SmoothedRate(smoothing=0.5, clock=clock)
    rate.iteration_started()
    clock.advance(1.0)
    rate.iteration_started()
    clock.advance(60.0)                      # an iteration and a long test pass
    rate.iteration_started(interrupted=True)
    assert rate.seconds_per_iter == pytest.approx(1.0)
    clock.advance(1.0)
    rate.iteration_started()
    assert rate.seconds_per_iter == pytest.approx(1.0)


def test_smoothing_follows_a_change_of_speed():
    clock = FakeClock()
    rate = SmoothedRate(smoothing=0.1, clock=clock)
    rate.iteration_started()
    for _ in range(5):
        clock.advance(0.1)
        rate.iteration_started()
    assert rate.seconds_per_iter == pytest.approx(0.1)
    clock.advance(5.0)                       # one stall moves the estimate a tenth of the way
    rate.iteration_started()
    assert rate.seconds_per_iter == pytest.approx(0.1 + 0.1 * 4.9)
    for _ in range(200):
        clock.advance(0.2)
        rate.iteration_started()
    assert rate.seconds_per_iter == pytest.approx(0.2, rel=1e-6)


class FakeSolver(object):
    def __init__(self, max_iter=1000, test_interval=500, test_initialization=True):
        self.param = pb.SolverParameter(max_iter=max_iter, test_interval=test_interval,
                                        test_initialization=test_initialization)
        self.test_nets = ['a test net']
        self.iter = 0
        self.smoothed_loss = 2.5


def _run(bar, solver, clock, iters, train_s, test_s, lines):
    """Solver.step's order of calls: test pass, on_start, forward/backward,
    on_gradients_ready, update."""
    p = solver.param
    for _ in range(iters):
        if (p.test_interval and solver.iter % p.test_interval == 0
                and (solver.iter > 0 or p.test_initialization)):
            clock.advance(test_s)
        bar.on_start()
        clock.advance(0.8 * train_s)
        bar.on_gradients_ready()
        lines.append(bar.line())
        clock.advance(0.2 * train_s)
        solver.iter += 1


def test_progress_bar_eta_ignores_test_passes_including_the_first():
    clock = FakeClock()
    solver = FakeSolver(max_iter=1000, test_interval=500)
    bar = ProgressBar(solver, io.StringIO(), clock=clock)
    lines = []
    _run(bar, solver, clock, 1, train_s=0.1, test_s=600.0, lines=lines)
    # 1/1000 after a 10-minute test pass: the ETA is 999 x 0.08 s (forward+backward), not hours
    assert lines[0].endswith('1/1000 loss 2.5 12.50 it/s ETA 1:19')
    _run(bar, solver, clock, 600, train_s=0.1, test_s=600.0, lines=lines)
    # past the test pass at iteration 500: still 10 it/s, ETA 399 x 0.1 s
    assert lines[-1].endswith('601/1000 loss 2.5 10.00 it/s ETA 0:39')
    assert all(' 10.00 it/s ' in l for l in lines[1:])


def test_progress_bar_without_test_nets_counts_every_interval():
    clock = FakeClock()
    solver = FakeSolver(max_iter=10, test_interval=2)      # test_interval, but no test net
    solver.test_nets = []
    bar = ProgressBar(solver, io.StringIO(), clock=clock)
    lines = []
    _run(bar, solver, clock, 3, train_s=2.0, test_s=0.0, lines=lines)
    assert lines[0].endswith('1/10 loss 2.5 0.63 it/s ETA 0:14')    # 9 x 1.6 s (stand-in)
    assert lines[2].endswith('3/10 loss 2.5 0.50 it/s ETA 0:14')    # 7 x 2 s
