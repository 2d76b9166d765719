"""Quality through lm-eval: ``lm_eval.simple_evaluate`` on in-memory models, and retention pruned / dense.

Any lm-eval task name works (``hellaswag``, ``arc_easy``, ...; those download their data), besides the
project's local tasks (:mod:`hf_prune.quality.local_tasks`), which read held-out text from disk. The
model is wrapped in lm-eval's public ``HFLM`` (``pretrained=`` an already loaded model), so a pruned
model in memory, a 4-bit one or one spread over devices by ``device_map`` is scored as it is.

lm-eval is imported lazily (it takes seconds to import).
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..corpus import load_documents, resolve_split_file
from ..errors import ConfigError, first_line
from ..runtime.modes import eval_mode
from .local_tasks import LOCAL_TASKS, NEXT_SENTENCE_TASK, PERPLEXITY_TASK, write_runtime_tasks

logger = logging.getLogger(__name__)


def model_max_length(model) -> int:
    """Context length from the config (``max_position_embeddings``): RoPE is untrained beyond it."""
    cfg = model.config
    for attr in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(cfg, attr, None)
        if value:
            return int(value)
    return 2048


def make_lm(model, tokenizer, *, batch_size: int = 16, max_length: int | None = None):
    """lm-eval's ``HFLM`` around an in-memory model, with the context length the model was trained on."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
                max_length=max_length or model_max_length(model))


def _task_manager(workdir: Path, tasks: Sequence[str]):
    """lm-eval's task index: the local tasks, plus lm-eval's own only when a task outside them is asked for
    (indexing lm-eval's thousands of YAMLs takes seconds)."""
    from lm_eval.tasks import TaskManager

    others = [name for name in tasks if name not in LOCAL_TASKS]
    manager = TaskManager(include_path=str(workdir), include_defaults=bool(others))
    unknown = [name for name in others if name not in manager.all_tasks]
    if unknown:
        raise ConfigError(f"unknown lm-eval task(s): {', '.join(unknown)}; see `lm-eval ls tasks` for the names, "
                          f"or use the local tasks {', '.join(LOCAL_TASKS)}")
    return manager


