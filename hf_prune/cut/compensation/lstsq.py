"""``--compensate lstsq``: the kept columns *and* a bias are refit by least squares to reproduce the dense output
on calibration data, min E‖W x − (W'_K x_K + b')‖², solved in closed form from the second moments of the
consumer's input (the structured form of the OBS update of ZipLM, arXiv 2302.04089, and SlimGPT,
arXiv 2412.18110). It contains ``bias`` as the special case of unchanged kept columns. Measured on the
reference model with uniform MLP-only pruning: perplexity ratio 1.109 → 1.048 at 35%, 1.338 → 1.145 at 50%.
It holds a d×d float64 matrix per consumer while calibrating (d = its input width). A small ridge, centred on the
dense kept columns (:data:`RIDGE_TOWARDS`), keeps the system definite and the refit close to weights known to work
on text the calibration did not cover.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ...calibration.statistics import ChannelStatistics
from ...runtime.spilled import SpilledRows, SpillFile
from .base import Compensation
from .linalg import cholesky_in_place, column_major, solve_in_place

#: relative ridge added to the kept channels' second moments: a removed channel that a kept one copies
#: (or a channel that never fires) makes them singular; 1% of the mean diagonal, as SparseGPT dampens
DAMPING = 0.01
#: what the ridge pulls the refit kept columns towards: ``"dense"``, their dense values (the refit then minimises
#: E‖W y − (W'_K x_K + b')‖² + λ‖W'_K − W_K‖², the very objective OBS's damped error assumes), or ``"zero"``
#: (plain ridge regression: it shrinks every refit weight, and more so the stronger the ridge). Measured on the
#: validation split (eval/results/compensation_ridge_smollm2.md, SmolLM2, EMP plan, OBS, refit on pruned inputs):
#: perplexity ratio at 35% / 50%, in-domain 1.880 / 2.657 → 1.856 / 2.584, on a source calibration never saw
#: 4.593 / 8.594 → 4.500 / 8.297; at 1% the dense centre is within 0.02 of the best damping of either centre in-domain
RIDGE_TOWARDS = "dense"
#: rows of the second moments read at a time when forming the system (a block is ROWS_PER_BLOCK x d float64)
ROWS_PER_BLOCK = 256
#: output rows of the consumer's weight held in float64 at a time while forming the right-hand side
OUTPUTS_PER_BLOCK = 256


def resolved_damping(damping: float | None) -> float:
    """``damping``, or :data:`DAMPING` as it stands when called (a benchmark may set the module's constant)."""
    return DAMPING if damping is None else damping


def least_squares_weights(
    weight: torch.Tensor, keep_columns: torch.Tensor, channels: ChannelStatistics, damping: float | None = None,
    derived: dict | None = None, ridge_towards: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(new kept columns ``[out, k]``, bias shift ``[out]``) minimising E‖W y − (W'_K x_K + b')‖² on calibration
    data, where y is x itself or, when the statistics carry a target stream (``cross``), the dense model's input.

    Nothing of the size of the d×d second moments is copied, and the k×k system is factored in place: the kept block
    and the right-hand side are read from the moments a block of rows at a time, and the system (symmetric positive
    definite once damped) is solved by a Cholesky factorisation written over itself (:mod:`.linalg`: torch's own
    ``out=`` forms copy it) — so a layer costs its statistics plus one k×k matrix and one k×out, the solution written
    over the right-hand side (Llama-3.1-8B's down_proj at 35%: 0.7 GB, where a general solve held three k×k
    matrices). The weight is read in float64 a block of output rows at a time (a float64 copy of Llama-3.1-8B's
    down_proj would be 0.47 GB more).

    With ``derived`` (the search refitting one consumer for every width of its scope), the right-hand side of every
    input row, moments @ Wᵀ (d × out float64: 0.47 GB for Llama-3.1-8B's down_proj), is formed once and kept there,
    and each refit gathers its kept rows: forming it is the largest product of a refit (k × d × out), where the
    k × k factorisation is k³/3.
    """
    if channels.gram is None:
        raise ValueError("least-squares compensation needs second moments: collect statistics with gram=True")
    count = float(channels.count)
    kept = keep_columns.cpu()
    size = kept.numel()
    dense = weight.detach().to(device="cpu")
    # E[[x_K; 1] (W y)ᵀ] with y the input whose dense output is reproduced: x itself, or the dense model's (asymmetric)
    moments = channels.cross if channels.cross is not None else channels.gram
    projected = _projected(moments, dense, derived) if derived is not None else None  # before the system exists
    system = torch.empty(size + 1, size + 1, dtype=torch.float64)  # moments of [x_K; 1]
    right = column_major(size + 1, dense.shape[0], dtype=torch.float64)
    _gather_kept_rows(system, right, channels.gram, moments, projected, dense, kept)
    system[:size, :size] /= count
    right[:size] /= count
    mean = channels.total.index_select(0, kept) / count
    system[:size, size] = system[size, :size] = mean
    system[size, size] = 1.0
    damping = resolved_damping(damping)
    ridge = damping * float(system.diagonal()[:size].mean())
    system.diagonal()[:size] += ridge
    towards_dense = (RIDGE_TOWARDS if ridge_towards is None else ridge_towards) == "dense"
    for outputs, weight_rows in _float64_row_blocks(dense):  # the weight in float64 once, for the bias and the ridge
        right[size, outputs] = weight_rows @ channels.target_mean
        if towards_dense:  # λ W_Kᵀ: the ridge's pull towards the dense kept columns
            right[:size, outputs] += ridge * weight_rows.index_select(1, kept).T
    info = cholesky_in_place(system)
    if info:
        raise FloatingPointError(f"least squares: the kept channels' second moments are not positive definite even "
                                 f"with {damping:g} damping (leading minor {info}); are the statistics finite?")
    solution = solve_in_place(system, right)  # [k + 1, out], written over the right-hand side
    return solution[:size].T, solution[size]


def _gather_kept_rows(system: torch.Tensor, right: torch.Tensor, gram, moments, projected, dense: torch.Tensor,
                      kept: torch.Tensor) -> None:
    """Write the kept channels' second moments into ``system[:k, :k]`` and their moments with the target's dense
    output into ``right[:k]`` (read off ``projected`` when the search formed it), a block of kept rows at a time, so
    nothing of the d×d moments' size is copied."""
    start = 0
    for rows in kept.split(ROWS_PER_BLOCK):
        stop = start + rows.numel()
        block = gram.index_select(0, rows)
        system[start:stop, :kept.numel()] = block.index_select(1, kept)
        if projected is not None:
            right[start:stop] = projected.index_select(0, rows)
        else:
            if moments is not gram:
                block = moments.index_select(0, rows)
            for outputs, weight_rows in _float64_row_blocks(dense):
                right[start:stop, outputs] = block @ weight_rows.T
        start = stop


def _projected(moments, dense: torch.Tensor, derived: dict) -> torch.Tensor | SpilledRows:
    """moments @ Wᵀ for every input row, ``[d, out]`` float64, formed once per ``derived`` (a block of the moments'
    rows at a time, so spilled moments are read as for one refit).

    Where the moments lie in a file (an offloaded run), the product goes to a file of its own too and each refit
    reads back its kept rows: held in memory it would sit beside every refit's system (Llama-3.1-8B's down_proj:
    0.47 GB more than a refit without it, and above the layer-wise bound)."""
    if "projected" not in derived:
        projected = torch.empty(moments.shape[0], dense.shape[0], dtype=torch.float64)
        for first in range(0, moments.shape[0], ROWS_PER_BLOCK):
            rows = slice(first, min(first + ROWS_PER_BLOCK, moments.shape[0]))
            block = moments[rows]
            for outputs, weight_rows in _float64_row_blocks(dense):
                projected[rows, outputs] = block @ weight_rows.T
        derived["projected"] = SpillFile().spill(projected) if isinstance(moments, SpilledRows) else projected
    return derived["projected"]


def _float64_row_blocks(weight: torch.Tensor) -> Iterator[tuple[slice, torch.Tensor]]:
    """(output rows, those rows of ``weight`` in float64), OUTPUTS_PER_BLOCK rows at a time."""
    for first in range(0, weight.shape[0], OUTPUTS_PER_BLOCK):
        rows = slice(first, min(first + OUTPUTS_PER_BLOCK, weight.shape[0]))
        yield rows, weight[rows].to(torch.float64)


class LeastSquaresCompensation(Compensation):
    second_moments = True

    def refit(self, weight: torch.Tensor, kept: torch.Tensor, removed: torch.Tensor,
              channels: ChannelStatistics, derived: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return least_squares_weights(weight, kept, channels, derived=derived)
