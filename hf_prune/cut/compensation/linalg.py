"""Cholesky factorisation, solve and inverse of a symmetric positive definite matrix, written over their inputs.

Least squares and OBS work on d×d float64 matrices (Llama-3.1-8B's down_proj: d = 14336, 1.6 GB each). torch's
``cholesky_ex(A, out=A)`` and ``cholesky_solve(B, L, out=B)`` look in place but are not on row-major tensors: LAPACK
wants column-major storage, so torch copies the matrix (and, for the solve, the factor too) into a column-major
buffer and back — measured on the CPU: one more matrix for the factorisation, the factor and the right-hand side
once more for the solve. A symmetric matrix stored row-major *is* its own transpose stored column-major, so these
functions hand LAPACK the transposed view (``A.mT``), which it factors where it lies, and solve with two triangular
solves into a column-major right-hand side. The inverse (OBS needs all of it) is LAPACK's ``potri`` through SciPy,
which torch does not expose in place. Same LAPACK routines as torch's own, so the same numbers.
"""

from __future__ import annotations

import torch

#: rows mirrored at a time when the inverse's other triangle is filled (a block is this many rows × d)
MIRROR_ROWS = 1024


def cholesky_in_place(matrix: torch.Tensor) -> int:
    """Factor the symmetric positive definite ``matrix`` = L Lᵀ in place; returns LAPACK's info (0: success, k > 0:
    the leading minor of order k is not positive definite). Afterwards ``factor_view(matrix)`` is L (lower
    triangle); the other triangle of ``matrix`` holds nothing of use."""
    view = matrix.mT  # column-major: LAPACK factors it where it lies
    info = torch.empty((), dtype=torch.int32, device=matrix.device)
    torch.linalg.cholesky_ex(view, out=(view, info))
    return int(info)


def factor_view(matrix: torch.Tensor) -> torch.Tensor:
    """The factor L of a matrix factored by :func:`cholesky_in_place` (its column-major view)."""
    return matrix.mT


def column_major(rows: int, columns: int, **kwargs) -> torch.Tensor:
    """An uninitialised ``[rows, columns]`` tensor stored column-major: a right-hand side :func:`solve_in_place`
    solves where it lies."""
    return torch.empty(columns, rows, **kwargs).mT


def solve_in_place(factored: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Solve (L Lᵀ) X = ``right`` for the matrix factored in place by :func:`cholesky_in_place`, writing X over
    ``right`` (``[n, m]``; column-major, from :func:`column_major`, or LAPACK gets a copy of it)."""
    factor = factor_view(factored)
    torch.linalg.solve_triangular(factor, right, upper=False, out=right)
    torch.linalg.solve_triangular(factor.mT, right, upper=True, out=right)
    return right


def inverse_in_place(factored: torch.Tensor) -> torch.Tensor:
    """(L Lᵀ)⁻¹ of the matrix factored in place by :func:`cholesky_in_place`, written over it (both triangles).

    LAPACK's ``potri`` on a CPU float64 matrix; elsewhere ``torch.cholesky_inverse`` (one more matrix for a moment).
    """
    if factored.device.type != "cpu" or factored.dtype != torch.float64:
        factored.copy_(torch.cholesky_inverse(factor_view(factored)))
        return factored
    from scipy.linalg import lapack

    column_view = factored.numpy().T  # Fortran-ordered: potri overwrites it
    _, info = lapack.dpotri(column_view, lower=1, overwrite_c=1)
    if info:
        raise FloatingPointError(f"inverting a Cholesky factor: LAPACK potri returned {info}")
    _mirror_upper_to_lower(factored)
    return factored


def _mirror_upper_to_lower(matrix: torch.Tensor) -> None:
    """Fill the lower triangle of a row-major ``matrix`` from its upper one (what potri wrote: the lower triangle
    of the column-major view), a block of rows at a time."""
    size = matrix.shape[0]
    for first in range(0, size, MIRROR_ROWS):
        last = min(first + MIRROR_ROWS, size)
        matrix[first:last, :first] = matrix[:first, first:last].T
        diagonal = matrix[first:last, first:last]
        diagonal.copy_(torch.triu(diagonal) + torch.triu(diagonal, diagonal=1).T)
