"""The resumable state of Hyperflux gate training: what is written, how a run is recognised, what a new run must
say about a state it finds.

Gate logits, Adam moments, scheduler and trajectory are written (safetensors + JSON, atomically: the JSON goes
last, so its presence means the pair is complete) every ``checkpoint_every`` steps and when Ctrl-C stops a run. A
state belongs to one run, recognised by a fingerprint of the options that shape the result and of the calibration
rows: ``--resume`` with other options is refused instead of continuing someone else's gates.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ...errors import ConfigError

STATE_TENSORS, STATE_JSON = "hyperflux_state.safetensors", "hyperflux_state.json"
#: options that say where the state is, not what it is: left out of the fingerprint
BOOKKEEPING = ("state_dir", "resume", "restart", "checkpoint_every")


def saved_state_step(state_dir: str | os.PathLike | None) -> int | None:
    """The step of the complete state saved in ``state_dir``, or None if there is none."""
    if not state_dir or not (Path(state_dir) / STATE_JSON).is_file():
        return None
    try:
        return int(json.loads((Path(state_dir) / STATE_JSON).read_text())["step"])
    except (ValueError, KeyError, TypeError):
        return None


def check_saved_state(state_dir: str | os.PathLike | None, *, resume: bool, restart: bool) -> None:
    """An interrupted run's state is never thrown away silently: a new run must say what to do with it.

    ``resume`` needs a state; without ``resume`` or ``restart`` a saved state is an error naming both flags.
    (``restart`` discards it: :func:`discard_saved_state`.) A check only: nothing is changed on disk.
    """
    step = saved_state_step(state_dir)
    if resume and step is None:
        raise ConfigError(f"--resume: no Hyperflux state in {str(state_dir)!r}; run once without --resume first")
    if not resume and not restart and step is not None:
        raise ConfigError(f"an interrupted Hyperflux run saved its state at step {step} in {str(state_dir)!r}; "
                          "pass --resume to continue it, or --restart to discard it and start from step 0")


def discard_saved_state(state_dir: str | os.PathLike | None) -> None:
    """Delete the state (``--restart``, or a run that finished: nothing is left to resume)."""
    if state_dir:
        shutil.rmtree(state_dir, ignore_errors=True)


def fingerprint(options: dict[str, Any], rows: torch.Tensor, scopes: list[tuple[str, int]], budget: float) -> str:
    """Identifies a run: the options that shape the result, the calibration rows, the gated scopes, the budget."""
    shaping = {key: value for key, value in options.items() if key not in BOOKKEEPING}
    digest = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode())
    digest.update(rows.numpy().tobytes())
    digest.update(json.dumps(scopes).encode())
    digest.update(str(budget).encode())
    return digest.hexdigest()[:16]


def write_state(state_dir: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write the tensors, then the JSON that marks the pair complete; each file replaces the old one atomically."""
    directory = Path(state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    temporary = directory / (STATE_TENSORS + ".tmp")
    save_file({name: value.detach().cpu().contiguous() for name, value in tensors.items()}, str(temporary))
    os.replace(temporary, directory / STATE_TENSORS)
    temporary = directory / (STATE_JSON + ".tmp")
    temporary.write_text(json.dumps(meta))
    os.replace(temporary, directory / STATE_JSON)


def read_state(state_dir: str | os.PathLike, expected_fingerprint: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The saved tensors and JSON of this run; the state of another run is refused in one line."""
    directory = Path(state_dir or "")
    check_saved_state(directory, resume=True, restart=False)  # the state may have gone since the run started
    meta = json.loads((directory / STATE_JSON).read_text())
    if meta["fingerprint"] != expected_fingerprint:
        raise ConfigError(f"--resume: the state in {str(directory)!r} belongs to a run with other options or "
                          "calibration data; resume with the same command, or pass --restart to discard it")
    return load_file(str(directory / STATE_TENSORS)), meta
