"""The project's own lm-eval tasks (YAMLs in this folder), by name.

``hfprune_perplexity``: rolling-loglikelihood perplexity of held-out documents; ``hfprune_next_sentence``: which of
four sentences follows a three-sentence context. Their names are here, below everything, because options are
checked and ``--help`` lists them before :mod:`hf_prune.quality` (which builds them) is imported.
"""

from pathlib import Path

PERPLEXITY_TASK = "hfprune_perplexity"
NEXT_SENTENCE_TASK = "hfprune_next_sentence"
LOCAL_TASKS: tuple[str, ...] = (PERPLEXITY_TASK, NEXT_SENTENCE_TASK)
TASKS_DIR = Path(__file__).resolve().parent
