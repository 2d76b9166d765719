"""Hyperflux (arXiv 2504.05349), structured: learned L0 gates on KV groups and MLP neurons under a
scheduled pressure, then an exact projection onto the parameter budget."""

from .gates import GateSet, hard_gate
from .planner import HYPERFLUX, plan_with_gates
from .projection import project_to_budget
from .scheduler import PressureScheduler, TargetTrajectory
from .trainer import HyperfluxResult, HyperfluxTrainer
from .trajectory import plot_trajectory, write_trajectory

__all__ = [
    "HYPERFLUX",
    "GateSet",
    "HyperfluxResult",
    "HyperfluxTrainer",
    "PressureScheduler",
    "TargetTrajectory",
    "hard_gate",
    "plan_with_gates",
    "plot_trajectory",
    "project_to_budget",
    "write_trajectory",
]
