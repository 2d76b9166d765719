"""What a pruning run says about itself in words: the summary lines of the terminal and of the model card, and the
options that shaped the run.

Built from the :class:`~hf_prune.report.PruningReport` alone (what a saved checkpoint's ``config.hf_prune`` holds),
so the card of a checkpoint loaded back from disk says what the run said. A target adds its own lines (its
``describe``); nothing here names a target.
"""

from __future__ import annotations

from dataclasses import fields

from ..config import RecoveryOptions, flat_options
from ..plan.allocation import as_target
from ..registry import TARGETS
from ..report import PruningReport

#: recovery has its own part of the card and of the summary, so its flags are not repeated among the options
RECOVERY_FLAGS = tuple(f.metadata["flag"] for f in fields(RecoveryOptions))
#: the options that say what the text was and how it was read: shown only when the run read text
TEXT_OPTIONS = ("seq_len", "batch_size", "sequential")


def summary_lines(report: PruningReport) -> list[str]:
    requested = report.config["sparsity"]
    lines = [
        f"parameters: {report.params_before:,} -> {report.params_after:,} "
        f"({report.params_after / report.params_before:.1%} of the original)",
        f"prunable (attention + MLP) parameters: {report.prunable_before:,} -> {report.prunable_after:,}",
    ]
    if requested is not None:
        lines.append(f"sparsity: requested {requested:.2%}, achieved {report.achieved_sparsity:.2%} "
                     "(the difference is rounding to whole groups)")
    if report.config["target"] in TARGETS:
        lines += as_target(TARGETS[report.config["target"]]).describe(report)
    removed = [f"layer {row.layer} {kind}" for row in report.layers for kind, after in
               (("attention", row.kv_groups_after), ("MLP", row.neurons_after)) if after == 0]
    if removed:
        lines.append(f"whole sublayers removed: {', '.join(removed)}")
    if report.calibration_tokens:
        lines.append(f"calibration: {report.calibration_tokens:,} tokens over {report.calibration_processes} "
                     f"process(es) in {report.calibration_seconds:.1f}s (importance {report.config['importance']}, "
                     f"compensation {report.config['compensate']})")
    if report.refit:
        lines.append(f"compensation refit on the pruned model's own activations: the layers walked in order, "
                     f"{report.refit['layer_passes']} layer passes over {report.refit['tokens']:,} tokens in "
                     f"{report.refit['seconds']:.1f}s")
    return lines


def run_options(report: PruningReport) -> dict[str, object]:
    """The options that shaped this run: set, and meaningful for its target (no Hyperflux settings on an
    EMP run; no importance for Hyperflux gates that started uniform, since no score was used)."""
    config = report.config
    options = {key: value for key, value in flat_options(config).items()
               if value is not None and key not in RECOVERY_FLAGS
               and not (key == "uniform_shapes" and not value)}
    if not report.scored:
        options.pop("importance", None)
    rule_read_text = config["target"] in TARGETS and as_target(TARGETS[config["target"]]).reads_rows
    if not (report.calibration_tokens or rule_read_text):
        for key in [k for k in options if k.startswith("calibration")] + list(TEXT_OPTIONS):
            options.pop(key, None)
    return options


def plot_title(report: PruningReport) -> str:
    """Target, the importance only when scores decided the plan, and the achieved sparsity."""
    importance = f", importance {report.config['importance']}" if report.scored else ""
    return f"{report.config['target']}{importance}, achieved sparsity {report.achieved_sparsity:.1%}"


def has_uniform(report: PruningReport) -> bool:
    """Whether the uniform allocation at the same budget was computed (it is shown beside the target's)."""
    return any(row.kv_groups_uniform is not None for row in report.layers)
