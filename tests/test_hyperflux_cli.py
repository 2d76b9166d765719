"""`hf-prune --target hyperflux` end to end: four families, exact budget, kill and resume, two processes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from hf_prune.adapters import get_adapter
from hf_prune.run.cli import main
from hf_prune.testing import save_tiny_checkpoint, write_calibration_file

from ._subprocess import HF_PRUNE_ON_TWO_PROCESSES


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr()


def hyperflux_args(model_dir, calibration, **overrides):
    options = {"--target": "hyperflux", "--sparsity": "0.35", "--calibration": calibration,
               "--calibration-samples": "8", "--seq-len": "16", "--steps": "20", "--tick-every": "5",
               "--regrowth-steps": "5", "--gate-lr": "0.02", "--units": "all", **overrides}
    return ["--model", model_dir, *[str(x) for pair in options.items() for x in pair]]


def smallest_group(model_dir) -> int:
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return min(scope.params_per_group(model) for scope in get_adapter(model).scopes(model))


def test_every_family_hits_the_budget_exactly(capsys, tmp_path, family):
    model_dir = save_tiny_checkpoint(family, tmp_path / "model")
    calibration = write_calibration_file(tmp_path / "calib.jsonl")
    out = tmp_path / "out"
    code, captured = run(capsys, *hyperflux_args(model_dir, calibration), "--output", out)
    assert code == 0, captured.err
    report = json.loads((out / "hf_prune_report.json").read_text())
    removed = report["prunable_before"] - report["prunable_after"]
    target = 0.35 * report["prunable_before"]
    assert 0 <= removed - target < smallest_group(model_dir), "projection keeps exactly the budget"
    assert "Hyperflux: 5 ticks" in captured.out
    trajectory = json.loads((out / "hyperflux_trajectory.json").read_text())
    assert len(trajectory["ticks"]) == 5 and len(trajectory["scopes"]) == 2 * 3
    assert {"density", "target", "gamma", "lm_loss", "open"} <= set(trajectory["ticks"][0])
    assert (out / "hyperflux_trajectory.png").stat().st_size > 10_000
    assert not (tmp_path / "out.hyperflux-state").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert sum(p.numel() for p in reloaded.parameters()) == report["params_after"]


def test_gates_can_start_from_importance_scores(capsys, tmp_path):
    model_dir = save_tiny_checkpoint("qwen3", tmp_path / "model")
    calibration = write_calibration_file(tmp_path / "calib.jsonl")
    code, captured = run(capsys, *hyperflux_args(model_dir, calibration, **{"--gate-init": "scores",
                         "--importance": "activation"}), "--output", tmp_path / "out")
    assert code == 0, captured.err
    assert (tmp_path / "out" / "scores" / "importance.safetensors").exists()


def test_hyperflux_options_are_refused_with_other_targets(capsys, tmp_path):
    model_dir = save_tiny_checkpoint("llama", tmp_path / "model")
    code, captured = run(capsys, "--model", model_dir, "--importance", "magnitude", "--steps", "50",
                         "--output", tmp_path / "o")
    assert code == 2 and "steps applies to --target hyperflux only" in captured.err


def test_hyperflux_needs_calibration_text(capsys, tmp_path):
    model_dir = save_tiny_checkpoint("llama", tmp_path / "model")
    code, captured = run(capsys, "--model", model_dir, "--target", "hyperflux", "--output", tmp_path / "o")
    assert code == 2 and "target 'hyperflux' needs calibration text" in captured.err


@pytest.mark.parametrize("bits", [4, 8])
def test_gates_train_on_a_quantized_base_and_cut_the_full_precision_weights(capsys, tmp_path, bits):
    model_dir = save_tiny_checkpoint("llama", tmp_path / "model")
    calibration = write_calibration_file(tmp_path / "calib.jsonl")
    out = tmp_path / "out"
    code, captured = run(capsys, *hyperflux_args(model_dir, calibration), f"--load-in-{bits}bit", "--output", out)
    assert code == 0, captured.err
    report = json.loads((out / "hf_prune_report.json").read_text())
    assert 0 <= report["prunable_before"] - report["prunable_after"] - 0.35 * report["prunable_before"] < \
        smallest_group(model_dir)
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert type(reloaded.model.layers[0].mlp.down_proj) is torch.nn.Linear  # real weights, not quantized ones
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert sum(p.numel() for p in reloaded.parameters()) == report["params_after"]


def test_quantized_base_errors(capsys, tmp_path, monkeypatch):
    model_dir = save_tiny_checkpoint("llama", tmp_path / "model")
    code, captured = run(capsys, "--model", model_dir, "--importance", "magnitude", "--load-in-8bit",
                         "--output", tmp_path / "o")
    assert code == 2 and "applies to --target hyperflux only" in captured.err
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a))
    calibration = write_calibration_file(tmp_path / "calib.jsonl")
    code, captured = run(capsys, *hyperflux_args(model_dir, calibration), "--load-in-4bit", "--output", tmp_path / "o")
    assert code == 2 and "--load-in-4bit needs bitsandbytes: pip install 'hf-prune[bnb]'" in captured.err


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "hf_prune", *[str(a) for a in args]]


def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    model_dir = save_tiny_checkpoint("llama", tmp_path / "model")
    calibration = write_calibration_file(tmp_path / "calib.jsonl")
    args = hyperflux_args(model_dir, calibration, **{"--steps": "200", "--tick-every": "10", "--regrowth-steps": "20",
                                                     "--checkpoint-every": "20"})
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    reference = subprocess.run(cli(*args, "--output", tmp_path / "reference"), capture_output=True, text=True, env=env)
    assert reference.returncode == 0, reference.stderr[-2000:]

    state = tmp_path / "killed.hyperflux-state" / "hyperflux_state.json"
    process = subprocess.Popen(cli(*args, "--output", tmp_path / "killed"), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 240
    while not state.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert state.exists(), "the run wrote no state before it was killed"
    step = json.loads(state.read_text())["step"]
    assert step < 220, "the run was killed before it finished"
    assert not (tmp_path / "killed").exists(), "a killed run leaves no output directory"

    resumed = subprocess.run(cli(*args, "--output", tmp_path / "killed", "--resume"), capture_output=True,
                             text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    shapes = lambda d: json.loads((d / "config.json").read_text())["pruned_linear_shapes"]  # noqa: E731
    assert shapes(tmp_path / "killed") == shapes(tmp_path / "reference")
    ours, theirs = load_file(tmp_path / "killed" / "model.safetensors"), load_file(tmp_path / "reference" / "model.safetensors")
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    trajectory = lambda d: json.loads((d / "hyperflux_trajectory.json").read_text())["ticks"]  # noqa: E731
    assert trajectory(tmp_path / "killed") == trajectory(tmp_path / "reference")


def test_data_parallel_over_two_processes(tmp_path):
    model_dir = save_tiny_checkpoint("qwen2", tmp_path / "model")
    calibration = write_calibration_file(tmp_path / "calib.jsonl")
    result = subprocess.run([*HF_PRUNE_ON_TWO_PROCESSES, *hyperflux_args(model_dir, calibration), "--output", str(tmp_path / "out")],
                            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "hf_prune_report.json").read_text())
    assert report["allocation"]["processes"] == 2
    removed = report["prunable_before"] - report["prunable_after"]
    assert 0 <= removed - 0.35 * report["prunable_before"] < smallest_group(model_dir)
