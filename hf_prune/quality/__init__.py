"""Measuring a (pruned) model's quality, one job per module:

- :mod:`.harness` — lm-eval's ``simple_evaluate`` on in-memory models, any task name, retention;
- :mod:`.local_tasks` — the project's own lm-eval tasks, built from held-out text;
- :mod:`.paired` — dense vs pruned on the same fixed token windows (the benchmarks' measure);
- :mod:`.reference_loop` — plain torch re-implementations that check lm-eval, and the unigram floor;
- :mod:`.retention` — dense vs pruned (vs recovered) per task, and the quality gate.

lm-eval itself is imported only when a model is scored (it takes seconds to import).
"""

from .harness import (
                      TaskScore,
                      evaluate,
                      flat_metrics,
                      headline_scores,
                      make_lm,
                      model_max_length,
                      retention,
                      run_lm_eval,
)
from .local_tasks import LOCAL_TASKS, NEXT_SENTENCE_TASK, PERPLEXITY_TASK, build_next_sentence_items, split_sentences
from .paired import fixed_token_set, load_token_set, paired_comparison, paired_perplexity, save_token_set, window_nll
from .reference_loop import rolling_loglikelihood, unigram_perplexity
from .retention import retention_markdown, retention_table

__all__ = [
    "LOCAL_TASKS", "NEXT_SENTENCE_TASK", "PERPLEXITY_TASK", "TaskScore", "build_next_sentence_items", "evaluate",
    "fixed_token_set", "flat_metrics", "headline_scores", "load_token_set", "make_lm", "model_max_length",
    "paired_comparison", "paired_perplexity", "retention", "retention_markdown", "retention_table", "run_lm_eval",
    "rolling_loglikelihood", "save_token_set", "split_sentences", "unigram_perplexity", "window_nll",
]
