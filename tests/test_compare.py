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


TINY_RUN = ["--seeds", "0", "--sparsities", "0.35", "--eval-windows", "4", "--eval-seq-len", "32",
            "--calibration-samples", "4", "--seq-len", "32", "--batch-size", "2", "--mc-items", "8",
            "--hyperflux-steps", "10", "--hyperflux-regrowth", "2", "--hyperflux-row-len", "16",
            "--search-rows", "2", "--search-mlp-levels", "4", "--search-refine-rounds", "1", "--name", "t"]


def test_compare_runs_every_method(tmp_path, corpus):
    model_dir = save_tiny_checkpoint("llama", tmp_path / "tiny", attention_bias=False, mlp_bias=False)
    rows = compare.main(["--models", model_dir, *TINY_RUN, "--out-dir", str(tmp_path / "out")])
    dense, *pruned = rows
    assert dense["method"] == "dense" and dense["mc_items"] == 8 and dense["params"] > 0
    assert [r["method"] for r in pruned] == list(compare.METHODS)
    assert all("skipped" not in r for r in pruned), [r for r in pruned if "skipped" in r]
    for r in pruned:
        assert 0.2 < r["achieved"] < 0.5 and r["ratio"] > 0 and r["delta_nll_se"] >= 0
        assert r["kept_groups"] or r["removed_layers"] or r["sliced_dimension"] > 0
        assert 0 <= r["mc_acc"] <= 1 and r["mc_items"] == 8
        assert r["params"] < dense["params"]
    table = (tmp_path / "out" / "t.md").read_text()
    assert all(method in table for method in compare.METHODS)
    assert "Multiple-choice accuracy" in table
    assert (tmp_path / "out" / "t.png").stat().st_size > 0
    assert not (tmp_path / "out" / "t.partial.json").exists()  # the partial file is gone once the run is written


def test_resume_keeps_rows_measured_before_an_interruption(tmp_path, corpus, monkeypatch):
    model_dir = save_tiny_checkpoint("llama", tmp_path / "tiny", attention_bias=False, mlp_bias=False)
    first, second = "uniform (activation)", "FLAP"
    argv = ["--models", model_dir, *TINY_RUN, "--mc-items", "0", "--methods", first, second,
            "--out-dir", str(tmp_path / "out")]

    def interrupted(ctx, sparsity):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setitem(compare.METHODS, second, ("peer", interrupted))
        with pytest.raises(KeyboardInterrupt):
            compare.main(argv)
    partial = json.loads((tmp_path / "out" / "t.partial.json").read_text())
    before = next(r for r in partial["rows"] if r["method"] == first)
    rows = compare.main([*argv, "--resume"])
    assert next(r for r in rows if r["method"] == first) == before  # not measured again
    assert next(r for r in rows if r["method"] == second)["ratio"] > 0
    with pytest.raises(SystemExit, match="other settings"):  # a partial run is only resumed with its settings
        with monkeypatch.context() as patch:
            patch.setitem(compare.METHODS, second, ("peer", interrupted))
            with pytest.raises(KeyboardInterrupt):
                compare.main(argv)
        compare.main([*argv, "--eval-windows", "3", "--resume"])


def test_a_method_added_later_is_measured_alone_beside_a_finished_run(tmp_path, corpus):
    model_dir = save_tiny_checkpoint("llama", tmp_path / "tiny", attention_bias=False, mlp_bias=False)
    argv = ["--models", model_dir, *TINY_RUN, "--mc-items", "0", "--out-dir", str(tmp_path / "out")]
    first = compare.main([*argv, "--methods", "uniform (activation)"])
    rows = compare.main([*argv, "--methods", "uniform (activation)", "search (activation)", "--resume"])
    assert next(r for r in rows if r["method"] == "uniform (activation)") == first[1]
    search = next(r for r in rows if r["method"] == "search (activation)")
    assert abs(search["achieved"] - 0.35) < 0.02
    meta = json.loads((tmp_path / "out" / "t.json").read_text())["meta"]
    assert meta["resumed_rows"] == 1


