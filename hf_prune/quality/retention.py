"""Retention tables: each task's headline score, dense vs pruned (vs recovered), and the quality gate.

Why one minimum over tasks: a user's ``--min-retention 0.9`` means "no task of mine loses more than 10%",
and averaging would let a good task hide a broken one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .harness import TaskScore, retention


def retention_table(
    dense: Sequence[TaskScore], pruned: Sequence[TaskScore], recovered: Sequence[TaskScore] | None = None,
    *, min_retention: float | None = None, heldout: str | None = None,
) -> dict[str, Any]:
    """``{"rows": [...], "lowest": x, "min_retention": r, "passed": bool, "heldout": ...}``.

    A row per task: metric, whether higher is better, dense / pruned / recovered values and their retention.
    ``lowest`` is the smallest retention of the final model (recovered when there is one).
    """
    pruned_by_task = {score.task: score for score in pruned}
    recovered_by_task = {score.task: score for score in recovered or ()}
    rows = []
    for base in dense:
        cut = pruned_by_task[base.task]
        row = {"task": base.task, "metric": base.metric, "higher_is_better": base.higher_is_better,
               "dense": base.value, "pruned": cut.value,
               "retention": retention(base.value, cut.value, base.higher_is_better),
               "recovered": None, "recovered_retention": None}
        if base.task in recovered_by_task:
            after = recovered_by_task[base.task].value
            row.update(recovered=after, recovered_retention=retention(base.value, after, base.higher_is_better))
        rows.append(row)
    final = [row["recovered_retention"] if row["recovered"] is not None else row["retention"] for row in rows]
    lowest = min(final) if final else None
    passed = None if min_retention is None else bool(lowest is not None and lowest >= min_retention)
    return {"rows": rows, "lowest": lowest, "min_retention": min_retention, "passed": passed, "heldout": heldout}


def retention_markdown(quality: dict[str, Any]) -> str:
    """The table of :func:`retention_table` as Markdown: the model card shows it, and so does the terminal
    (a fixed-width table of this kind never truncates a task name to fit an 80-column pipe)."""
    recovered = any(row.get("recovered") is not None for row in quality["rows"])
    lines = ["| task | metric | dense | pruned | retention |" + (" after recovery | retention |" if recovered else ""),
             "|---|---|---:|---:|---:|" + ("---:|---:|" if recovered else "")]
    for row in quality["rows"]:
        cells = [row["task"], row["metric"] + ("" if row["higher_is_better"] else " (lower is better)"),
                 f"{row['dense']:.4g}", f"{row['pruned']:.4g}", f"{row['retention']:.3f}"]
        if recovered:
            cells += [f"{row['recovered']:.4g}", f"{row['recovered_retention']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
