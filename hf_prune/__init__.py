"""hf-prune: structured pruning of Hugging Face causal LMs (KV groups and MLP neurons).

The package reads top-down as its pipeline (CONTRIBUTING.md draws it): ``run`` (the command, the pipeline)
uses ``io`` (checkpoints, cards, the Hub, other formats), which uses ``recovery`` and ``quality``, which use
``plan`` (scores, targets), which uses ``cut`` (masks, compensation, surgery), which uses ``calibration``,
``config``, ``runtime``, ``adapters`` (the only code that knows model families) and ``modeling`` (the classes
a pruned checkpoint reloads with). ``registry`` names every pluggable piece, at the bottom.

Importing this package registers the pruned model classes with transformers' Auto classes, so
``AutoModelForCausalLM.from_pretrained(pruned_dir)`` rebuilds the pruned shapes, and makes ``push_to_hub`` of a
pruned model upload what ``--push-to-hub`` uploads. The public names below are imported on first use. One
exception: inside the ``hf-prune`` command itself both wait until a verb needs a model: registering means
importing torch and transformers (seconds), and ``hf-prune --help``, a mistyped flag or ``--version`` should
answer at once.
"""

from __future__ import annotations

import sys
from importlib import import_module
from pathlib import Path
from typing import Any

from .version import __version__

#: public name -> the module that defines it, imported on first use
_EXPORTS = {
    "AutoPrunedModelForCausalLM": ".run.auto", "prune_pretrained": ".run.pipeline",
    "PruningConfig": ".config", "RunOptions": ".config", "QualityCheck": ".config", "HubTarget": ".config",
    "RecoveryOptions": ".config", "PruningReport": ".report", "HfPruneError": ".errors",
    "get_adapter": ".adapters", "supported_model_types": ".adapters", "register_family": ".adapters",
    "Family": ".adapters", "load_model": ".io.checkpoint", "save_pruned": ".io.checkpoint",
    "calibration_ids": ".plan.planner", "make_plan": ".plan.planner", "prune": ".plan.planner",
    "apply_pruning": ".cut.apply",
}


def __getattr__(name: str) -> Any:
    """The public names, and subpackages (``hf_prune.plan``), imported on first use."""
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
    from .io.hub import push_pruned_model  # noqa: E402  (imports the adapters: the Auto classes are registered)
    from .modeling import set_push_handler  # noqa: E402

    set_push_handler(push_pruned_model)

__all__ = ["__version__", *_EXPORTS]
