"""Model adapters: a data table from ``config.model_type`` to the adapter that knows its layout."""

from __future__ import annotations

from torch import nn

from ..errors import UnsupportedModelError
from .base import COLUMNS, ROWS, LinearSlice, ModelAdapter, PrunableScope
from .llama import LlamaLayoutAdapter

#: model_type -> adapter. Pruned checkpoints (``hf_prune_*``) keep their family's layout, so a pruned
#: model can be pruned again.
ADAPTERS: dict[str, ModelAdapter] = {
    "llama": LlamaLayoutAdapter(),
    "mistral": LlamaLayoutAdapter(),
    "qwen2": LlamaLayoutAdapter(),
    "qwen3": LlamaLayoutAdapter(),
}
ADAPTERS.update({f"hf_prune_{model_type}": adapter for model_type, adapter in list(ADAPTERS.items())})

SUPPORTED_MODEL_TYPES = tuple(sorted(key for key in ADAPTERS if not key.startswith("hf_prune_")))


def check_supported(model_type: str) -> None:
    """Fail early, before any weight is loaded, for an architecture without an adapter."""
    if model_type not in ADAPTERS:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not supported; hf-prune has adapters for: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} (causal LM checkpoints of these families)."
        )


def get_adapter(model: nn.Module) -> ModelAdapter:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    check_supported(str(model_type))
    return ADAPTERS[model_type]


__all__ = [
    "ADAPTERS",
    "COLUMNS",
    "ROWS",
    "SUPPORTED_MODEL_TYPES",
    "LinearSlice",
    "ModelAdapter",
    "PrunableScope",
    "check_supported",
    "get_adapter",
]
