"""Caffe's learning-rate policies (SGDSolver::GetLearningRate).

``iter`` is the number of updates done so far.  multistep keeps its position
in ``solver.current_step`` (saved in the solverstate), exactly as Caffe does.
"""
import math

from ..errors import MinicaffeError

POLICIES = ('fixed', 'step', 'exp', 'inv', 'multistep', 'poly', 'sigmoid')


def check_parameters(p, source):
    """The checks Caffe's GetLearningRate makes at the first iteration (CHECK_GT
    stepsize, CHECK_GE gamma), made when the solver is built instead."""
    if p.lr_policy in ('step', 'sigmoid') and p.stepsize <= 0:
        raise MinicaffeError('%s: lr_policy "%s" needs stepsize > 0 (got %d)'
                             % (source, p.lr_policy, p.stepsize))
    if p.lr_policy in ('step', 'exp', 'inv', 'multistep', 'sigmoid') and p.gamma < 0:
        raise MinicaffeError('%s: lr_policy "%s" needs gamma >= 0 (got %g)'
                             % (source, p.lr_policy, p.gamma))


def learning_rate(solver):
    p = solver.param
    it = solver.iter
    policy = p.lr_policy
    if policy == 'fixed':
        rate = p.base_lr
    elif policy == 'step':
        if p.stepsize <= 0:
            raise MinicaffeError('lr_policy "step" needs stepsize > 0')
        solver.current_step = it // p.stepsize
        rate = p.base_lr * math.pow(p.gamma, solver.current_step)
    elif policy == 'exp':
        rate = p.base_lr * math.pow(p.gamma, it)
    elif policy == 'inv':
        rate = p.base_lr * math.pow(1.0 + p.gamma * it, -p.power)
    elif policy == 'multistep':
        if solver.current_step < len(p.stepvalue) and it >= p.stepvalue[solver.current_step]:
            solver.current_step += 1
            solver.log('MultiStep Status: Iteration %d, step = %d' % (it, solver.current_step))
        rate = p.base_lr * math.pow(p.gamma, solver.current_step)
    elif policy == 'poly':
        rate = p.base_lr * math.pow(1.0 - float(it) / p.max_iter, p.power)
    elif policy == 'sigmoid':
        rate = p.base_lr * (1.0 / (1.0 + math.exp(-p.gamma * (float(it) - float(p.stepsize)))))
    elif not policy:
        raise MinicaffeError('the solver sets no lr_policy (one of: %s)' % ', '.join(POLICIES))
    else:
        raise MinicaffeError('unknown lr_policy "%s" (known: %s)' % (policy, ', '.join(POLICIES)))
    return rate
