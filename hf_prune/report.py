"""Human-facing summaries of a pruning run: the terminal table and the output's model card."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from .pruner import PruningReport


def summary_table(report: PruningReport) -> Table:
    table = Table(title="hf-prune: kept per decoder layer", show_footer=True)
    total = lambda attr: sum(getattr(row, attr) for row in report.layers)  # noqa: E731
    table.add_column("layer", footer="all", justify="right")
    table.add_column("KV groups", footer=f"{total('kv_groups_after')}/{total('kv_groups_before')}", justify="right")
    table.add_column("MLP neurons", footer=f"{total('neurons_after')}/{total('neurons_before')}", justify="right")
    for row in report.layers:
        table.add_row(
            str(row.layer),
            f"{row.kv_groups_after}/{row.kv_groups_before}",
            f"{row.neurons_after}/{row.neurons_before}",
        )
    return table


def summary_lines(report: PruningReport) -> list[str]:
    requested = report.config["sparsity"]
    return [
        f"parameters: {report.params_before:,} -> {report.params_after:,} "
        f"({report.params_after / report.params_before:.1%} of the original)",
        f"prunable (attention + MLP) parameters: {report.prunable_before:,} -> {report.prunable_after:,}",
        f"sparsity: requested {requested:.2%}, achieved {report.achieved_sparsity:.2%} "
        "(the difference is rounding to whole groups)",
    ]


def print_summary(report: PruningReport, console: Console | None = None) -> None:
    console = console or Console()
    console.print(summary_table(report))
    for line in summary_lines(report):
        console.print(line)


def model_card(report: PruningReport, base_model: str) -> str:
    """A README.md for the pruned checkpoint: what was done and how to load it."""
    rows = "\n".join(
        f"| {row.layer} | {row.kv_groups_after}/{row.kv_groups_before} | {row.neurons_after}/{row.neurons_before} |"
        for row in report.layers
    )
    options = ", ".join(f"`{key}={value}`" for key, value in report.config.items())
    bullets = "\n".join(f"- {line}" for line in summary_lines(report))
    return f"""---
library_name: transformers
base_model: {base_model}
tags: [hf-prune, pruned, structured-pruning]
---
# Structurally pruned {base_model}

Pruned with hf-prune ({options}). Whole KV groups (a key/value head with its query heads) and MLP
neurons were removed, so the weights are physically smaller.

{bullets}

## Load

```python
import hf_prune  # registers the pruned classes
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained("<this directory or repo>")
# without hf_prune installed:
model = AutoModelForCausalLM.from_pretrained("<this directory or repo>", trust_remote_code=True)
```

## Kept per layer

| layer | KV groups | MLP neurons |
|---:|---:|---:|
{rows}
"""
