"""``--target search``: measured costs per (scope, group count), a knapsack for the budget, refinement."""

from .planner import plan_by_search

__all__ = ["plan_by_search"]
