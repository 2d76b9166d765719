"""``recovery_curve.png``: what each token of a distillation bought — the training loss and the held-out KL to the
teacher and perplexity, against the tokens trained on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib


def save_recovery_curve(history: list[dict[str, Any]], path: Path, title: str = "recovery") -> bool:
    """Draw the trainer's log; False (nothing written) when it holds no point to draw."""
    training = [(entry["tokens"], entry["loss"]) for entry in history if "loss" in entry and "tokens" in entry]
    held_out = [entry for entry in history if "eval_perplexity" in entry and "tokens" in entry]
    if not training and not held_out:
        return False
    matplotlib.use("Agg")  # no screen: files only
    import matplotlib.pyplot as plt  # after choosing the backend, as matplotlib asks

    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    if training:
        axes[0].plot(*zip(*training), label="training loss")
    if held_out and "eval_kl" in held_out[0]:
        axes[0].plot([e["tokens"] for e in held_out], [e["eval_kl"] for e in held_out], marker="o",
                     label="held-out KL to the teacher")
    axes[0].set_ylabel("nats / token")
    axes[1].plot([e["tokens"] for e in held_out], [e["eval_perplexity"] for e in held_out], marker="o")
    axes[1].set_ylabel("held-out perplexity")
    for axis in axes:
        axis.set_xlabel("tokens trained on")
        axis.grid(alpha=0.3)
    axes[0].legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True
