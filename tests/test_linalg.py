"""The in-place Cholesky factorisation, solve and inverse that least squares and OBS use on d×d float64 matrices:
the same numbers as torch's own routines, written over their inputs (no second matrix of the size of the moments)."""

import pytest
import torch

from hf_prune.cut.compensation.linalg import (
    MIRROR_ROWS, cholesky_in_place, column_major, factor_view, inverse_in_place, solve_in_place)


def spd(size: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    factor = torch.randn(size, size + 5, generator=generator, dtype=torch.float64)
    return factor @ factor.T / size + 0.1 * torch.eye(size, dtype=torch.float64)


def test_the_factor_and_the_solution_are_torchs_own_and_lie_where_their_inputs_lay():
    matrix, right_values = spd(70), torch.randn(70, 9, dtype=torch.float64)
    expected_factor = torch.linalg.cholesky(matrix)
    expected = torch.cholesky_solve(right_values, expected_factor)

    storage = matrix.data_ptr()
    assert cholesky_in_place(matrix) == 0
    assert matrix.data_ptr() == storage
    torch.testing.assert_close(torch.tril(factor_view(matrix)), expected_factor, rtol=0, atol=1e-13)

    right = column_major(70, 9, dtype=torch.float64)
    right.copy_(right_values)
    right_storage = right.data_ptr()
    solution = solve_in_place(matrix, right)
    assert solution.data_ptr() == right_storage
    torch.testing.assert_close(solution, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size", [5, MIRROR_ROWS + 37])  # one block of rows, and more than one
def test_the_inverse_is_written_over_the_factor_with_both_triangles(size):
    matrix = spd(size, seed=1)
    expected = torch.cholesky_inverse(torch.linalg.cholesky(matrix))
    storage = matrix.data_ptr()
    assert cholesky_in_place(matrix) == 0
    inverse = inverse_in_place(matrix)
    assert inverse.data_ptr() == storage
    torch.testing.assert_close(inverse, expected, rtol=1e-10, atol=1e-12)
    assert torch.equal(inverse, inverse.T)


def test_a_matrix_that_is_not_positive_definite_is_reported_not_factored():
    matrix = spd(6)
    matrix[3, 3] = -1.0
    assert cholesky_in_place(matrix) == 4  # LAPACK's info: the leading minor of order 4


def test_a_search_refit_reuses_the_projected_moments_and_gives_the_refit_of_its_own(monkeypatch):
    """Refits of one consumer for several widths (the search) form moments @ Wᵀ once and gather their rows: the same
    weights and bias as a refit that forms its own right-hand side, to rounding."""
    from hf_prune.calibration.statistics import ChannelStatistics
    from hf_prune.cut.compensation import lstsq

    torch.manual_seed(0)
    channels = ChannelStatistics.zeros(600, gram=True)
    channels.update(torch.randn(2000, 600) @ torch.randn(600, 600) / 20)
    weight = torch.randn(48, 600)
    formed = []
    original = lstsq._projected
    monkeypatch.setattr(lstsq, "_projected",
                        lambda moments, dense, derived: formed.append("projected" not in derived) or
                        original(moments, dense, derived))
    derived = {}
    for keep in (torch.arange(0, 600, 2), torch.arange(300), torch.arange(599, -1, -3).flip(0)):
        own = lstsq.least_squares_weights(weight, keep, channels)
        reused = lstsq.least_squares_weights(weight, keep, channels, derived=derived)
        for a, b in zip(own, reused):
            torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9)
    assert formed == [True, False, False] and list(derived) == ["projected"] and derived["projected"].shape == (600, 48)


def test_with_its_moments_in_a_file_the_projection_goes_to_a_file_too():
    """An offloaded run keeps a layer's moments in a file so that least squares' system takes their memory; the
    search's moments @ Wᵀ follows them there (else 0.47 GB at 8B sits beside every refit), with the same refits."""
    from hf_prune.calibration.statistics import ChannelStatistics
    from hf_prune.cut.compensation import lstsq
    from hf_prune.runtime.spilled import SpilledRows

    torch.manual_seed(0)
    channels = ChannelStatistics.zeros(300, gram=True)
    channels.update(torch.randn(1000, 300) @ torch.randn(300, 300) / 20)
    weight = torch.randn(24, 300)
    keeps = (torch.arange(0, 300, 2), torch.arange(150))
    in_memory = [lstsq.least_squares_weights(weight, keep, channels, derived={}) for keep in keeps]
    channels.spill_second_moments()
    derived = {}
    spilled = [lstsq.least_squares_weights(weight, keep, channels, derived=derived) for keep in keeps]
    assert isinstance(derived["projected"], SpilledRows)
    for ours, theirs in zip(spilled, in_memory):
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
