"""Measuring a (pruned) model's quality, one job per module:

- :mod:`.harness` — lm-eval's ``simple_evaluate`` on in-memory models, any task name, retention;
- :mod:`.local_tasks` — the project's own lm-eval tasks, built from held-out text;
- :mod:`.paired` — dense vs pruned on the same fixed token windows (the benchmarks' measure);
- :mod:`.reference_loop` — plain torch re-implementations that check lm-eval, and the unigram floor;
- :mod:`.retention` — dense vs pruned (vs recovered) per task, and the quality gate.

Names are imported on first use: lm-eval takes seconds to import.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "TaskScore": ".harness", "evaluate": ".harness", "flat_metrics": ".harness", "headline_scores": ".harness",
    "make_lm": ".harness", "model_max_length": ".harness", "retention": ".harness", "run_lm_eval": ".harness",
    "LOCAL_TASKS": ".local_tasks", "NEXT_SENTENCE_TASK": ".local_tasks", "PERPLEXITY_TASK": ".local_tasks",
    "build_next_sentence_items": ".local_tasks", "split_sentences": ".local_tasks",
    "fixed_token_set": ".paired", "load_token_set": ".paired", "paired_comparison": ".paired",
    "paired_perplexity": ".paired", "save_token_set": ".paired", "window_nll": ".paired",
    "rolling_loglikelihood": ".reference_loop", "unigram_perplexity": ".reference_loop",
    "retention_markdown": ".retention", "retention_table": ".retention",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_EXPORTS)
