"""The project's own lm-eval tasks, built from held-out text at run time.

``hfprune_perplexity`` is rolling-loglikelihood perplexity of held-out documents and
``hfprune_next_sentence`` a 4-way "which sentence comes next?" task built deterministically from
the same text. Their YAMLs ship in ``hf_prune/tasks`` with ``data_files: null``: lm-eval's ``json``
loader needs concrete paths, which are only known at run time (the held-out text is configurable),
so :func:`write_runtime_tasks` copies them into a temporary directory with the paths filled in.
"""

from __future__ import annotations

import bisect
import json
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ..tasks import LOCAL_TASKS, NEXT_SENTENCE_TASK, PERPLEXITY_TASK, TASKS_DIR

_SENT_RE = re.compile(r"(?<=[.!?])[\"'\u201d\u2019)]*\s+|\n+")


def split_sentences(text: str) -> list[str]:
    """Rough sentence split on ``.!?`` and line breaks: good enough to make candidate sentences."""
    return [s.strip() for s in _SENT_RE.split(text) if s and s.strip()]


def build_next_sentence_items(
    docs: Sequence[str], *, num_items: int = 500, num_choices: int = 4, seed: int = 1234,
    context_sentences: int = 3, min_chars: int = 30, max_chars: int = 200,
) -> list[dict[str, Any]]:
    """Deterministic "which sentence comes next?" items from held-out documents.

    Each item takes ``context_sentences`` consecutive sentences of one document as context; the
    answer is the sentence that follows, the distractors are sentences of similar length drawn
    from *other* documents, so guessing scores ``1/num_choices``. Same docs + seed -> same items.
    """
    rng = random.Random(seed)
    per_doc = [split_sentences(d) for d in docs]
    pool = [(i, s) for i, sents in enumerate(per_doc) for s in sents if min_chars <= len(s) <= max_chars]
    pool.sort(key=lambda t: len(t[1]))
    lengths = [len(s) for _, s in pool]
    spots = [(i, j) for i, sents in enumerate(per_doc) for j in range(context_sentences, len(sents))
             if min_chars <= len(sents[j]) <= max_chars]
    rng.shuffle(spots)
    items = []
    for doc_i, j in spots[:num_items]:
        answer = per_doc[doc_i][j]
        distractors = _similar_length_sentences(pool, lengths, answer, doc_i, num_choices - 1, rng)
        if len(distractors) < num_choices - 1:
            continue
        choices = distractors + [answer]
        rng.shuffle(choices)
        context = " ".join(per_doc[doc_i][j - context_sentences : j])
        items.append({"context": context, "choices": choices, "label": choices.index(answer)})
    return items


def _similar_length_sentences(pool, lengths, answer: str, doc_i: int, k: int, rng: random.Random) -> list[str]:
    """``k`` distinct sentences from other documents whose length is close to ``answer``'s.

    Matching lengths stops a model from winning on length priors alone.
    """
    centre = bisect.bisect_left(lengths, len(answer))
    lo, hi = max(0, centre - 40), min(len(pool), centre + 40)
    window = [s for i, s in pool[lo:hi] if i != doc_i and s != answer]
    window = sorted(set(window))
    rng.shuffle(window)
    return window[:k]


def write_runtime_tasks(workdir: Path, docs: list[str], tasks: Sequence[str], mc_items: int) -> None:
    """Copy the shipped YAMLs of the local ``tasks`` into ``workdir`` with their ``data_files`` filled in.

    The documents are written out as JSON lines whatever file they came from (a ``.txt`` file too).
    """
    data = {PERPLEXITY_TASK: workdir / "heldout.jsonl"}
    with open(data[PERPLEXITY_TASK], "w", encoding="utf-8") as fh:
        for doc in docs:
            fh.write(json.dumps({"text": doc}) + "\n")
    if NEXT_SENTENCE_TASK in tasks:
        mc_file = workdir / "next_sentence.jsonl"
        with open(mc_file, "w", encoding="utf-8") as fh:
            for item in build_next_sentence_items(docs, num_items=mc_items):
                fh.write(json.dumps(item) + "\n")
        data[NEXT_SENTENCE_TASK] = mc_file
    for name in tasks:
        cfg = yaml.safe_load((TASKS_DIR / f"{name}.yaml").read_text())
        cfg.setdefault("dataset_kwargs", {})["data_files"] = {"test": str(data[name])}
        (workdir / f"{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


__all__ = ["LOCAL_TASKS", "NEXT_SENTENCE_TASK", "PERPLEXITY_TASK", "build_next_sentence_items", "split_sentences",
           "write_runtime_tasks"]
