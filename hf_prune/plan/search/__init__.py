"""``--target search``: measured costs per (scope, group count), a knapsack for the budget, refinement."""

from .planner import SEARCH, plan_by_search

__all__ = ["SEARCH", "plan_by_search"]
