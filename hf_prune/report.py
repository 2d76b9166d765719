"""Human-facing output of a pruning run: the terminal table, a model card, a plot, the scores.

Written beside the checkpoint:
- ``README.md``: the model card (:mod:`hf_prune.card`);
- ``hf_prune_report.json``: config, per-layer counts, parameter counts, β, calibration tokens/time;
- ``allocation.png``: kept fraction per layer (EMP vs uniform at the same budget, when both exist);
- ``scores/importance.safetensors``: the per-group scores of every pruned scope, for reuse and inspection
  (not beside the weights: vLLM and llama.cpp's converter read every top-level ``*.safetensors`` as weights);
- ``hyperflux_trajectory.{json,png}``: Hyperflux's density, target, pressure and open groups per tick.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

from rich.console import Console
from rich.table import Table
from safetensors.torch import save_file

from .config import RecoveryOptions, flat_options
from .hyperflux.trajectory import write_trajectory
from .pruner import PruningReport
from .targets import TARGETS

SCORES_FILE = Path("scores") / "importance.safetensors"


def _has_uniform(report: PruningReport) -> bool:
    return any(row.kv_groups_uniform is not None for row in report.layers)


def summary_table(report: PruningReport) -> Table:
    target = report.config["target"]
    table = Table(title=f"hf-prune: kept per decoder layer ({target})", show_footer=True)
    total = lambda attr: sum(getattr(row, attr) or 0 for row in report.layers)  # noqa: E731
    table.add_column("layer", footer="all", justify="right")
    table.add_column("KV groups", footer=f"{total('kv_groups_after')}/{total('kv_groups_before')}", justify="right")
    table.add_column("MLP neurons", footer=f"{total('neurons_after')}/{total('neurons_before')}", justify="right")
    with_uniform = _has_uniform(report)
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


def summary_lines(report: PruningReport) -> list[str]:
    requested = report.config["sparsity"]
    lines = [
        f"parameters: {report.params_before:,} -> {report.params_after:,} "
        f"({report.params_after / report.params_before:.1%} of the original)",
        f"prunable (attention + MLP) parameters: {report.prunable_before:,} -> {report.prunable_after:,}",
    ]
    if requested is None:
        lines.append(f"sparsity: achieved {report.achieved_sparsity:.2%} with the raw EMP rule, "
                     f"beta = {report.allocation.get('beta')}")
    else:
        lines.append(f"sparsity: requested {requested:.2%}, achieved {report.achieved_sparsity:.2%} "
                     "(the difference is rounding to whole groups)")
    if report.allocation.get("beta_solved"):
        lines.append(f"EMP: beta = {report.allocation['beta']:.4f}, solved by bisection for the budget")
    if "target_density" in report.allocation:
        a = report.allocation
        lines.append(f"Hyperflux: {a['ticks']} ticks in {a['gate_seconds']:.1f}s; open parameter share before projection "
                     f"{a['final_density_before_projection']:.4f} vs target {a['target_density']:.4f}; "
                     "projected onto exactly the budget")
        if a.get("warning"):
            lines.append(f"WARNING: {a['warning']}")
    if "search_kl" in report.allocation:
        a = report.allocation
        kept_rounds = f"{a['rounds_kept']} refinement round(s) kept" if a["rounds"][1:] else "no refinement"
        lines.append(f"search: held-out KL {a['search_kl']:.4f} nats/token on {a['held_out_rows']} held-out rows; "
                     f"{len(a['rounds'])} solve(s), {kept_rounds}; {a['search_seconds']:.1f}s")
    removed = [f"layer {row.layer} {kind}" for row in report.layers for kind, after in
               (("attention", row.kv_groups_after), ("MLP", row.neurons_after)) if after == 0]
    if removed:
        lines.append(f"whole sublayers removed: {', '.join(removed)}")
    if report.calibration_tokens:
        lines.append(f"calibration: {report.calibration_tokens:,} tokens over {report.calibration_processes} "
                     f"process(es) in {report.calibration_seconds:.1f}s (importance {report.config['importance']}, "
                     f"compensation {report.config['compensate']})")
    return lines


def print_summary(report: PruningReport, console: Console | None = None) -> None:
    console = console or Console()
    console.print(summary_table(report))
    for line in summary_lines(report):
        console.print(line)


#: recovery has its own part of the card and of the summary, so its flags are not repeated among the options
RECOVERY_FLAGS = tuple(f.metadata["flag"] for f in fields(RecoveryOptions))


def run_options(report: PruningReport) -> dict[str, object]:
    """The options that shaped this run: set, and meaningful for its target (no Hyperflux settings on an
    EMP run; no importance for Hyperflux gates that started uniform, since no score was used)."""
    config = report.config
    options = {key: value for key, value in flat_options(config).items()
               if value is not None and key not in ("state_dir", "resume", "restart", *RECOVERY_FLAGS)
               and not (key == "uniform_shapes" and not value)}
    if not report.scored:
        options.pop("importance", None)
    learned = getattr(TARGETS.get(config["target"]), "learned", False)
    read_text = bool(report.calibration_tokens) or learned
    if not read_text:
        for key in [k for k in options if k.startswith("calibration")] + ["seq_len", "batch_size", "sequential"]:
            options.pop(key, None)
    return options


def plot_title(report: PruningReport) -> str:
    """Target, the importance only when scores decided the plan, and the achieved sparsity."""
    importance = f", importance {report.config['importance']}" if report.scored else ""
    return f"{report.config['target']}{importance}, achieved sparsity {report.achieved_sparsity:.1%}"


def save_allocation_plot(report: PruningReport, path: Path) -> None:
    """Kept fraction of KV groups and of MLP neurons per layer (and uniform's, when reported)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    layers = [row.layer for row in report.layers]
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharex=True)
    for axis, kind, after, before, uniform in (
        (axes[0], "KV groups", "kv_groups_after", "kv_groups_before", "kv_groups_uniform"),
        (axes[1], "MLP neurons", "neurons_after", "neurons_before", "neurons_uniform"),
    ):
        kept = [getattr(r, after) / getattr(r, before) for r in report.layers]
        axis.plot(layers, kept, marker="o", label=report.config["target"])
        if _has_uniform(report):
            axis.plot(layers, [getattr(r, uniform) / getattr(r, before) for r in report.layers],
                      marker="s", linestyle="--", label="uniform (same budget)")
        axis.set_title(f"kept fraction of {kind}")
        axis.set_xlabel("layer")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylim(0, 1.05)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(plot_title(report))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_run_artifacts(report: PruningReport, directory: Path, repo_id: str | None = None) -> None:
    """The model card (naming ``repo_id`` when it is pushed there), the report, the allocation plot, the
    scores and the Hyperflux trajectory."""
    from .card import model_card

    directory = Path(directory)
    model_card(report, repo_id).save(directory / "README.md")
    (directory / "hf_prune_report.json").write_text(json.dumps(report.to_info(), indent=2))
    save_allocation_plot(report, directory / "allocation.png")
    if report.trajectory and getattr(TARGETS.get(report.config["target"]), "learned", False):
        names, sizes = zip(*report.pruned_scopes)
        write_trajectory(report.trajectory, names, sizes, directory)
    if report.scores:  # in a subfolder: engines (vLLM) read every top-level *.safetensors as weights
        (directory / SCORES_FILE).parent.mkdir(exist_ok=True)
        save_file({name: score.contiguous() for name, score in report.scores.items()}, str(directory / SCORES_FILE))
