"""Statistics are the same however they are collected: layer by layer, or over two processes."""

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from hf_prune.adapters import get_adapter
from hf_prune.calibration.statistics import ChannelStatistics, collect_channel_statistics
from hf_prune.testing import save_tiny_checkpoint, write_calibration_file

from ._subprocess import HF_PRUNE_ON_TWO_PROCESSES
from .conftest import COMMON, make_model


def test_layer_by_layer_equals_full_forward(family):
    model = make_model(family, "sdpa")
    scopes = get_adapter(model).scopes(model)
    rows = torch.randint(0, COMMON["vocab_size"], (3, 20), generator=torch.Generator().manual_seed(4))
    full = collect_channel_statistics(model, scopes, rows)
    sequential = collect_channel_statistics(
        model, scopes, rows, sequential=True, layers=get_adapter(model).decoder_layers(model)
    )
    assert full.tokens == sequential.tokens == rows.numel()
    for name, stats in full.channels.items():
        other = sequential.channels[name]
        assert stats.count == other.count
        torch.testing.assert_close(stats.total, other.total, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(stats.total_sq, other.total_sq, rtol=1e-6, atol=1e-9)


def test_channel_statistics_are_float64_running_sums():
    stats = ChannelStatistics.zeros(3)
    stats.update(torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]))
    stats.update(torch.tensor([[[2.0, 2.0, 2.0]]]))
    assert stats.total.dtype == torch.float64 and int(stats.count) == 3
    torch.testing.assert_close(stats.mean, torch.tensor([2.0, 2.0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(stats.variance, torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64))


@pytest.mark.parametrize("importance, compensate", [("activation", "lstsq"), ("taylor", "bias")])
def test_two_processes_equal_one(tmp_path, importance, compensate):
    """`accelerate launch` with 2 CPU processes (gloo): reduced scores and the pruned weights equal 1 process; the
    cut's refit on pruned activations sums each layer's statistics (second moments too) over both processes."""
    model_dir = save_tiny_checkpoint("llama", tmp_path / "model")
    calibration = write_calibration_file(tmp_path / "calib.jsonl")
    common = ["--model", model_dir, "--target", "emp", "--importance", importance, "--sparsity", "0.3",
              "--calibration", calibration, "--calibration-samples", "8", "--seq-len", "32",
              "--compensate", compensate, "--units", "all"]
    single = subprocess.run([sys.executable, "-m", "hf_prune", *common, "--output", str(tmp_path / "one")],
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    double = subprocess.run([*HF_PRUNE_ON_TWO_PROCESSES, *common, "--output", str(tmp_path / "two")],
                            capture_output=True, text=True, timeout=300)
    assert double.returncode == 0, double.stderr[-3000:]
    assert "calibration: 256 tokens over 1 process(es)" in single.stdout
    assert "calibration: 256 tokens over 2 process(es)" in double.stdout  # each process saw half of the rows
    for output in (single.stdout, double.stdout):  # the walk's tokens, summed over the processes (lines may wrap)
        assert "passes over 256 tokens" in " ".join(output.split())

    one, two = load_file(tmp_path / "one" / "scores" / "importance.safetensors"), load_file(tmp_path / "two" / "scores" / "importance.safetensors")
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(one[name], two[name], rtol=1e-9, atol=1e-12)
    weights_one = load_file(tmp_path / "one" / "model.safetensors")
    weights_two = load_file(tmp_path / "two" / "model.safetensors")
    for name in weights_one:
        torch.testing.assert_close(weights_one[name], weights_two[name], rtol=1e-5, atol=1e-6)
