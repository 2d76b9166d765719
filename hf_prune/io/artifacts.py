"""The files a pruning run writes beside the checkpoint:

- ``README.md``: the model card (:mod:`.card`);
- ``hf_prune_report.json``: config, per-layer counts, parameter counts, β, calibration tokens/time;
- ``allocation.png``: kept fraction per layer (the target's vs uniform at the same budget, when both exist);
- ``scores/importance.safetensors``: the per-group scores of every pruned scope, for reuse and inspection
  (not beside the weights: vLLM and llama.cpp's converter read every top-level ``*.safetensors`` as weights);
- ``hyperflux_trajectory.{json,png}``: a learned target's density, target, pressure and open groups per tick;
- ``recovery_curve.png``: a distillation's training loss and held-out KL / perplexity against tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
from matplotlib.ticker import MaxNLocator
from safetensors.torch import save_file

from ..plan.hyperflux.trajectory import write_trajectory
from ..recovery.curve import save_recovery_curve
from ..registry import TARGETS
from ..report import PruningReport
from .card import model_card
from .summary import has_uniform, plot_title

SCORES_FILE = Path("scores") / "importance.safetensors"
RECOVERY_CURVE = "recovery_curve.png"


def save_allocation_plot(report: PruningReport, path: Path) -> None:
    """Kept fraction of KV groups and of MLP neurons per layer (and uniform's, when reported)."""
    matplotlib.use("Agg")  # no screen: files only
    import matplotlib.pyplot as plt  # after choosing the backend, as matplotlib asks

    layers = [row.layer for row in report.layers]
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharex=True)
    for axis, kind, after, before, uniform in (
        (axes[0], "KV groups", "kv_groups_after", "kv_groups_before", "kv_groups_uniform"),
        (axes[1], "MLP neurons", "neurons_after", "neurons_before", "neurons_uniform"),
    ):
        kept = [getattr(r, after) / getattr(r, before) for r in report.layers]
        axis.plot(layers, kept, marker="o", label=report.config["target"])
        if has_uniform(report):
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
    directory = Path(directory)
    model_card(report, repo_id).save(directory / "README.md")
    (directory / "hf_prune_report.json").write_text(json.dumps(report.to_info(), indent=2))
    save_allocation_plot(report, directory / "allocation.png")
    if report.trajectory and TARGETS.traits(report.config["target"]).get("learned"):
        names, sizes = zip(*report.pruned_scopes)
        write_trajectory(report.trajectory, names, sizes, directory)
    if report.recovery_curve:
        save_recovery_curve(report.recovery_curve, directory / RECOVERY_CURVE, plot_title(report))
    if report.scores:  # in a subfolder: engines (vLLM) read every top-level *.safetensors as weights
        (directory / SCORES_FILE).parent.mkdir(exist_ok=True)
        save_file({name: score.contiguous() for name, score in report.scores.items()}, str(directory / SCORES_FILE))
