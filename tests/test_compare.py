"""eval/compare.py end to end on a tiny checkpoint and a tiny corpus written here (a smoke test of the
harness: every method plans, is evaluated, and lands in the table with its achieved sparsity)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from hf_prune.testing import SAMPLE_TEXT, save_tiny_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "eval"))
import compare  # noqa: E402


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    directory = tmp_path / "corpus"
    directory.mkdir()
    for split in ("train", "validation", "test"):
        with open(directory / f"{split}.jsonl", "w") as handle:
            for i in range(30):
                handle.write(json.dumps({"text": f"{i} {SAMPLE_TEXT}"}) + "\n")
    monkeypatch.setenv("HF_PRUNE_CORPUS", str(directory))
    return directory


def test_compare_runs_every_method(tmp_path, corpus):
    model_dir = save_tiny_checkpoint("llama", tmp_path / "tiny", attention_bias=False, mlp_bias=False)
    rows = compare.main(["--models", model_dir, "--seeds", "0", "--sparsities", "0.35", "--eval-windows", "4",
                         "--eval-seq-len", "32", "--calibration-samples", "4", "--seq-len", "32",
                         "--batch-size", "2", "--hyperflux-steps", "10", "--hyperflux-regrowth", "2", "--name", "t", "--out-dir", str(tmp_path / "out")])
    assert [r["method"] for r in rows] == list(compare.METHODS)
    assert all("skipped" not in r for r in rows), [r for r in rows if "skipped" in r]
    for r in rows:
        assert 0.2 < r["achieved"] < 0.5 and r["ratio"] > 0 and r["delta_nll_se"] >= 0
        assert r["kept_groups"] or r["removed_layers"]
    table = (tmp_path / "out" / "t.md").read_text()
    assert all(method in table for method in compare.METHODS)
    assert (tmp_path / "out" / "t.png").stat().st_size > 0
