"""The search's dense reference kept in a file (plan/search/spilled.py): the same rows come back, and a sweep over
an offloaded model measures the same costs with it as in memory."""

import torch

from hf_prune.runtime.spilled import SpillFile, in_memory


def test_spilled_rows_read_back_any_range_of_rows_exactly():
    spill = SpillFile()
    first, second = torch.randn(37, 11), torch.randn(5, 11).double()
    a, b = spill.spill(first), spill.spill(second)  # two tensors in one file
    assert len(a) == 37 and a.shape == (37, 11)
    assert torch.equal(a[3:20], first[3:20]) and torch.equal(a[30:99], first[30:])
    assert torch.equal(b[:], second) and b[:].dtype == torch.float64
    assert a[5:5].shape == (0, 11)
    assert torch.equal(in_memory(a), first) and in_memory(first) is first
    spill.close()


def test_rows_chosen_by_index_come_back_in_the_order_asked():
    spill = SpillFile()
    matrix = torch.randn(50, 7, dtype=torch.float64)
    rows = spill.spill(matrix)
    for index in ([3, 4, 5, 9, 10, 49], [0], [7, 2, 3], list(range(50)), []):
        chosen = torch.tensor(index, dtype=torch.long)
        assert torch.equal(rows.index_select(0, chosen), matrix.index_select(0, chosen))


def test_least_squares_and_obs_give_the_same_numbers_from_spilled_second_moments():
    """With the d×d sums in a file (a run held to one layer), the refit reads the kept rows from it and OBS writes
    its inverse over a copy it reads back: the same choice and the same weights, bit for bit."""
    import copy

    from hf_prune.calibration.statistics import ChannelStatistics
    from hf_prune.cut.compensation.lstsq import least_squares_weights
    from hf_prune.cut.compensation.obs import obs_kept_groups

    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(400, 40, generator=generator) @ torch.randn(40, 40, generator=generator) + 0.3
    weight = torch.randn(12, 40, generator=generator)
    channels = ChannelStatistics.zeros(40, gram=True)
    channels.update(inputs)
    spilled = copy.deepcopy(channels)
    spilled.spill_second_moments()
    assert not isinstance(spilled.gram, torch.Tensor)

    kept = obs_kept_groups(weight, 4, 6, channels)
    assert obs_kept_groups(weight, 4, 6, spilled) == kept
    columns = torch.tensor([4 * group + i for group in kept for i in range(4)])
    expected, got = least_squares_weights(weight, columns, channels), least_squares_weights(weight, columns, spilled)
    assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])
    assert torch.equal(spilled.gram.load(), channels.gram)  # OBS worked on a copy
