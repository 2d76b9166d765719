"""hf-prune: structured pruning of Hugging Face causal LMs (KV groups and MLP neurons).

Importing this package registers the pruned model classes with transformers' Auto classes, so
``AutoModelForCausalLM.from_pretrained(pruned_dir)`` rebuilds the pruned shapes. The public names
below are imported on first use.

One exception: inside the ``hf-prune`` command itself the registration waits until a verb needs a
model. Registering means importing torch and transformers (seconds), and ``hf-prune --help``, a
mistyped flag or ``--version`` should answer at once.
"""

from __future__ import annotations

import sys
from importlib import import_module
from pathlib import Path
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "AutoPrunedModelForCausalLM": ".auto", "HubTarget": ".pipeline", "QualityCheck": ".pipeline",
    "prune_pretrained": ".pipeline", "RecoveryOptions": ".config",
    "SUPPORTED_MODEL_TYPES": ".adapters", "get_adapter": ".adapters",
    "load_model": ".checkpoint", "save_pruned": ".checkpoint",
    "PruningConfig": ".config", "HfPruneError": ".errors",
    "PruningReport": ".pruner", "prune": ".pruner",
}


def __getattr__(name: str) -> Any:
    """The public names, and submodules (``hf_prune.pruner``), imported on first use."""
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name], __name__), name)
    try:
        return import_module(f".{name}", __name__)
    except ModuleNotFoundError as error:
        if error.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _running_as_the_command() -> bool:
    argv = getattr(sys, "argv", None) or [""]
    return Path(argv[0]).name in ("hf-prune", "hf-prune.exe")


if not _running_as_the_command():
    from . import modeling  # noqa: F401,E402  (registers the Auto classes)

__all__ = ["__version__", "modeling", *_EXPORTS]