def run_lm_eval(
    model, tokenizer, tasks: Sequence[str], *, heldout: str | Path | None = None, limit: int | float | None = None,
    batch_size: int = 16, mc_items: int = 500, max_length: int | None = None, lm=None,
) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` of ``model`` on ``tasks``; returns lm-eval's results dictionary.

    ``lm`` is the ``HFLM`` wrapping ``model`` (:func:`make_lm`), when the caller needs it afterwards.

    ``heldout`` is the text of the local tasks (see :func:`hf_prune.corpus.resolve_split_file`).
    ``limit`` caps the documents/items per task (lm-eval semantics: int = count, float = fraction).
    The global random generators are left alone (the seeds are passed as None): this runs in the middle
    of seeded pruning runs.
    """
    from lm_eval import simple_evaluate

    tasks = list(dict.fromkeys(tasks))
    if not tasks:
        raise ConfigError("no evaluation task given")
    local = [name for name in tasks if name in LOCAL_TASKS]
    docs = load_documents(resolve_split_file(heldout)) if local else []
    lm = lm or make_lm(model, tokenizer, batch_size=batch_size, max_length=max_length)
    with tempfile.TemporaryDirectory(prefix="hfprune_tasks_") as tmp:
        write_runtime_tasks(Path(tmp), docs, local, mc_items)
        manager = _task_manager(Path(tmp), tasks)
        try:
            with eval_mode(model), _no_git_probe():
                return simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit,
                                       bootstrap_iters=0, log_samples=True, random_seed=None,
                                       numpy_random_seed=None, torch_random_seed=None)
        except (ConnectionError, FileNotFoundError) as error:  # a task's dataset: offline, or not on the Hub
            raise ConfigError(f"lm-eval could not load the data of {', '.join(tasks)}: {first_line(error)}; go "
                              f"online (or pre-download it), or use the local tasks {', '.join(LOCAL_TASKS)}") from error


@contextmanager
def _no_git_probe() -> Iterator[None]:
    """simple_evaluate records ``git describe`` of the current directory, and outside a checkout git prints
    "fatal: not a git repository" on the user's terminal, where it reads as an hf-prune failure. The
    results' ``git_hash`` is then None; the model's own provenance is in its config."""
    import lm_eval.evaluator

    original = getattr(lm_eval.evaluator, "get_git_commit_hash", None)
    if original is None:
        yield
        return
    lm_eval.evaluator.get_git_commit_hash = lambda: None
    try:
        yield
    finally:
        lm_eval.evaluator.get_git_commit_hash = original


@dataclass(frozen=True)
class TaskScore:
    """One task's headline metric: accuracy when the task reports one, else its first metric."""

    task: str
    metric: str
    value: float
    higher_is_better: bool


def _metric_values(metrics: dict[str, Any]) -> dict[tuple[str, str], float]:
    """A task's numeric metrics by (name, filter), from lm-eval's ``"name,filter"`` keys (stderrs left out)."""
    return {tuple(key.split(",", 1)): float(value) for key, value in metrics.items()
            if "," in key and "_stderr" not in key and isinstance(value, (int, float))}


def headline_scores(results: dict[str, Any]) -> list[TaskScore]:
    """The headline metric of every task in lm-eval's results (groups are skipped: their tasks are listed)."""
    scores = []
    for task, metrics in results["results"].items():
        if task not in results.get("higher_is_better", {}):
            continue
        better = results["higher_is_better"][task]
        values = {name: value for (name, _), value in _metric_values(metrics).items()}
        names = [name for name in better if name in values]
        if not names:
            continue
        metric = next((name for name in ("acc_norm", "acc", "exact_match") if name in names), names[0])
        scores.append(TaskScore(task, metric, float(values[metric]), bool(better[metric])))
    return scores


def retention(dense: float, pruned: float, higher_is_better: bool) -> float:
    """How much of the dense model's score the pruned model keeps: pruned / dense for accuracy-like
    metrics, dense / pruned for perplexity-like ones (lower is better), so 1.0 is "no loss" either way."""
    if higher_is_better:
        return pruned / dense if dense else math.nan
    return dense / pruned if pruned else math.nan


def flat_metrics(results: dict[str, Any]) -> dict[str, float]:
    """lm-eval's results as a flat dict of floats: the local tasks under their historical names
    (``word_perplexity``, ``next_sentence_acc``, ...), any other task as ``task/metric``."""
    flat: dict[str, float] = {}
    for task, metrics in results["results"].items():
        if task == PERPLEXITY_TASK:
            for metric in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
                flat[metric] = float(metrics[f"{metric},none"])
        elif task == NEXT_SENTENCE_TASK:
            flat["next_sentence_acc"] = float(metrics["acc,none"])
            flat["next_sentence_acc_norm"] = float(metrics["acc_norm,none"])
            flat["next_sentence_items"] = float(len(results["samples"][task]))
        else:
            for (name, filtering), value in _metric_values(metrics).items():
                flat[f"{task}/{name}" + ("" if filtering == "none" else f",{filtering}")] = value
    return flat


def evaluate(
    model,
    tokenizer,
    *,
    test_file: str | Path | None = None,
    tasks: Sequence[str] = LOCAL_TASKS,
    limit: int | float | None = None,
    batch_size: int = 16,
    mc_items: int = 500,
    max_length: int | None = None,
) -> dict[str, float]:
    """Held-out quality of ``model`` through lm-eval; returns a flat dict of floats (:func:`flat_metrics`).

    The perplexity task adds ``token_perplexity``, ``num_docs`` and ``num_tokens``: lm-eval reports word
    and byte perplexity, and token perplexity needs the token count, taken with the very tokenizer call
    lm-eval used (``tok_encode``), so it is exact.
    """
    lm = make_lm(model, tokenizer, batch_size=batch_size, max_length=max_length)
    results = run_lm_eval(model, tokenizer, tasks, heldout=test_file, limit=limit, mc_items=mc_items, lm=lm)
    flat = flat_metrics(results)
    if PERPLEXITY_TASK in results["results"]:
        samples = results["samples"][PERPLEXITY_TASK]
        total_ll = sum(float(s["filtered_resps"][0]) for s in samples)
        n_tokens = sum(len(lm.tok_encode(s["doc"]["text"])) for s in samples)
        flat["token_perplexity"] = math.exp(-total_ll / n_tokens)
        flat["num_docs"] = float(len(samples))
        flat["num_tokens"] = float(n_tokens)
    return flat
