"""The resumable state of a long planning stage (Hyperflux's gate training, the search's cost tables): how it is
written, how a run is recognised, what a new run must say about a state it finds.

A stage writes its tensors and a JSON record (safetensors + JSON, atomically: the JSON goes last, so its presence
means the pair is complete) under a name of its own in ``--state-dir``, at its own checkpoints and when Ctrl-C stops
it. A state belongs to one run, recognised by a fingerprint of the options that shape the result and of the data it
reads: ``--resume`` with other options is refused instead of continuing someone else's run, and so is a state another
version of hf-prune wrote (the record carries the version): a resumed run never mixes numbers of two versions. The
JSON's ``progress`` says in words how far the run got ("Hyperflux step 20", "search call 2, layer 17").
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

from ..errors import ConfigError
from ..version import __version__

#: options that say how often the state is written, not what it is: left out of the fingerprint (where the state is
#: lives in the config's ``state`` section, which no fingerprint reads)
BOOKKEEPING = ("checkpoint_every",)


def _records(state_dir: str | os.PathLike | None) -> list[Path]:
    if not state_dir or not Path(state_dir).is_dir():
        return []
    return sorted(Path(state_dir).glob("*_state.json"))


def saved_progress(state_dir: str | os.PathLike | None) -> str | None:
    """How far the run whose complete state is saved in ``state_dir`` got ("step 20"), or None if there is none."""
    for record in _records(state_dir):
        try:
            return str(json.loads(record.read_text())["progress"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


def check_saved_state(state_dir: str | os.PathLike | None, *, resume: bool, restart: bool) -> None:
    """An interrupted run's state is never thrown away silently: a new run must say what to do with it.

    ``resume`` needs a state; without ``resume`` or ``restart`` a saved state is an error naming both flags.
    (``restart`` discards it: :func:`discard_saved_state`.) A check only: nothing is changed on disk.
    """
    progress = saved_progress(state_dir)
    if resume and progress is None:
        raise ConfigError(f"--resume: no saved state in {str(state_dir)!r}; run once without --resume first")
    if not resume and not restart and progress is not None:
        raise ConfigError(f"an interrupted run saved its state at {progress} in {str(state_dir)!r}; "
                          "pass --resume to continue it, or --restart to discard it and start over")


def discard_saved_state(state_dir: str | os.PathLike | None) -> None:
    """Delete the state (``--restart``, or a run that finished: nothing is left to resume)."""
    if state_dir:
        shutil.rmtree(state_dir, ignore_errors=True)


def fingerprint(options: dict[str, Any], rows: torch.Tensor, scopes: list[tuple[str, int]], budget: float,
                *more: torch.Tensor) -> str:
    """Identifies a run: the options that shape the result, the calibration rows, the scopes, the budget (and any
    ``more`` tensors the run reads, such as importance scores)."""
    shaping = {key: value for key, value in options.items() if key not in BOOKKEEPING}
    digest = hashlib.sha256(json.dumps(shaping, sort_keys=True, default=str).encode())
    for tensor in (rows, *more):
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    digest.update(json.dumps(scopes).encode())
    digest.update(str(budget).encode())
    return digest.hexdigest()[:16]


def write_state(state_dir: str | os.PathLike, name: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                *, tensors_file: str | None = None) -> None:
    """Write the tensors, then the JSON (``<name>_state.json``) that marks the pair complete; each file replaces the
    old one atomically. ``meta`` must hold ``fingerprint`` and ``progress``. ``tensors_file`` names the tensors'
    file when it is not the default ``<name>_state.safetensors`` (a stage whose tensors change at different rates
    writes them to several files; the JSON says which)."""
    directory = Path(state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / (tensors_file or f"{name}_state.safetensors")
    temporary = target.with_name(target.name + ".tmp")
    save_file({key: value.detach().cpu().contiguous() for key, value in tensors.items()}, str(temporary))
    os.replace(temporary, target)
    write_record(state_dir, name, meta)


def write_record(state_dir: str | os.PathLike, name: str, meta: dict[str, Any]) -> None:
    """Write only the JSON record (atomically): for a state whose tensors are already on disk."""
    directory = Path(state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    temporary = directory / f"{name}_state.json.tmp"
    temporary.write_text(json.dumps({**meta, "hf_prune_version": __version__}))
    os.replace(temporary, directory / f"{name}_state.json")


def read_record(state_dir: str | os.PathLike | None, name: str, expected_fingerprint: str) -> dict[str, Any]:
    """The JSON of this run's ``name`` state; the state of another run is refused in one line."""
    directory = Path(state_dir or "")
    check_saved_state(directory, resume=True, restart=False)  # the state may have gone since the run started
    path = directory / f"{name}_state.json"
    meta = json.loads(path.read_text()) if path.is_file() else {}
    written_by = meta.get("hf_prune_version", "an earlier version")
    if meta and written_by != __version__:  # its costs or gates would mix with numbers this version computes
        raise ConfigError(f"--resume: the state in {str(directory)!r} was written by hf-prune {written_by}, this is "
                          f"{__version__}; finish it with that version, or pass --restart to discard it")
    if meta.get("fingerprint") != expected_fingerprint:
        raise ConfigError(f"--resume: the state in {str(directory)!r} belongs to a run with other options or "
                          "calibration data; resume with the same command, or pass --restart to discard it")
    return meta


def read_tensors(state_dir: str | os.PathLike, name: str, tensors_file: str | None = None) -> dict[str, torch.Tensor]:
    return load_file(str(Path(state_dir) / (tensors_file or f"{name}_state.safetensors")))


def read_state(state_dir: str | os.PathLike | None, name: str,
               expected_fingerprint: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The saved tensors and JSON of this run's ``name`` state (see :func:`read_record`)."""
    meta = read_record(state_dir, name, expected_fingerprint)
    return read_tensors(state_dir, name), meta
