"""eval/bench_layerwise_memory.py: a run continued over several sessions reports the peak of the code that finished
it, and the earlier code's segments beside it (their time still counted)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "eval"))
from bench_layerwise_memory import combine_segments  # noqa: E402


def report(peak: float, seconds: float, tree: str | None) -> dict:
    return {"baseline_mb": 500.0, "peak_mb": peak, "seconds": seconds, "hf_prune_tree": tree}


def test_the_peak_is_that_of_the_segments_that_ran_the_final_code():
    combined = combine_segments([report(8000, 100, None), report(7000, 50, "old"), report(4000, 30, "new"),
                                 report(4500, 20, "new")])
    assert combined["peak_mb"] == 4500 and combined["baseline_mb"] == 500
    assert combined["seconds"] == 200 and combined["segments"] == 4
    assert combined["earlier_code_segments"] == 2 and combined["earlier_code_seconds"] == 150
    assert combined["earlier_code_added_mb"] == 7500


def test_a_run_of_one_code_has_no_earlier_segments():
    combined = combine_segments([report(3000, 10, "same"), report(2500, 5, "same")])
    assert combined["peak_mb"] == 3000 and combined["earlier_code_segments"] == 0
    assert combined["earlier_code_added_mb"] is None
