"""Caffe's solvers (SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam)."""
from .solver import (Solver, SolverAction, get_solver, read_solver_param, SGDSolver,  # noqa: F401
                     NesterovSolver, AdaGradSolver, RMSPropSolver, AdaDeltaSolver, AdamSolver)