def test_torch_pruning_rows_only_on_the_same_windows(tmp_path):
    budget = {"prune": {"target_sparsity": 0.2, "achieved_sparsity": 0.198, "prune_wall_s": 20.0,
                        "versions": {"transformers": "4.53.3"}},
              "dense_ppl": 31.63, "pruned_ppl": 63.26, "ppl_ratio": 2.0, "delta_nll": 0.69, "delta_nll_se": 0.1,
              "eval_total_params": 1000}
    record = {"timeout_check_transformers5": {"versions": {"transformers": "5.24.0"}, "timeout_s": 300.0,
                                              "pruning_ratio": 0.2},
              "budgets": [budget]}
    path = compare.EVAL_DIR / "results" / "_test_tp.json"
    try:
        path.write_text(json.dumps(record))
        timeout, measured = compare.torch_pruning_rows("smollm2", 31.63, path)
        assert "not built within 300 s" in timeout["skipped"] and "5.24.0" in timeout["method"]
        assert measured["ratio"] == 2.0 and measured["achieved"] == 0.198 and "4.53.3" in measured["method"]
        assert "other windows" in compare.torch_pruning_rows("smollm2", 30.0, path)[1]["skipped"]
        assert compare.torch_pruning_rows("reference", 31.63, path) == []
    finally:
        path.unlink()


def test_off_domain_calibrates_without_a_source_and_scores_on_it_alone(tmp_path, corpus):
    """--off-domain SOURCE: calibration from the train split without SOURCE, scoring on SOURCE's test split only."""
    for split in ("train", "test"):
        with open(corpus / f"{split}.jsonl", "w") as handle:
            for i in range(30):
                source = "held" if i % 3 == 0 else "seen"
                handle.write(json.dumps({"text": f"{source} {i} {SAMPLE_TEXT}", "source": source}) + "\n")
    calibration, test = compare.off_domain_texts("held", tmp_path)
    train_docs = [json.loads(line) for line in Path(calibration).read_text().splitlines()]
    test_docs = [json.loads(line) for line in Path(test).read_text().splitlines()]
    assert len(train_docs) == 20 and {d["source"] for d in train_docs} == {"seen"}
    assert len(test_docs) == 10 and {d["source"] for d in test_docs} == {"held"}
    with pytest.raises(SystemExit, match="no source 'absent'; its sources: held, seen"):
        compare.off_domain_texts("absent", tmp_path)
    model_dir = save_tiny_checkpoint("llama", tmp_path / "tiny", attention_bias=False, mlp_bias=False)
    rows = compare.main(["--models", model_dir, *TINY_RUN, "--out-dir", str(tmp_path / "out"), "--off-domain", "held",
                         "--methods", "uniform, MLP only + least squares (activation)"])
    assert rows[1]["ratio"] > 0 and "source 'held' only" in (tmp_path / "out" / "t.md").read_text()


def test_an_interrupted_resumed_run_keeps_the_rows_it_has_not_reached(tmp_path):
    """The partial file of a resumed run holds every resumed row from its first write, so an interruption before a
    model (or a method no longer listed) is reached loses nothing."""
    partial = tmp_path / "t.partial.json"
    saved = [{"model": m, "method": "x", "who": "hf-prune", "seed": 0, "sparsity": 0.2, "ratio": 1.1} for m in "ab"]
    partial.write_text(json.dumps({"settings": {"seeds": [0]}, "rows": saved}))
    progress = compare.Progress(partial, {"seeds": [0]}, total=1, resume=True)
    progress.add({"model": "a", "method": "dense", "who": "dense", "seed": None, "sparsity": 0.0}, planned=False)
    rows = json.loads(partial.read_text())["rows"]
    assert {(r["model"], r["method"]) for r in rows} == {("a", "dense"), ("a", "x"), ("b", "x")}
