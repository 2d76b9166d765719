"""How an option is declared: a dataclass field whose metadata carries its flag and help.

The same metadata feeds ``hf-prune --help``, recipe keys and the one-line errors of validation, so the command
line, recipes and the Python API cannot drift apart. A field of a nested section names its own flag (which is
also its recipe key, with underscores): ``CalibrationOptions.samples`` is ``--calibration-samples``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import MISSING, Field, fields
from typing import Any

from ..errors import ConfigError


def option(text: str, default_help: str | None = None) -> dict[str, str]:
    """Field metadata: the help, and what happens by default when the value (e.g. None) says nothing. The flag is
    the field's name."""
    return {"help": text} if default_help is None else {"help": text, "default_help": default_help}


def section_option(flag: str, text: str, default_help: str | None = None) -> dict[str, str]:
    """Metadata of a field of a nested section or of the run options: its flag (with underscores), and its help."""
    return {**option(text, default_help), "flag": flag}


def flag_name(f: Field) -> str:
    """The option's word on the command line and in recipes, with underscores (``calibration_samples``)."""
    return f.metadata.get("flag", f.name)


def flag_of(owner: Any, name: str) -> str:
    """``--calibration-samples`` for ``("CalibrationOptions", "samples")``: how errors name an option."""
    return "--" + next(flag_name(f) for f in fields(owner) if f.name == name).replace("_", "-")


def default_of(f: Field) -> Any:
    return f.default_factory() if f.default is MISSING else f.default


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_positive_int(owner: Any, *names: str) -> None:
    for name in names:
        value = getattr(owner, name)
        if not _is_int(value) or value < 1:
            raise ConfigError(f"{flag_of(owner, name)} must be a positive integer, got {value!r}")


def check_non_negative_int(owner: Any, *names: str) -> None:
    for name in names:
        value = getattr(owner, name)
        if not _is_int(value) or value < 0:
            raise ConfigError(f"{flag_of(owner, name)} must be a non-negative integer, got {value!r}")


def check_positive_number(owner: Any, *names: str) -> None:
    for name in names:
        value = getattr(owner, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"{flag_of(owner, name)} must be a positive number, got {value!r}")


def check_choice(what: str, value: Any, choices: Iterable[str]) -> None:
    choices = list(choices)
    if value not in choices:
        raise ConfigError(f"unknown {what} {value!r}; choose one of: {', '.join(sorted(choices))}")


def refuse_unknown(keys: Iterable[str], known: Iterable[str], where: str) -> None:
    """A key that names no option is an error naming the nearest one (a typo must not silently fall back to the
    default)."""
    known = sorted(set(known))
    for key in keys:
        if key not in known:
            raise ConfigError(f"unknown option {key!r} {where}{nearest(key, known)}")


def nearest(key: str, known: list[str]) -> str:
    """``; did you mean 'sparsity'?`` for the closest known key, or nothing when none is close.

    A key that is a known name less its prefix or suffix (``rows`` for ``search_rows``) is that name, the shortest
    one where several fit (``search_rows`` rather than ``search_probe_rows``); otherwise the closest spelling."""
    affixed = sorted((name for name in known if name.endswith("_" + key) or name.startswith(key + "_")), key=len)
    close = affixed[:1] or difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else f"; known options: {', '.join(known)}"
