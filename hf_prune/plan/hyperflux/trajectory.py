"""The Hyperflux trajectory as a product feature: JSON log and a three-panel plot.

Panels: measured density against the scheduler's target curve; the pressure γ; and a heatmap of the
open fraction of every scope (layer x kind) over time — where the model chose to cut, and when.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def write_trajectory(trajectory: Sequence[dict[str, Any]], scope_names: Sequence[str],
                     scope_sizes: Sequence[int], directory: Path) -> None:
    directory = Path(directory)
    (directory / "hyperflux_trajectory.json").write_text(
        json.dumps({"scopes": list(scope_names), "sizes": list(scope_sizes), "ticks": list(trajectory)}, indent=1))
    if trajectory:
        plot_trajectory(trajectory, scope_names, scope_sizes, directory / "hyperflux_trajectory.png")


def plot_trajectory(trajectory, scope_names, scope_sizes, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    steps = [t["step"] for t in trajectory]
    figure, (density_axis, gamma_axis, heat_axis) = plt.subplots(
        3, 1, figsize=(9, 9), gridspec_kw={"height_ratios": [1, 0.7, 1.4]})
    density_axis.plot(steps, [t["density"] for t in trajectory], label="open parameter share")
    density_axis.plot(steps, [t["target"] for t in trajectory], linestyle="--", label="target R(t)")
    regrowth = [t["step"] for t in trajectory if t["phase"] == "regrowth"]
    if regrowth:
        density_axis.axvspan(min(regrowth), max(regrowth), alpha=0.12, color="green", label="regrowth (γ = 0)")
    density_axis.set_ylabel("density")
    density_axis.legend(fontsize=8)
    density_axis.grid(alpha=0.3)
    gamma_axis.plot(steps, [t["gamma"] for t in trajectory], color="tab:red")
    gamma_axis.set_ylabel("pressure γ")
    gamma_axis.grid(alpha=0.3)
    fractions = np.array([[open_ / size for open_, size in zip(t["open"], scope_sizes)] for t in trajectory]).T
    image = heat_axis.imshow(fractions, aspect="auto", interpolation="nearest", vmin=0, vmax=1, cmap="viridis",
                             extent=[steps[0], steps[-1], len(scope_names) - 0.5, -0.5])
    heat_axis.set_yticks(range(len(scope_names)))
    heat_axis.set_yticklabels([name.replace("layers.", "L") for name in scope_names], fontsize=6)
    heat_axis.set_xlabel("optimizer step")
    figure.colorbar(image, ax=heat_axis, label="open fraction")
    figure.suptitle("Hyperflux gate training")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
