"""Local costs scaled by probes: the KL cost of most candidates read off the change of their own layer's output.

Measuring a candidate's KL means running it through every later layer, so a full table of costs is
O(layers²) layer passes, which is what makes the search slow on an 8B–70B model. Within one scope, the KL
a candidate adds is close to proportional to the squared change it makes to its layer's output on the
held-out rows (a development measurement on SmolLM2-135M's first table, compensated, not kept in eval/results:
rank correlation 0.99, median error 6%), while the
factor between the two falls by two orders of magnitude from the first layer to the last. So per scope
and direction (removing groups or, around a plan, giving groups back) one candidate, the *probe*, is
measured through the rest of the model, and every other candidate's cost is the probe's cost times the
ratio of the two local changes: one layer pass per candidate plus one full pass per probe. Around the dense
model (the first table) that replaces O(layers²) passes per candidate by one; in a refinement round, where a scope
has one or two candidates per direction, it saves about a third. Measured on SmolLM2 (test split, seed 0, search +
least squares, ``python eval/compare.py --models smollm2 --seeds 0 --mc-items 0 --search-rows 2
--search-refine-rounds 1 --methods 'search + least squares, local costs (activation)'``): 1.292 / 1.927 / 3.139 at
20 / 35 / 50% (``eval/results/compare_local.json``), and 1.290 / 1.920 / 3.147 with the refinement's candidates
all measured (``eval/results/local_costs_first_table_only.json``), where measuring every candidate gave
1.315 / 1.909 / 2.974 (``eval/results/compare.json``).

The probe is the candidate with the median kept count among those that change the output at all, so the
factor is read in the middle of the range it is applied to. (The lower quartile, where the knapsack takes its
deep cuts, made plans with a lower summed measured cost of the first table on SmolLM2's held-out calibration
rows in development, but worse test perplexity: 1.353 / 2.058 against 1.290 / 1.920 at 20 / 35%, seed 0, both
with the refinement's candidates all measured: ``eval/results/local_costs_quartile_probe.partial.json`` and
``local_costs_first_table_only.json``.)
A scope whose candidates change nothing costs nothing.

Carrying a probe to the last layer is the part of the search that grows with the square of the depth: one layer
pass per probe per later layer, where every candidate's local change is one pass. ``--search-probe-rows`` carries
the probes on the first of the held-out rows only: the factor is a ratio of two numbers measured on the same rows,
so it needs fewer tokens than the changes it scales, which are still measured on every row.

Removing a sublayer whole is always measured (it is its own family): there the proportionality breaks down.
In development measurements of SmolLM2's first table (not kept in eval/results), the whole MLP's cost scaled
from the probe came out anywhere from 0.3× to 200× the measured one, and the knapsack picks exactly the
underestimated ones; the widths in between stayed within 0.4–1.4× of the measured cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    """What the probes need to know of one requested change: its scope, how many groups it keeps, and the
    plan's count there (which side of the plan it is on)."""

    scope: str
    kept: int
    base: int

    @property
    def family(self) -> tuple[str, str]:
        """Candidates scaled by the same probe: one scope, one direction (fewer groups than the plan, or more);
        removing the sublayer whole is a family of its own (see the module docstring)."""
        if self.kept == 0:
            return self.scope, "removed"
        return self.scope, "more" if self.kept > self.base else "fewer"


def choose_probes(candidates: Sequence[Candidate], local: Sequence[float]) -> dict[tuple[str, str], int]:
    """Per family, the index of its probe: the median kept count among its candidates whose local change is
    positive (families whose candidates change nothing have no probe)."""
    members: dict[tuple[str, bool], list[int]] = {}
    for index, (candidate, change) in enumerate(zip(candidates, local)):
        if change > 0:
            members.setdefault(candidate.family, []).append(index)
    probes = {}
    for family, indices in members.items():
        indices.sort(key=lambda i: candidates[i].kept)
        probes[family] = indices[len(indices) // 2]
    return probes


def scaled_costs(candidates: Sequence[Candidate], local: Sequence[float],
                 probes: dict[tuple[str, str], int], probe_costs: dict[int, float],
                 probe_local: Sequence[float] | None = None, share: float = 1.0) -> list[float]:
    """Every candidate's cost: its probe's measured cost times the ratio of the two local changes (the probe's own
    cost where that ratio is 1; 0 where the candidate's family has no probe: it changes nothing).

    When the probes ran on a part of the rows (``--search-probe-rows``), ``probe_local`` are the probes' local
    changes on that part and ``share`` its fraction of the tokens: the factor from local change to KL is read where
    the probe's KL was measured, and every candidate's own change (the probe's too) on all the rows."""
    probe_local = local if probe_local is None else probe_local
    costs = []
    for index, (candidate, change) in enumerate(zip(candidates, local)):
        probe = probes.get(candidate.family)
        if probe is None:
            costs.append(0.0)
        elif index == probe and probe_local is local:
            costs.append(probe_costs[probe])
        else:
            costs.append(probe_costs[probe] * change / probe_local[probe] * share)
    return costs
