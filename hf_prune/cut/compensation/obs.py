"""``--compensate obs``: least squares that also chooses *which* groups go, by the Optimal Brain Surgeon error.

The plan fixes how many groups each scope keeps; an importance criterion (activation, fluctuation) ranked them one
by one, on the dense model. But least squares then refits the kept columns, and a group the criterion ranks low can
be one the others cannot stand in for, while a "strong" group may be almost a copy of kept ones. The error the refit
leaves for removing a set S of input columns is known in closed form from the second moments H of the consumer's
input (Hassibi & Stork's OBS, its structured form in ZipLM, arXiv 2302.04089, and SlimGPT, arXiv 2412.18110):

    E(S) = tr(W_S (H⁻¹_SS)⁻¹ W_Sᵀ),   after which   W ← W − W_S (H⁻¹_SS)⁻¹ H⁻¹_S:,   H⁻¹ ← H⁻¹ − H⁻¹_:S (H⁻¹_SS)⁻¹ H⁻¹_S:

Groups are removed greedily, the cheapest first, with every later error measured after the earlier removals have
been compensated — so the choice knows what the refit will do. It is made on the inputs the consumer sees at cut
time (the pruned prefix's, with ``--refit-on pruned``), layer by layer. H is the *centred* second moment: the refit
also sets a bias, which absorbs the mean, and least squares with an intercept is least squares on centred data.
The kept columns and the bias are then written by :func:`~.lstsq.least_squares_weights`, exactly as ``lstsq``.

Removals are made ``ceil(removed / ROUNDS)`` at a time (each round ranks the remaining groups on the updated
weights): SlimGPT's group-wise removal for the same reason — one downdate of H⁻¹ per group costs a d×d update
each, so an 8B down_proj (d = 14336, 5000 neurons removed at 35%) takes ROUNDS rank-m updates instead of 5000
rank-1 ones. The search measures every width of a scope with the groups OBS would keep at that count, read off one
greedy removal order per scope (:func:`obs_removal_order`: its prefixes are nested choices), so it picks the counts
for the model the cut will write; the cut then makes the greedy choice at each count the search picked. Asymmetric
refits (``--refit-on asymmetric``) choose on the pruned stream's moments. Memory besides the statistics: the inverse, a d×d float64 matrix (formed over a copy of
the covariance where it lies, :mod:`.linalg`; with the statistics spilled to a file, in the memory they held), and
the consumer's weight in float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ...calibration.statistics import ChannelStatistics
from ..surgery import block_indices
from ...runtime.spilled import working_copy
from .linalg import cholesky_in_place, inverse_in_place
from .lstsq import LeastSquaresCompensation, resolved_damping

#: removals are made in at most this many rounds (see the module docstring). Measured on SmolLM2-135M, uniform
#: MLP-only counts, validation split (eval/results/obs_rounds.md): 8, 32, 128 rounds and one group at a time lie
#: within 0.02 of each other (perplexity ratio 2.134-2.147 at 35%, 3.217-3.250 at 50%; lstsq alone: 2.184, 3.443)
ROUNDS = 32
#: columns of the weight squared at a time when ranking single-column groups (a block is out × this, float64)
COLUMNS_PER_BLOCK = 1024


@torch.no_grad()
def obs_kept_groups(weight: torch.Tensor, block: int, keep: int, channels: ChannelStatistics,
                    damping: float | None = None, rounds: int = ROUNDS) -> list[int]:
    """The ``keep`` groups (of ``block`` consecutive input columns each) whose removal's compensated error, greedily,
    is smallest; sorted."""
    groups = weight.shape[1] // block
    removed = set(obs_removal_order(weight, block, groups - keep, channels, damping, rounds))
    return [group for group in range(groups) if group not in removed]


@torch.no_grad()
def obs_removal_order(weight: torch.Tensor, block: int, to_remove: int, channels: ChannelStatistics,
                      damping: float | None = None, rounds: int = ROUNDS) -> list[int]:
    """The first ``to_remove`` groups greedy OBS removes, in the order it removes them (within a round, the cheapest
    first). Its prefixes are nested choices: the search reads every candidate width of a scope off one order."""
    if channels.gram is None:
        raise ValueError("OBS selection needs second moments: collect statistics with gram=True")
    groups = weight.shape[1] // block
    if to_remove <= 0:
        return []
    inverse = _damped_inverse_covariance(channels, resolved_damping(damping))
    work = weight.detach().to(device="cpu", dtype=torch.float64, copy=True)  # one copy (.to().clone() made two)
    alive = torch.ones(groups, dtype=torch.bool)
    per_round = max(1, math.ceil(to_remove / rounds))
    order: list[int] = []
    while len(order) < to_remove:
        live = torch.nonzero(alive).flatten()
        errors = _removal_errors(work, inverse, live, block)
        cheapest = torch.topk(errors, min(per_round, to_remove - len(order)), largest=False, sorted=True).indices
        chosen = live[cheapest]
        columns = block_indices(chosen.tolist(), block)
        rows = inverse.index_select(0, columns)  # H⁻¹_S:  [m, d]
        factor = torch.linalg.cholesky(rows.index_select(1, columns))
        coefficients = torch.cholesky_solve(rows, factor)  # (H⁻¹_SS)⁻¹ H⁻¹_S:
        work.addmm_(work.index_select(1, columns), coefficients, alpha=-1.0)
        inverse.addmm_(rows.T, coefficients, alpha=-1.0)
        alive[chosen] = False
        order.extend(chosen.tolist())
    return order


def _damped_inverse_covariance(channels: ChannelStatistics, damping: float) -> torch.Tensor:
    """(Σ + λI)⁻¹ of the centred second moments, λ = ``damping`` × their mean diagonal (lstsq's ridge)."""
    count = float(channels.count)
    mean = channels.total / count
    covariance = working_copy(channels.gram).div_(count)  # written over from here on: Σ, then its factor, then Σ⁻¹
    covariance.addr_(mean, mean, alpha=-1.0)  # in place: an outer product would be one more d×d matrix
    covariance.diagonal().add_(damping * float(covariance.diagonal().mean()))
    info = cholesky_in_place(covariance)
    if info:
        raise FloatingPointError(f"OBS selection: the input covariance is not positive definite even with "
                                 f"{damping:g} damping (leading minor {info}); are the statistics finite?")
    return inverse_in_place(covariance)


def _removal_errors(weight: torch.Tensor, inverse: torch.Tensor, live: torch.Tensor, block: int) -> torch.Tensor:
    """E(g) = tr(W_g (H⁻¹_gg)⁻¹ W_gᵀ) for every live group ``g`` alone, on the current (compensated) weights."""
    if block == 1:  # a block of columns at a time: no copy of the weight
        squares = torch.cat([weight.index_select(1, chunk).pow_(2).sum(dim=0) for chunk in live.split(COLUMNS_PER_BLOCK)])
        return squares / inverse.diagonal().index_select(0, live)
    columns = block_indices(live.tolist(), block).view(-1, block)  # [groups, block]
    diagonal_blocks = inverse[columns[:, :, None], columns[:, None, :]]  # [groups, block, block]
    weights = weight[:, columns].permute(1, 2, 0)  # [groups, block, out]
    solved = torch.cholesky_solve(weights, torch.linalg.cholesky(diagonal_blocks))
    return (weights * solved).sum(dim=(1, 2))


class OptimalBrainSurgeonCompensation(LeastSquaresCompensation):
    """Least squares whose kept groups, within each scope's count, are chosen by greedy OBS (:func:`obs_kept_groups`)."""

    def choose(self, weight: torch.Tensor, block: int, keep: Sequence[int],
               channels: ChannelStatistics, derived: dict | None = None) -> list[int]:
        count = len(set(keep))
        if count == 0:  # the whole sublayer goes: nothing to choose
            return []
        if derived is None:  # the cut: the greedy choice for this count
            return obs_kept_groups(weight, block, count, channels, rounds=ROUNDS)
        # the search, every width of one scope: the prefixes of one greedy order down to a single group
        groups = weight.shape[1] // block
        if "removal_order" not in derived:
            derived["removal_order"] = obs_removal_order(weight, block, groups - 1, channels, rounds=ROUNDS)
        removed = set(derived["removal_order"][:groups - count])
        return [group for group in range(groups) if group not in removed]
