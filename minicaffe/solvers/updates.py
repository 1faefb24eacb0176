"""The six update rules (Caffe's *Solver::ComputeUpdateValue), one function each.

Each takes the solver, the param's history arrays ``hist`` (a tuple: one
array, two for AdaDelta and Adam), the gradient array ``g`` (the param's diff,
already normalised and regularised) and the local rate α = lr · lr_mult, and
leaves the step Δ in ``g`` (the net then does w -= Δ).  Every rule is
element-wise, so on the host the solver applies it to cache-sized pieces of
the arrays (solver.py, _update_on_host) with the same numbers.  History layout
follows Caffe: ``history[i]`` per param; AdaDelta and Adam keep a second set at
``history[i + n_params]``.

SGD       V ← μV + αg;                      Δ = V
Nesterov  V' ← μV + αg;                     Δ = (1+μ)V' − μV
AdaGrad   H ← H + g²;                       Δ = α g / (√H + δ)
RMSProp   H ← ρH + (1−ρ)g²  (ρ = rms_decay); Δ = α g / (√H + δ)
AdaDelta  G ← ρG + (1−ρ)g²  (ρ = momentum); u = g √((D+δ)/(G+δ));
          D ← ρD + (1−ρ)u²;                  Δ = α u
Adam      m ← β1 m + (1−β1) g;  v ← β2 v + (1−β2) g²  (β1 = momentum, β2 = momentum2)
          Δ = α √(1−β2ᵗ)/(1−β1ᵗ) · m / (√v + δ),  t = iter + 1

The same code runs on host (NumPy) and device (CuPy) arrays: ``g`` and the
history live on one side (the solver moves its history to the side its mode
uses), :func:`array_module` picks the module, and the constants are float32
scalars, so CuPy never sees a host array.  On the host the operations are
exactly NumPy's (results bit-identical to Caffe's CPU solver).
"""
import math

import numpy as np

F32 = np.float32


def array_module(a):
    """NumPy for a host array, else CuPy's get_array_module (no CuPy import on the CPU path)."""
    if type(a) is np.ndarray:
        return np
    from ..gpu.backend import cupy_module
    return cupy_module().get_array_module(a)


def sgd(solver, hist, g, rate):
    h, = hist
    h *= F32(solver.param.momentum)
    h += F32(rate) * g
    g[...] = h


def nesterov(solver, hist, g, rate):
    h, = hist
    mu = F32(solver.param.momentum)
    prev = h.copy()
    h *= mu
    h += F32(rate) * g
    g[...] = (F32(1) + mu) * h - mu * prev


def adagrad(solver, hist, g, rate):
    h, = hist
    h += g * g
    g[...] = F32(rate) * (g / (array_module(g).sqrt(h) + F32(solver.param.delta)))


def rmsprop(solver, hist, g, rate):
    h, = hist
    rho = F32(solver.param.rms_decay)
    h[...] = (F32(1) - rho) * (g * g) + rho * h
    g[...] = F32(rate) * (g / (array_module(g).sqrt(h) + F32(solver.param.delta)))


def adadelta(solver, hist, g, rate):
    grad_hist, upd_hist = hist
    rho, delta = F32(solver.param.momentum), F32(solver.param.delta)
    grad_hist[...] = (F32(1) - rho) * (g * g) + rho * grad_hist
    g *= array_module(g).sqrt((delta + upd_hist) / (delta + grad_hist))
    upd_hist[...] = (F32(1) - rho) * (g * g) + rho * upd_hist
    g *= F32(rate)


def adam(solver, hist, g, rate):
    m, v = hist
    b1, b2 = F32(solver.param.momentum), F32(solver.param.momentum2)
    t = solver.iter + 1
    correction = math.sqrt(1.0 - math.pow(float(b2), t)) / (1.0 - math.pow(float(b1), t))
    m[...] = (F32(1) - b1) * g + b1 * m
    v[...] = (F32(1) - b2) * (g * g) + b2 * v
    g[...] = F32(rate * correction) * (m / (array_module(g).sqrt(v) + F32(solver.param.delta)))


# type name -> (update function, history sets per param)
RULES = {
    'SGD': (sgd, 1),
    'Nesterov': (nesterov, 1),
    'AdaGrad': (adagrad, 1),
    'RMSProp': (rmsprop, 1),
    'AdaDelta': (adadelta, 2),
    'Adam': (adam, 2),
}
