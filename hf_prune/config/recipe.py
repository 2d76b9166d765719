"""Recipes (``recipes/*.yaml``) and the order in which options are decided: field default < recipe < flag.

A recipe is a YAML mapping of the words a user types as flags, with underscores (``calibration_samples: 64``,
``search_rows: 4``, ``model``, ``output``), or of sections holding those same words (``search: {search_rows: 4}``).
A word that names no option is an error naming the nearest one: a typo must never run with the default.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, first_line
from .fields import flag_name, refuse_unknown
from .pruning import PruningConfig, section_aliases
from .run import HubTarget, LoadOptions, QualityCheck, RunOptions
from .sections import SECTIONS

#: flags of the run that take no field of their own (how many bits; they set RunOptions.quantize_bits)
QUANTIZATION_FLAGS = ("load_in_4bit", "load_in_8bit")


def pruning_words() -> list[str]:
    """Every word that sets a PruningConfig option (top-level fields, then section fields by their flag)."""
    top = [f.name for f in fields(PruningConfig) if f.name not in SECTIONS]
    return [*top, *section_aliases()]


def run_words() -> list[str]:
    """Every word that sets a run option: the model, where the output goes, loading, scoring, publishing."""
    flagged = [flag_name(f) for cls in (LoadOptions, RunOptions, QualityCheck, HubTarget)
               for f in fields(cls) if f.metadata]
    return list(dict.fromkeys([*flagged, *QUANTIZATION_FLAGS]))


def load_recipe(path: str | Path) -> dict[str, Any]:
    """The options of a YAML recipe by flag word, nested sections flattened; an unknown word is an error."""
    recipe = Path(path)
    if not recipe.is_file():
        raise ConfigError(f"recipe {str(recipe)!r} does not exist; pass a YAML file such as recipes/default.yaml")
    try:
        values = yaml.safe_load(recipe.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"recipe {str(recipe)!r} is not valid YAML: {first_line(error)}") from error
    if not isinstance(values, dict):
        raise ConfigError(f"recipe {str(recipe)!r} must be a mapping of option names to values")
    flat: dict[str, Any] = {}
    for key, value in values.items():
        key = str(key).replace("-", "_")
        if key in SECTIONS and isinstance(value, dict):
            words = [flag_name(f) for f in fields(SECTIONS[key])]
            section = {str(name).replace("-", "_"): item for name, item in value.items()}
            refuse_unknown(section, words, f"in section {key!r} of recipe {str(recipe)!r}")
            flat.update(section)
        else:
            flat[key] = value
    refuse_unknown(flat, [*pruning_words(), *run_words()], f"in recipe {str(recipe)!r}")
    return flat


def merge_options(recipe: dict[str, Any], explicit: dict[str, Any]) -> dict[str, Any]:
    """Recipe values overridden by explicit ones. Sparsity and beta are two ways to give one budget: the one given
    explicitly drops the other from the recipe, and a recipe that gives beta alone leaves no default sparsity."""
    values = {**recipe, **explicit}
    if "beta" in explicit and "sparsity" not in explicit:
        values["sparsity"] = None
    elif "sparsity" in explicit and "beta" not in explicit:
        values.pop("beta", None)
    elif values.get("beta") is not None and "sparsity" not in values:
        values["sparsity"] = None
    return values


def split_options(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pruning options, run options) of a flat mapping of flag words."""
    pruning = set(pruning_words())
    return ({key: value for key, value in values.items() if key in pruning},
            {key: value for key, value in values.items() if key not in pruning})
