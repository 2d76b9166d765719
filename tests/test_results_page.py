"""eval/results_page.py: the reading under each table is computed from the recorded ratios."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "eval"))
import results_page  # noqa: E402


def row(who, method, sparsity, ratio, se=0.01):
    return {"model": "m", "who": who, "method": method, "sparsity": sparsity, "ratio": ratio, "delta_nll_se": se}


def test_reading_compares_our_best_with_the_best_peer():
    rows = [row("hf-prune", "ours A", 0.2, 1.5), row("hf-prune", "ours B", 0.2, 1.2),
            row("peer", "FLAP", 0.2, 1.4), row("peer", "LLM-Pruner", 0.2, 1.3), row("floor", "random", 0.2, 1.01),
            row("hf-prune", "ours A", 0.5, 3.0), row("peer", "FLAP", 0.5, 2.0),
            {"model": "m", "who": "peer", "method": "FLAP", "sparsity": 0.35, "skipped": "budget"}]
    lines = results_page.reading(rows)
    assert len(lines) == 2, "a budget without both sides, and the random floor, are not compared"
    assert "20%: hf-prune's best, ours B (1.200), beats the best peer, LLM-Pruner (1.300)" in lines[0]
    assert "degradation ratio 0.67" in lines[0]
    assert "50%: hf-prune's best, ours A (3.000), loses to the best peer, FLAP (2.000)" in lines[1]
    assert "degradation ratio 2.00" in lines[1]


def test_seeds_are_averaged_before_choosing():
    rows = [row("hf-prune", "ours", 0.2, 1.1), row("hf-prune", "ours", 0.2, 1.5), row("peer", "FLAP", 0.2, 1.2)]
    assert "ours (1.300), loses to the best peer, FLAP (1.200)" in results_page.reading(rows)[0]


def test_the_search_is_read_against_the_best_other_method():
    rows = [row("hf-prune", "search (activation)", 0.2, 1.1), row("hf-prune", "uniform", 0.2, 1.3),
            row("peer", "FLAP", 0.2, 1.2), row("floor", "random", 0.2, 1.05)]
    lines = results_page.reading(rows)
    assert "the search (1.100) against the best other method, FLAP (1.200): degradation ratio 0.50" in lines[1]


def test_the_readme_table_is_the_one_the_full_run_gives():
    """The README's recommended-recipe table is written from eval/results/compare.json and the recipe's own run,
    never typed."""
    rows = results_page.recommended_rows()
    readme = results_page.README.read_text()
    start, end = (readme.index(marker) for marker in results_page.README_MARKERS)
    table = readme[start + len(results_page.README_MARKERS[0]):end].strip().splitlines()
    assert table == results_page.recommended_table(rows)
    assert any("search + least squares" in line for line in table) and len(table) > 6
    assert "recipes/search-lstsq.yaml" in table[2], "the recipe's row comes first"


def test_the_refit_table_is_the_one_its_run_gives():
    """The README's table of --refit-on pruned / dense / asymmetric is written from eval/results/compare_refit.json."""
    import json

    rows = json.loads((results_page.RESULTS_DIR / "compare_refit.json").read_text())["rows"]
    readme = results_page.README.read_text()
    start, end = (readme.index(marker) for marker in results_page.REFIT_MARKERS)
    table = readme[start + len(results_page.REFIT_MARKERS[0]):end].strip().splitlines()
    assert table == results_page.refit_table(rows)
    assert any("`--refit-on dense`" in line for line in table)


def test_a_budget_a_method_was_not_measured_at_is_a_dash():
    rows = [{**row("hf-prune", "uniform, MLP only + least squares (activation)", s, r), "seed": 0, "model": "smollm2"}
            for s, r in ((0.2, 1.5), (0.5, 3.0))]
    rows.append({**row("hf-prune", "uniform, MLP only + least squares, asymmetric (activation)", 0.2, 2.2), "seed": 0,
                 "model": "smollm2"})
    table = results_page.refit_table(rows)
    assert table[2] == "| SmolLM2-135M (Q4_1 dequantized) | uniform MLP-only + least squares, `--refit-on pruned` | 1.500 | 3.000 |"
    assert table[3] == "|  | the same, `--refit-on asymmetric` | 2.200 | — |"


def test_the_page_links_the_recovery_pages_once_one_exists(tmp_path, monkeypatch):
    monkeypatch.setattr(results_page, "RESULTS_DIR", tmp_path)
    assert results_page.recovery_section() == []
    (tmp_path / "recovery_smollm2.md").write_text("# Recovery")
    assert "[`recovery_smollm2.md`](results/recovery_smollm2.md)" in "\n".join(results_page.recovery_section())
