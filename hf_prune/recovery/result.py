"""What a recovery reports: held-out quality before and after, and what the training spent."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RecoveryResult:
    """Perplexity on the held-out recovery rows before and after training, and what training cost."""

    method: str
    perplexity_before: float
    perplexity_after: float
    steps: int
    trainable_parameters: int
    train_tokens: int
    seconds: float
    #: whether the training was kept: a LoRA is discarded when it did not lower the held-out perplexity
    kept: bool = True
    #: distillation: mean per-token KL(teacher || model) on the held-out rows before and after
    kl_before: float | None = None
    kl_after: float | None = None
    #: distillation: the trainer's log (loss, learning rate, tokens, held-out measures), for the curve
    history: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in vars(self).items() if value is not None and key != "history"}
