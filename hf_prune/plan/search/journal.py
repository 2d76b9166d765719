"""The search's resumable state: every finished call of its cost meter, and the sweep in progress.

The search is a fixed sequence of calls on its meter — ``set_base`` (the plan the costs are measured around; its
KL) and ``measure`` (a table of costs) — each a deterministic function of the options, the rows, the scores and the
calls before it. So the journal writes each finished call's result (a few numbers) and a resumed run replays the
finished calls instead of computing them, then goes on. On a model offloaded layer by layer one call is hours (the
first table of Llama-3.1-8B: thousands of layer passes), so the sweep in progress is written too: its state at a
layer boundary (the plan's activations, every candidate stream still carried, the calibration rows' hidden states)
every :data:`SWEEP_CHECKPOINT_SECONDS` and when Ctrl-C stops it, and a resumed sweep starts at the next layer. The
numbers are the same as an uninterrupted run's, bit for bit (tested).

Files in ``--state-dir``: ``search_state.json`` (fingerprint, finished calls, the sweep's record),
``search_reference.safetensors`` (the dense model's log-probabilities on the held-out rows, written once, read by
every later KL) and ``search_sweep.safetensors`` (the sweep's tensors).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...adapters import PrunableScope
from ...runtime.distributed import process_state
from ...runtime.saved_state import (
    discard_saved_state,
    read_record,
    read_tensors,
    write_record,
    write_state,
)

logger = logging.getLogger(__name__)

STATE_NAME = "search"
REFERENCE_FILE = "search_reference.safetensors"
SWEEP_FILE = "search_sweep.safetensors"
#: seconds between two writes of a sweep's state: a write is the size of the candidate streams still carried
#: (Llama-3.1-8B, 512 held-out tokens: 8 MB per stream, up to ~500 streams with global costs), and a layer of an 8B
#: sweep on a CPU takes minutes
SWEEP_CHECKPOINT_SECONDS = 600.0

Request = tuple[PrunableScope, int, torch.Tensor]


def masks_key(masks: Mapping[str, torch.Tensor]) -> str:
    """A short digest of a plan (scope name -> 0/1 mask): a replayed call must be the call that was saved."""
    digest = hashlib.sha256()
    for name in sorted(masks):
        digest.update(name.encode())
        digest.update(masks[name].detach().cpu().to(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def requests_key(requests: Sequence[Request], local: bool) -> str:
    return hashlib.sha256(json.dumps([[s.name, int(m.sum()), masks_key({"m": m})] for s, _, m in requests]
                                     + [local]).encode()).hexdigest()[:16]


@dataclass
class SweepState:
    """A sweep at a layer boundary: everything it needs to go on at layer ``layer + 1``."""

    layer: int
    tensors: dict[str, list[torch.Tensor] | None]  # "base", "walk", "stream/<i>": per held-out / calibration batch
    record: dict[str, Any] = field(default_factory=dict)  # numbers: local changes, probes, layer passes


class SweepCheckpoint:
    """The sweep of one call writes its state here and, on resume, starts from it (:class:`SearchJournal`)."""

    def __init__(self, journal: "SearchJournal", call: int):
        self.journal, self.call = journal, call
        self._last_write = time.monotonic()

    def saved(self) -> SweepState | None:
        """The state an interrupted sweep of this call left, or None."""
        return self.journal.saved_sweep(self.call)

    def due(self) -> bool:
        return time.monotonic() - self._last_write >= SWEEP_CHECKPOINT_SECONDS

    def write(self, state: Callable[[], SweepState]) -> None:
        self.journal.write_sweep(self.call, state())
        self._last_write = time.monotonic()


class SearchJournal:
    """The finished calls of one search run, read from ``directory`` on ``resume`` and appended to as it goes.

    Only the main process writes (every process computes the same numbers)."""

    def __init__(self, directory: str | Path, fingerprint: str, *, resume: bool, restart: bool):
        self.directory, self.fingerprint = Path(directory), fingerprint
        self.writes = process_state().is_main_process
        self.calls: list[dict[str, Any]] = []
        self.position = 0
        self._sweep: dict[str, Any] | None = None
        if restart and self.writes:
            discard_saved_state(self.directory)
        elif resume and (self.directory / f"{STATE_NAME}_state.json").is_file():
            record = read_record(self.directory, STATE_NAME, fingerprint)
            self.calls, self._sweep = record["calls"], record.get("sweep")
            logger.info("search: resuming from %s (%d finished calls)", record["progress"], len(self.calls))

    # -- finished calls ------------------------------------------------------------------------------------
    def replay(self, kind: str, key: str) -> dict[str, Any] | None:
        """The saved result of the next call if it was finished before, else None (the call is to be computed)."""
        if self.position >= len(self.calls):
            return None
        call = self.calls[self.position]
        if (call["kind"], call["key"]) != (kind, key):
            raise RuntimeError(f"search resume: call {self.position} is a {kind} ({key}) where the saved run made a "
                               f"{call['kind']} ({call['key']}); the state does not match this run")
        self.position += 1
        return call

    def record(self, kind: str, key: str, passes: int, reference: list[torch.Tensor] | None = None,
               **result: Any) -> None:
        """Append a finished call (and the dense reference, once), dropping the sweep state it made."""
        self.calls.append({"kind": kind, "key": key, "passes": passes, **result})
        self.position += 1
        self._sweep = None
        if not self.writes:
            return
        if reference is not None and not (self.directory / REFERENCE_FILE).is_file():
            write_state(self.directory, STATE_NAME, {f"reference/{b}": t for b, t in enumerate(reference)},
                        self._meta(), tensors_file=REFERENCE_FILE)
        else:
            write_record(self.directory, STATE_NAME, self._meta())
        (self.directory / SWEEP_FILE).unlink(missing_ok=True)  # the record no longer names it (up to GBs at 8B)

    def reference(self) -> list[torch.Tensor]:
        """The dense log-probabilities of the held-out rows, as the first call computed them (read from the state each
        time, not kept: the meter keeps them, in a file when the model is offloaded)."""
        tensors = read_tensors(self.directory, STATE_NAME, REFERENCE_FILE)
        return [tensors[f"reference/{b}"] for b in range(len(tensors))]

    # -- the sweep in progress -----------------------------------------------------------------------------
    def checkpoint(self) -> SweepCheckpoint:
        """Where the next call's sweep writes its state (and finds an interrupted one's)."""
        return SweepCheckpoint(self, self.position)

    def saved_sweep(self, call: int) -> SweepState | None:
        if self._sweep is None or self._sweep["call"] != call:
            return None
        flat = read_tensors(self.directory, STATE_NAME, SWEEP_FILE)
        tensors: dict[str, list[torch.Tensor] | None] = {}
        for group, count in self._sweep["groups"].items():
            tensors[group] = [flat[f"{group}/{b}"] for b in range(count)] if count is not None else None
        return SweepState(self._sweep["layer"], tensors, self._sweep["record"])

    def write_sweep(self, call: int, state: SweepState) -> None:
        if not self.writes:
            return
        flat = {f"{group}/{b}": tensor for group, batches in state.tensors.items() if batches is not None
                for b, tensor in enumerate(batches)}
        groups = {group: (len(batches) if batches is not None else None) for group, batches in state.tensors.items()}
        self._sweep = {"call": call, "layer": state.layer, "groups": groups, "record": state.record}
        write_state(self.directory, STATE_NAME, flat, self._meta(), tensors_file=SWEEP_FILE)
        logger.info("search: state written after layer %d of call %d", state.layer, call)

    def _meta(self) -> dict[str, Any]:
        progress = f"search call {len(self.calls) + 1}" + (f", layer {self._sweep['layer'] + 1}" if self._sweep else "")
        return {"fingerprint": self.fingerprint, "progress": progress, "calls": self.calls, "sweep": self._sweep}


class JournaledMeter:
    """A cost meter whose finished calls are journaled and, on resume, replayed (see the module docstring).

    A replayed ``set_base`` only remembers its plan and KL; the meter is brought to that base (:meth:`restore_base`)
    just before the first call that has to be computed."""

    def __init__(self, meter, journal: SearchJournal):
        self.meter, self.journal = meter, journal
        self.scopes = meter.scopes
        self._pending: tuple[Mapping[str, torch.Tensor], float, float] | None = None
        self._replayed_passes = 0

    def __enter__(self) -> "JournaledMeter":
        self.meter.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        self.meter.__exit__(*exc_info)

    @property
    def layer_passes(self) -> int:
        return self._replayed_passes + self.meter.layer_passes

    def set_base(self, masks: Mapping[str, torch.Tensor]) -> float:
        key = masks_key(masks)
        saved = self.journal.replay("base", key)
        if saved is not None:
            probe_kl = saved.get("probe_kl", saved["kl"])
            self._pending, self._replayed_passes = (masks, saved["kl"], probe_kl), self._replayed_passes + saved["passes"]
            return saved["kl"]
        self._bring_to_base()
        first = not self.journal.calls
        before = self.meter.layer_passes
        kl = self.meter.set_base(masks, checkpoint=self.journal.checkpoint())
        self.journal.record("base", key, self.meter.layer_passes - before,
                            reference=self.meter.reference if first else None, kl=kl,
                            probe_kl=self.meter.base_kl_probe)
        return kl

    def measure(self, requests: Sequence[Request], desc: str, local: bool = False) -> list[float]:
        key = requests_key(requests, local)
        saved = self.journal.replay("measure", key)
        if saved is not None:
            self._replayed_passes += saved["passes"]
            return list(saved["costs"])
        self._bring_to_base()
        before = self.meter.layer_passes
        costs = self.meter.measure(requests, desc, local=local, checkpoint=self.journal.checkpoint())
        self.journal.record("measure", key, self.meter.layer_passes - before, costs=[float(c) for c in costs])
        return costs

    def _bring_to_base(self) -> None:
        if self._pending is not None:
            masks, kl, probe_kl = self._pending
            self.meter.restore_base(masks, kl, self.journal.reference(), probe_kl)
            self._pending = None
