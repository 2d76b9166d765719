"""What the command prints: the table of kept groups, the summary lines, recovery and quality, where the result is.

One console for the whole run. It never hard-wraps a line (``soft_wrap``): a terminal wraps long lines itself,
and output that is not a terminal (a log, a pipe, CI) keeps every path and every ``from_pretrained('...')`` hint
on one line, whatever the width the console assumes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ..io.summary import has_uniform, summary_lines
from ..quality.retention import retention_markdown
from ..report import PruningReport


def make_console(quiet: bool = False) -> Console:
    return Console(quiet=quiet, soft_wrap=True)


def summary_table(report: PruningReport) -> Table:
    target = report.config["target"]
    table = Table(title=f"hf-prune: kept per decoder layer ({target})", show_footer=True)
    total = lambda attr: sum(getattr(row, attr) or 0 for row in report.layers)  # noqa: E731
    table.add_column("layer", footer="all", justify="right")
    table.add_column("KV groups", footer=f"{total('kv_groups_after')}/{total('kv_groups_before')}", justify="right")
    table.add_column("MLP neurons", footer=f"{total('neurons_after')}/{total('neurons_before')}", justify="right")
    with_uniform = has_uniform(report)
    if with_uniform:
        table.add_column("uniform KV", footer=str(total("kv_groups_uniform")), justify="right")
        table.add_column("uniform MLP", footer=str(total("neurons_uniform")), justify="right")
    for row in report.layers:
        cells = [str(row.layer), f"{row.kv_groups_after}/{row.kv_groups_before}",
                 f"{row.neurons_after}/{row.neurons_before}"]
        if with_uniform:
            cells += [str(row.kv_groups_uniform), str(row.neurons_uniform)]
        table.add_row(*cells)
    return table


def print_summary(report: PruningReport, console: Console | None = None) -> None:
    console = console or make_console()
    console.print(summary_table(report))
    for line in summary_lines(report):
        console.print(line)


def print_results(report: PruningReport, console: Console) -> None:
    """The summary, then what recovery and the quality gate did."""
    print_summary(report, console)
    if report.recovery:
        r = report.recovery
        console.print(f"recovery ({r['method']}): held-out perplexity {r['perplexity_dense']:.3f} dense, "
                      f"{r['perplexity_before']:.3f} after the cut, {r['perplexity_after']:.3f} after recovery "
                      f"({r['seconds']:.1f}s)" + ("" if r["kept"] else "; the adapter did not help and was discarded"))
    if report.quality:
        print_quality(console, report.quality)


def print_quality(console: Console, quality: dict[str, Any]) -> None:
    console.print("quality (lm-eval); retention = pruned / dense, inverted where lower is better:")
    console.print(retention_markdown(quality), markup=False, highlight=False)
    if quality["min_retention"] is not None:
        verdict = "passed" if quality["passed"] else "FAILED"
        console.print(f"quality gate {verdict}: lowest retention {quality['lowest']:.3f}, required "
                      f"{quality['min_retention']:.3f}")


def say_written(console: Console, written: Path, seconds: float, *, how: str = "", stock: bool = False) -> None:
    """Where the checkpoint is, how long the run took, and how to load it."""
    reload = ("anywhere: it is a stock checkpoint" if stock else
              "after `import hf_prune`, or with trust_remote_code=True without it")
    console.print(f"wrote {written}{how} in {seconds:.1f}s; reload with "
                  f"AutoModelForCausalLM.from_pretrained({str(written)!r}) {reload}")
