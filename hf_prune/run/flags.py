"""Command-line flags made from the option dataclasses of :mod:`hf_prune.config`, so a flag, its recipe key and its
Python keyword are one word with one help text, and ``hf-prune`` and ``hf-prune eval`` share the flags of the
options they share (``--model``, ``--dtype``, ``--device-map``, ``--eval-*``).

Every flag defaults to "not given" (``argparse.SUPPRESS``): a recipe's value then stands unless the flag is typed.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Iterable
from dataclasses import MISSING, Field, fields
from typing import Any

from ..config import (
    DTYPE_CHOICES,
    GATE_INIT,
    RECOVER_PARAMS,
    REFIT_INPUTS,
    SECTIONS,
    UNITS,
    HubTarget,
    LoadOptions,
    PruningConfig,
    QualityCheck,
    RunOptions,
    compensation_choices,
    section_owners,
)
from ..config.fields import flag_name
from ..registry import IMPORTANCES, RECOVERIES, TARGETS


def choices() -> dict[str, list[str]]:
    """The accepted values of the flags that name something, read from the registries when the parser is built
    (a target registered by a plug-in is a choice too)."""
    return {"target": sorted(TARGETS), "importance": sorted(IMPORTANCES), "units": list(UNITS),
            "compensate": list(compensation_choices()), "refit_on": list(REFIT_INPUTS), "gate_init": list(GATE_INIT),
            "recover": ["none", *RECOVERIES], "recover_params": list(RECOVER_PARAMS), "dtype": list(DTYPE_CHOICES)}


def help_text(f: Field) -> str:
    """The field's help plus what happens by default; argparse %-formats help, so '%' is escaped."""
    default = f.default if f.default is not MISSING else None
    if isinstance(default, (tuple, list)):
        default = ",".join(default)
    shown = f.metadata.get("default_help", default)
    return f"{f.metadata['help']} (default: {shown})".replace("%", "%%")


def number(text: str) -> int | float:
    """An int when the text is one, else a float (lm-eval's limit is a count or a fraction)."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def _argument_type(kind: Any) -> Any:
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        arguments = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        if set(arguments) == {int, float}:
            return number
        kind = arguments[0]
    return kind if kind in (int, float, bool) else str


def add_field_flags(group: Any, owner: type, names: Iterable[str] | None = None) -> None:
    """One flag per field of ``owner`` that has help (or only those in ``names``), under its own word."""
    hints = typing.get_type_hints(owner)
    accepted = choices()
    for f in fields(owner):
        if not f.metadata or (names is not None and f.name not in names):
            continue
        word, kind = flag_name(f), _argument_type(hints[f.name])
        flag = "--" + word.replace("_", "-")
        if kind is bool:
            group.add_argument(flag, dest=word, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                               help=help_text(f))
        else:
            group.add_argument(flag, dest=word, type=kind, choices=accepted.get(word), default=argparse.SUPPRESS,
                               help=help_text(f))


def add_pruning_flags(parser: argparse.ArgumentParser) -> None:
    """Every PruningConfig option: the top-level fields, then each section under a heading of its own."""
    add_field_flags(parser, PruningConfig, [f.name for f in fields(PruningConfig) if f.name not in SECTIONS])
    for name, cls in SECTIONS.items():
        owners = section_owners(name)
        add_field_flags(parser.add_argument_group(f"{name} options" + (
            f" (--target {' / '.join(owners)})" if owners else "")), cls)


def add_loading_flags(group: Any) -> None:
    """--model, --dtype, --device-map: shared by ``hf-prune`` and ``hf-prune eval``."""
    add_field_flags(group, LoadOptions)


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """Where the result goes, how the model is held, and the quality gate and the upload."""
    add_field_flags(parser, RunOptions, ["output_dir", "overwrite", "layerwise"])
    quantized = parser.add_mutually_exclusive_group()
    quantized.add_argument("--load-in-4bit", dest="load_in_4bit", action="store_true", default=argparse.SUPPRESS,
                           help="Hyperflux: hold the frozen base in 4-bit (bitsandbytes NF4) while gates train; the "
                                "plan is then applied to the full-precision weights. Needs bitsandbytes (GPU, or its "
                                "CPU backend)")
    quantized.add_argument("--load-in-8bit", dest="load_in_8bit", action="store_true", default=argparse.SUPPRESS,
                           help="Hyperflux: like --load-in-4bit, with an 8-bit (LLM.int8) base")
    add_quality_flags(parser.add_argument_group(
        "quality (lm-eval) and publishing: with --eval-tasks or --min-retention the dense, pruned (and recovered) "
        "models are scored, retention is printed and written into the model card"))
    add_field_flags(parser, HubTarget)


def add_quality_flags(group: Any, *, gate: bool = True) -> None:
    """--eval-tasks, --eval-data, --eval-limit, --eval-batch-size, --eval-mc-items, and --min-retention (the gate of
    a pruning run)."""
    add_field_flags(group, QualityCheck, [f.name for f in fields(QualityCheck) if gate or f.name != "min_retention"])


def given(args: argparse.Namespace) -> dict[str, Any]:
    """The flags typed on the command line, by word (every flag defaults to "not given")."""
    return dict(vars(args))
