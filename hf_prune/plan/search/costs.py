"""What cutting one scope to one level costs, measured: KL divergence of the next-token distribution.

Costs are measured on held-out calibration rows with masks (no copy of the model). The inputs of every
decoder layer are cached once under the current plan (the dense model at first), so measuring a
candidate of layer ``l`` runs only layers ``l..L-1`` and the LM head: for a model of ``L`` layers a
full table of candidates costs about half of one forward pass per candidate. The cost of a candidate
is the mean per-token KL(reference || candidate) minus that of the current plan, so a table measured
around a plan says what each single change would add to it.

:class:`SweepCostMeter` (``--sequential``) measures the same numbers in another order, for models that do
not fit on the device: one pass over the layers, in which each layer, made resident once, runs the plan's
activations, every candidate of its own scopes, and every candidate of the layers before it. It holds
one activation per candidate instead of every layer's inputs, and loads each layer's weights once per
pass instead of once per candidate that reaches it. Compensated, it carries the calibration rows along the same
pass (a :class:`~hf_prune.cut.walk.LayerWalk`) and refits each layer's candidates from statistics gathered at that
layer, then drops them: one layer's second moments at a time, never every layer's, and nothing kept of a layer once
it has left memory — so a compensated search runs on a model offloaded layer by layer (``--layerwise``).

With ``local=True`` (``--search-costs local``) both meters measure most candidates by the change
of their own layer's output and only one probe per scope and direction through the rest of the model
(:mod:`~hf_prune.plan.search.probes`): one layer pass per candidate instead of one per later layer.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ...adapters import ModelAdapter, PrunableScope
from ...calibration.statistics import first_layer_inputs
from ...cut.compensation import TemporaryCompensation
from ...cut.masks import GroupMasks
from ...cut.walk import LayerWalk
from ...runtime.offload import execution_device, has_offloaded_weights, modules_outside, resident
from ...runtime.interrupt import stop_at_step_boundary
from .journal import SweepCheckpoint, SweepState
from .probes import Candidate, choose_probes, scaled_costs
from ...runtime.spilled import SpillFile, SpilledRows, in_memory


class CostMeter(AbstractContextManager):
    """Masks every scope by a live table (all ones = dense) and measures KL costs of changing one entry.

    Use as a context manager: the mask hooks are attached on entry and removed on exit.
    """

    def __init__(self, model: nn.Module, adapter: ModelAdapter, scopes: Sequence[PrunableScope],
                 rows: torch.Tensor, batch_size: int = 1, compensation: TemporaryCompensation | None = None,
                 probe_rows: int | None = None):
        self.model, self.adapter = model, adapter
        self.layers = adapter.decoder_layers(model)
        self.scopes = {scope.name: scope for scope in scopes}
        self.batch_size = batch_size
        # local costs: the probes are carried to the end on the first rows only (--search-probe-rows), whole batches
        # of them: the held-out rows are batched so that those rows end a batch
        held_out_batch = batch_size if probe_rows is None else math.gcd(batch_size, probe_rows)
        self.batches = list(rows.split(held_out_batch))
        self.probe_batches = len(self.batches) if probe_rows is None else min(len(self.batches),
                                                                              probe_rows // held_out_batch)
        self.probe_share = (sum(b.numel() for b in self.batches[:self.probe_batches])
                            / sum(b.numel() for b in self.batches))
        self.base_kl_probe = 0.0  # the plan's KL on the probes' batches (= base_kl when they are all the batches)
        device = execution_device(model)
        self.current = {name: torch.ones(scope.num_groups, device=device) for name, scope in self.scopes.items()}
        self._hooks = GroupMasks(model, scopes, {name: self._live(name) for name in self.scopes})
        self._reference: list[torch.Tensor | SpilledRows] = []  # per batch: the dense log-probabilities, [tokens, vocab]
        self.spill_reference = False  # keep them in a file, read a block at a time (spilled.py)
        self._spill: SpillFile | None = None
        self._inputs: list[list[torch.Tensor]] = []  # per layer, per batch: that layer's input hidden states
        self._extras: list[tuple[tuple, dict]] = []  # per batch: the layers' other arguments
        self.base_kl = 0.0
        self.layer_passes = 0
        self.compensation = compensation  # when given, every mask is measured with its compensation applied
        self._final: list[torch.Tensor] = []  # per batch: the plan's last hidden states (the last layer's output)
        # (scope name, its consumer's raw inputs and the plan's outputs of it, per batch) for the scope of the layer
        # whose candidates are being measured, when that scope ends its layer (local_changes)
        self._tail: tuple[str, list[torch.Tensor], list[torch.Tensor]] | None = None

    def _live(self, name: str):
        return lambda: self.current[name]

    def __enter__(self) -> "CostMeter":
        self._hooks.attach()
        if self.compensation is not None:
            self.compensation.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.compensation is not None:
            self.compensation.__exit__(*exc_info)
        self._hooks.remove()
        self._inputs.clear()
        self._reference.clear()
        if self._spill is not None:
            self._spill.close()
            self._spill = None

    @torch.no_grad()
    def set_base(self, masks: Mapping[str, torch.Tensor], checkpoint: SweepCheckpoint | None = None) -> float:
        """Make ``masks`` (scope name -> 0/1 per group; others dense) the plan that costs are measured
        around: cache every layer's inputs under it and return its KL from the dense model. (``checkpoint``: where
        a sweep writes its state; a call here is one forward, never written half-done.)"""
        self._set_current(masks)
        self._tail = None
        hidden = self._first_inputs()
        self._inputs = []
        for layer in self.layers:
            self._inputs.append(hidden)
            hidden = self._layer(layer, hidden)
        self._final = hidden
        return self._set_base_kl(hidden)

    @property
    def reference(self) -> list[torch.Tensor]:
        """The dense model's next-token log-probabilities on the held-out rows, per batch (set by the first base)."""
        return [in_memory(rows) for rows in self._reference]

    def restore_base(self, masks: Mapping[str, torch.Tensor], kl: float, reference: list[torch.Tensor],
                     probe_kl: float | None = None) -> None:
        """Bring a fresh meter to the base a journaled run had reached (``set_base(masks)`` returned ``kl`` there,
        ``probe_kl`` on the probes' rows), given the dense reference it had computed: in memory, the base's layer
        inputs are cached again."""
        self._take_reference(reference)
        self.set_base(masks)

    @property
    def probes_subset(self) -> bool:
        """Whether the probes run on fewer batches than the candidates' local changes."""
        return self.probe_batches < len(self.batches)

    def _take_reference(self, reference: list[torch.Tensor]) -> None:
        device = execution_device(self.model)
        self._reference = [self._keep(r.to(device)) for r in reference]

    def _keep(self, log_probs: torch.Tensor) -> torch.Tensor | SpilledRows:
        """Where a batch of the dense reference is kept: in memory, or in the spill file when the meter has one."""
        if not self.spill_reference:
            return log_probs
        if self._spill is None:
            self._spill = SpillFile()
        return self._spill.spill(log_probs)

    @torch.no_grad()
    def cost(self, scope: PrunableScope, mask: torch.Tensor) -> float:
        """KL added to the base by giving ``scope`` the 0/1 ``mask`` (all other scopes as in the base)."""
        with self._changed(scope, mask):
            hidden = self._inputs[scope.layer]
            for layer in self.layers[scope.layer:]:
                hidden = self._layer(layer, hidden)
            self.layer_passes += len(self.layers) - scope.layer
            return self._kl(hidden) - self.base_kl

    @torch.no_grad()
    def probe_cost(self, scope: PrunableScope, mask: torch.Tensor) -> float:
        """:meth:`cost` on the probes' batches only (all of them unless ``probe_rows`` was given)."""
        with self._changed(scope, mask):
            hidden = self._inputs[scope.layer][:self.probe_batches]
            for layer in self.layers[scope.layer:]:
                hidden = self._layer(layer, hidden)
            self.layer_passes += len(self.layers) - scope.layer
            return self._kl(hidden) - self.base_kl_probe

    def _set_current(self, masks: Mapping[str, torch.Tensor]) -> None:
        for name, mask in self.current.items():
            mask.copy_(masks[name] if name in masks else torch.ones_like(mask))
            self._compensate(name)
        if not self._reference and any(bool((mask != 1).any()) for mask in self.current.values()):
            raise ValueError("the first base of a CostMeter must be the dense model")

    def _first_inputs(self) -> list[torch.Tensor]:
        """The first layer's input per batch; its other arguments (positions, masks) go to ``_extras``."""
        captured = first_layer_inputs(self.model, self.layers, self.batches)
        self._extras = [(args[1:], kwargs) for args, kwargs in captured]
        return [args[0] for args, _ in captured]

    def _set_base_kl(self, final_hidden: list[torch.Tensor]) -> float:
        if not self._reference:  # the first base is the dense model: its distribution is the reference
            self._reference = [self._keep(self._reference_of(hidden)) for hidden in final_hidden]
        self.base_kl = self._kl(final_hidden)
        self.base_kl_probe = self._kl(final_hidden[:self.probe_batches]) if self.probes_subset else self.base_kl
        return self.base_kl

    @contextmanager
    def _changed(self, scope: PrunableScope, mask: torch.Tensor) -> Iterator[None]:
        """``scope`` masked by ``mask`` (and compensated) inside the block, as in the base after it."""
        saved = self.current[scope.name].clone()
        self.current[scope.name].copy_(mask)
        try:
            self._compensate(scope.name)
            yield
        finally:
            self.current[scope.name].copy_(saved)
            self._compensate(scope.name)

    def _layer(self, layer: nn.Module, hidden: list[torch.Tensor]) -> list[torch.Tensor]:
        """``layer`` on every batch."""
        return [self._run(layer, h, extra) for h, extra in zip(hidden, self._extras)]

    def _compensate(self, name: str) -> None:
        if self.compensation is not None and name in self.compensation.scopes:
            chosen = self.compensation.set(self.scopes[name], self.current[name])
            if chosen is not None:  # the method chose other groups at this count (OBS): those are what is measured
                self.current[name].copy_(chosen)

    def measure(self, requests: Sequence[tuple[PrunableScope, int, torch.Tensor]], desc: str,
                local: bool = False, checkpoint: SweepCheckpoint | None = None) -> list[float]:
        """:meth:`cost` of every ``(scope, kept, mask)``, with a progress bar whose ETA counts layer passes; with
        ``local``, the probes' costs and every other candidate's scaled from its :meth:`local_change`. (In memory
        the ``checkpoint`` is not used: a finished call is journaled, an unfinished one computed again.)"""
        if not local:
            return self._measure_each(requests, desc)
        with tqdm(total=len(requests), desc=f"{desc} (local)", unit="layer", leave=False) as bar:
            per_batch = []
            for scope, _, mask in requests:
                per_batch.append(self.local_changes(scope, mask))
                bar.update()
        candidates = self._candidates(requests)
        changes, probe_changes = self._split_changes(per_batch)
        probes = choose_probes(candidates, _changed_on_both(changes, probe_changes))
        probe_requests = [requests[index] for index in probes.values()]
        probe_costs = dict(zip(probes.values(), self._measure_each(probe_requests, f"{desc} (probes)",
                                                                   cost=self.probe_cost)))
        return self._scaled(candidates, changes, probe_changes, probes, probe_costs)

    def _split_changes(self, per_batch: Sequence[Sequence[float]]) -> tuple[list[float], list[float]]:
        """Per candidate: its squared change summed over all batches, and over the probes' batches."""
        return [sum(c) for c in per_batch], [sum(c[:self.probe_batches]) for c in per_batch]

    def _scaled(self, candidates, changes, probe_changes, probes, probe_costs) -> list[float]:
        if not self.probes_subset:
            return scaled_costs(candidates, changes, probes, probe_costs)
        return scaled_costs(candidates, changes, probes, probe_costs, probe_local=probe_changes, share=self.probe_share)

    def _measure_each(self, requests: Sequence[tuple[PrunableScope, int, torch.Tensor]], desc: str,
                      cost=None) -> list[float]:
        cost = cost or self.cost
        work = [len(self.layers) - scope.layer for scope, _, _ in requests]
        costs = []
        with tqdm(total=sum(work), desc=desc, unit="layer", leave=False) as bar:
            for (scope, _, mask), passes in zip(requests, work):
                costs.append(cost(scope, mask))
                bar.update(passes)
        return costs

    @torch.no_grad()
    def local_changes(self, scope: PrunableScope, mask: torch.Tensor) -> list[float]:
        """Squared change of ``scope``'s layer output, per batch of held-out rows, when ``scope`` gets ``mask`` (read
        off its consumer alone when the scope ends its layer: :meth:`_consumer_change`)."""
        self.layer_passes += 1
        if scope.ends_layer:
            return squared_changes(*self._consumer_change(scope, mask))
        with self._changed(scope, mask):
            output = self._layer(self.layers[scope.layer], self._inputs[scope.layer])
        following = scope.layer + 1
        return squared_changes(output, self._inputs[following] if following < len(self.layers) else self._final)

    def _consumer_change(self, scope: PrunableScope, mask: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(the consumer's outputs with ``mask``, as in the plan), per batch, on the plan's inputs of the consumer: for
        a scope that ends its layer their difference is the change of the layer's output. The consumer's inputs are
        taken in one run of the layer and kept while the candidates of that scope are measured."""
        consumer = self.model.get_submodule(scope.consumer.path)
        if self._tail is None or self._tail[0] != scope.name:
            self._tail = None  # the previous scope's inputs go before this one's are taken
            with captured_inputs(consumer) as inputs:
                self._layer(self.layers[scope.layer], self._inputs[scope.layer])
            self._tail = (scope.name, inputs, [consumer(a) for a in inputs])
        _, inputs, planned = self._tail
        with self._changed(scope, mask):
            return [consumer(a) for a in inputs], planned

    def _candidates(self, requests: Sequence[tuple[PrunableScope, int, torch.Tensor]]) -> list[Candidate]:
        return [Candidate(scope.name, int(mask.sum()), int(self.current[scope.name].sum()))
                for scope, _, mask in requests]

    @staticmethod
    def _run(layer: nn.Module, hidden: torch.Tensor, extra: tuple[tuple, dict]) -> torch.Tensor:
        args, kwargs = extra
        output = layer(hidden, *args, **kwargs)
        return output[0] if isinstance(output, tuple) else output

    def _log_probs(self, hidden: torch.Tensor) -> Iterator[torch.Tensor]:
        """Next-token log-probabilities of the flattened tokens of ``hidden``, a block of tokens at a time: a
        block's logits are KL_BLOCK_ELEMENTS floats, so a 128k vocabulary never needs logits for every row at once."""
        flat = hidden.reshape(-1, hidden.shape[-1])
        vocabulary = self.model.get_output_embeddings().out_features
        for block in flat.split(max(1, KL_BLOCK_ELEMENTS // vocabulary)):
            logits = self.adapter.logits(self.model, block).float()
            yield logits.sub_(torch.logsumexp(logits, dim=-1, keepdim=True))  # log-softmax written over the logits

    def _reference_of(self, hidden: torch.Tensor) -> torch.Tensor:
        """The dense model's next-token log-probabilities of ``hidden``'s tokens, ``[tokens, vocab]``."""
        return torch.cat(list(self._log_probs(hidden)))

    def _kl(self, final_hidden: list[torch.Tensor]) -> float:
        """Mean per-token KL(reference || model), a block of tokens at a time (term by term, as
        Σ p (log p − log q): the same numbers as on whole rows, where Σ p log p − Σ p log q would cancel)."""
        total, tokens = 0.0, 0
        for hidden, reference in zip(final_hidden, self._reference):
            start = 0
            for log_q in self._log_probs(hidden):
                log_p = reference[start : start + log_q.shape[0]].to(log_q.device)
                total += float((log_p.exp() * log_q.neg_().add_(log_p)).sum())
                start += log_q.shape[0]
            tokens += start
        return total / tokens


@contextmanager
def captured_inputs(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """The inputs ``module`` is called with inside the block, as they come (before any mask's pre-hook scales them)."""
    inputs: list[torch.Tensor] = []
    handle = module.register_forward_pre_hook(lambda _, args: inputs.append(args[0]), prepend=True)
    try:
        yield inputs
    finally:
        handle.remove()


def squared_changes(outputs: list[torch.Tensor], planned: list[torch.Tensor]) -> list[float]:
    """Per batch, the squared difference of two lists of hidden states."""
    return [float((output.float() - plan.float()).pow(2).sum()) for output, plan in zip(outputs, planned)]


def _changed_on_both(changes: Sequence[float], probe_changes: Sequence[float]) -> list[float]:
    """The changes, zeroed where a candidate changes nothing on the probes' rows: a probe must change something
    there, or its factor from local change to KL is 0 / 0."""
    return [change if on_probe_rows > 0 else 0.0 for change, on_probe_rows in zip(changes, probe_changes)]


def stash(batches: list[torch.Tensor], spill: SpillFile | None) -> list[torch.Tensor | SpilledRows]:
    """A candidate's activations, per batch, kept in ``spill`` (a file) until the next layer needs them — at the
    last layers of a sweep over an offloaded model, one per probe of every earlier layer (Llama-3.1-8B, 8 x 128 cost
    tokens: 16 MB each, 2 GB in all) — or as they are when there is no file."""
    return [spill.spill(batch) for batch in batches] if spill is not None else batches


def unstash(batches: list[torch.Tensor | SpilledRows]) -> list[torch.Tensor]:
    """The activations :func:`stash` kept, in memory."""
    return [in_memory(batch) for batch in batches]


#: floats in one block of logits while measuring KL (32 MB): 65 tokens of a 128k vocabulary, 8k tokens of 1k
KL_BLOCK_ELEMENTS = 2**23


@dataclass
class _Sweep:
    """What one pass of :class:`SweepCostMeter` returns: the plan's last hidden states; per request, the final
    hidden states of its stream (None where not carried to the end) and its local change; the probes chosen."""

    final: list[torch.Tensor]
    streams: list[list[torch.Tensor] | None]
    changes: list[float]
    probes: dict[tuple[str, str], int]
    probe_changes: list[float]  # the local changes on the probes' batches (= changes when those are all)


class SweepCostMeter(CostMeter):
    """:class:`CostMeter` that measures all candidates in one pass over the layers (see the module docstring).

    The costs are the same numbers (the same computations in another order; tested). Candidate
    activations are kept in CPU memory when the model is offloaded, on the activations' device otherwise.

    With a ``compensation``, ``calibration_rows`` are walked along each pass: when a layer is resident, the
    statistics of its consumers' inputs are gathered on those rows (earlier layers as in the plan, compensated; this
    layer dense), its candidates and its part of the plan are compensated from them, and on leaving the layer its
    consumers are dense again and the statistics dropped. Around the dense model these are the dense statistics, so
    the first table equals :class:`CostMeter`'s; around a plan they are those of the plan's own activations, as the
    cut's refit on pruned inputs sees them.
    """

    def __init__(self, *args, calibration_rows: torch.Tensor | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.offloaded = has_offloaded_weights(self.model)
        self.spill_reference = self.offloaded  # the dense reference in a file, read a block at a time (spilled.py)
        if self.compensation is not None and calibration_rows is None:
            raise ValueError("a compensated sweep gathers each layer's statistics on the calibration rows: pass them")
        self.calibration_rows = calibration_rows
        self._resident_layer: int | None = None
        # final norm and head: what the model runs after its decoder layers (the embeddings run only in the first
        # inputs, loaded there by their own hook: resident with the head they would be a second copy of a tied table)
        self._outside = modules_outside(self.model, self.layers, skip=[self.model.get_input_embeddings()])

    def _compensate(self, name: str) -> None:
        """A consumer is compensated only while its layer is resident (its statistics exist only then)."""
        if self.scopes[name].layer == self._resident_layer:
            super()._compensate(name)

    @contextmanager
    def _compensated(self, index: int, layer: nn.Module, walk: LayerWalk | None, candidates: bool) -> Iterator[None]:
        """Inside: layer ``index``'s consumers compensated for the plan from statistics gathered on the walk's rows.
        Nothing is gathered where nothing is compensated: no candidate here (``candidates``) and the plan keeps the
        layer whole (the dense base's pass; at Llama-3.1-8B, gathering is 1.8 GB of moments per layer)."""
        if walk is None:
            yield
            return
        compensation = self.compensation
        here = [scope for scope in compensation.scopes.values() if scope.layer == index]
        if not candidates and all(bool((self.current[scope.name] == 1).all()) for scope in here):
            yield
            return
        plan = {scope.name: self.current[scope.name].clone() for scope in here}
        for scope in here:  # the statistics of the whole input: this layer's own masks off while gathering
            self.current[scope.name].fill_(1.0)
        gathered = walk.statistics(layer, here, gram=compensation.compensation.second_moments)
        if self.offloaded:  # held to one layer: the d×d moments in a file, their memory for least squares' system
            for channels in gathered.channels.values():
                channels.spill_second_moments()
        compensation.stats.channels.update(gathered.channels)
        self._resident_layer = index
        try:
            for scope in here:
                self.current[scope.name].copy_(plan[scope.name])
                self._compensate(scope.name)
            yield
        finally:
            self._resident_layer = None
            for scope in here:
                compensation.release(scope)
                compensation.stats.channels.pop(scope.name, None)

    @torch.no_grad()
    def set_base(self, masks: Mapping[str, torch.Tensor], checkpoint: SweepCheckpoint | None = None) -> float:
        self._set_current(masks)
        hidden = self._sweep([], desc="search: the plan's KL", checkpoint=checkpoint).final
        with resident(self._outside):
            return self._set_base_kl(hidden)

    def restore_base(self, masks: Mapping[str, torch.Tensor], kl: float, reference: list[torch.Tensor],
                     probe_kl: float | None = None) -> None:
        """A sweep caches nothing per base: the plan, its KL and the dense reference are the whole state."""
        self._take_reference(reference)
        self._set_current(masks)
        self.base_kl = kl
        self.base_kl_probe = kl if probe_kl is None else probe_kl

    @torch.no_grad()
    def measure(self, requests: Sequence[tuple[PrunableScope, int, torch.Tensor]], desc: str,
                local: bool = False, checkpoint: SweepCheckpoint | None = None) -> list[float]:
        candidates = self._candidates(requests)
        sweep = self._sweep(requests, desc, candidates if local else None, checkpoint)
        base_kl = self.base_kl_probe if local else self.base_kl  # local: the probes ran on the probes' batches
        with resident(self._outside):
            measured = {index: self._kl(unstash(stream)) - base_kl
                        for index, stream in enumerate(sweep.streams) if stream is not None}
        if not local:
            return [measured[index] for index in range(len(requests))]
        return self._scaled(candidates, sweep.changes, sweep.probe_changes, sweep.probes, measured)

    def _sweep(self, requests, desc: str | None, local: list[Candidate] | None = None,
               checkpoint: SweepCheckpoint | None = None) -> _Sweep:
        """One pass over the layers: the plan's activations and, per request, the activations after its scope's
        layer with only that scope changed, carried to the end. With ``local`` (the requests' candidates), every
        request's :func:`squared_changes` at its layer is recorded and only the probes are carried on. With a
        ``checkpoint``, the pass starts where an interrupted one stopped, writes its state at layer boundaries
        every so often, and Ctrl-C stops it at the next boundary with the state written."""
        base = self._first_inputs()  # also the layers' other arguments (positions, masks), resumed or not
        sweep = _Sweep(final=[], streams=[None] * len(requests), changes=[0.0] * len(requests), probes={},
                       probe_changes=[0.0] * len(requests))
        by_layer: dict[int, list[int]] = {}
        for index, (scope, _, _) in enumerate(requests):
            by_layer.setdefault(scope.layer, []).append(index)
        walk = None
        if self.compensation is not None:
            walk = LayerWalk(self.model, self.layers, self.calibration_rows, self.batch_size)
        start, passes_before = 0, self.layer_passes
        saved = checkpoint.saved() if checkpoint is not None else None
        if saved is not None:
            base, start = self._resume(sweep, walk, saved, passes_before), saved.layer + 1
        streams = sweep.streams
        with tqdm(total=self._work(requests, local), initial=self._work(requests, local, before=start), desc=desc,
                  unit="layer", leave=False, disable=desc is None) as bar, \
                stop_at_step_boundary("the search's state", enabled=checkpoint is not None) as stop:
            for index, layer in enumerate(self.layers):
                if index < start:
                    continue
                spill = SpillFile() if self.offloaded else None  # this layer's streams (the last layer's: gone with them)
                with resident([layer]), self._compensated(index, layer, walk, candidates=index in by_layer):
                    started = [i for i, stream in enumerate(streams) if stream is not None]
                    for i in started:  # candidates of earlier layers: this layer as in the plan
                        streams[i] = stash(self._layer(layer, unstash(streams[i])), spill)
                    here = by_layer.get(index, [])
                    planned = self._planned_and_candidates(layer, base, [(i, requests[i]) for i in here], streams)
                    if local is not None:
                        self._keep_probes(sweep, here, local, planned, self.probe_batches)
                    for i in here:
                        if streams[i] is not None:
                            streams[i] = stash(streams[i], spill)
                    base = planned
                    if walk is not None and index + 1 < len(self.layers):
                        walk.advance(layer)  # the calibration rows on through the layer as in the plan
                candidates = len(started) + len(here)
                self.layer_passes += candidates
                bar.update(len(started) * self._stream_share(local) + len(here) + 1)
                if checkpoint is not None and index + 1 < len(self.layers) and (stop.requested or checkpoint.due()):
                    checkpoint.write(lambda: self._state(index, base, sweep, walk, passes_before))
                    if stop.requested:
                        raise KeyboardInterrupt(f"stopped after layer {index}; the search's state is written")
        sweep.final = base
        return sweep

    def _planned_and_candidates(self, layer: nn.Module, base: list[torch.Tensor],
                                here: list[tuple[int, tuple[PrunableScope, int, torch.Tensor]]],
                                streams: list) -> list[torch.Tensor]:
        """``layer``'s output as in the plan, returned, and each of its candidates' (``here``: index and request)
        written to ``streams``: from the plan's input, or, for a scope that ends the layer, the plan's output plus
        the change of its consumer's output on the consumer's inputs taken in the plan's run."""
        consumers = {scope.name: self.model.get_submodule(scope.consumer.path)
                     for _, (scope, _, _) in here if scope.ends_layer}  # of the scopes that end the layer
        with ExitStack() as stack:  # their inputs in the plan's run
            inputs = {name: stack.enter_context(captured_inputs(consumer)) for name, consumer in consumers.items()}
            planned = self._layer(layer, base)
        consumed = {name: [consumers[name](a) for a in batches]
                    for name, batches in inputs.items()}  # the plan's outputs of those consumers
        for i, (scope, _, mask) in here:
            with self._changed(scope, mask):
                if scope.ends_layer:
                    consumer = consumers[scope.name]
                    streams[i] = [p + (consumer(a) - q).to(p.device)
                                  for p, a, q in zip(planned, inputs[scope.name], consumed[scope.name])]
                else:
                    streams[i] = self._layer(layer, base)
        return planned

    def _state(self, index: int, base, sweep: _Sweep, walk: LayerWalk | None, passes_before: int) -> SweepState:
        """The sweep after layer ``index``: what :meth:`_resume` needs to go on from layer ``index + 1``."""
        tensors = {"base": base, "walk": walk.hidden_states() if walk is not None else None}
        tensors.update({f"stream/{i}": unstash(stream) for i, stream in enumerate(sweep.streams) if stream is not None})
        record = {"changes": sweep.changes, "probes": [[*family, i] for family, i in sweep.probes.items()],
                  "probe_changes": sweep.probe_changes, "passes": self.layer_passes - passes_before}
        return SweepState(index, tensors, record)

    def _resume(self, sweep: _Sweep, walk: LayerWalk | None, saved: SweepState, passes_before: int):
        """Put an interrupted sweep's state in place; returns the plan's activations at layer ``saved.layer + 1``."""
        device = torch.device("cpu") if self.offloaded else execution_device(self.model)
        spill = SpillFile() if self.offloaded else None
        for group, batches in saved.tensors.items():
            if group.startswith("stream/"):
                sweep.streams[int(group.removeprefix("stream/"))] = stash([t.to(device) for t in batches], spill)
        if walk is not None:
            walk.restore_hidden_states([t.to(execution_device(self.model)) for t in saved.tensors["walk"]])
        sweep.changes[:] = saved.record["changes"]
        sweep.probe_changes[:] = saved.record.get("probe_changes", saved.record["changes"])
        sweep.probes.update({(scope, direction): i for scope, direction, i in saved.record["probes"]})
        self.layer_passes = passes_before + saved.record["passes"]
        return [t.to(device) for t in saved.tensors["base"]]

    @staticmethod
    def _keep_probes(sweep: _Sweep, here: list[int], local: list[Candidate], planned: list[torch.Tensor],
                     probe_batches: int) -> None:
        """Record the local change of this layer's candidates; carry on only the streams of their probes, on the
        probes' batches."""
        for i in here:
            per_batch = squared_changes(sweep.streams[i], planned)
            sweep.changes[i], sweep.probe_changes[i] = sum(per_batch), sum(per_batch[:probe_batches])
        changed = _changed_on_both([sweep.changes[i] for i in here], [sweep.probe_changes[i] for i in here])
        probes = choose_probes([local[i] for i in here], changed)
        kept = {here[j] for j in probes.values()}
        sweep.probes.update({family: here[j] for family, j in probes.items()})
        for i in here:
            sweep.streams[i] = sweep.streams[i][:probe_batches] if i in kept else None

    def _stream_share(self, local: list[Candidate] | None) -> float:
        """A carried stream's layer pass, in passes over all the batches (probes may run on fewer)."""
        return self.probe_batches / len(self.batches) if local is not None else 1.0

    def _work(self, requests, local: list[Candidate] | None, before: int | None = None) -> float:
        """Layer passes of one sweep, for the ETA (with local costs: counting one probe per family); with ``before``,
        those of its layers before that one (what a resumed sweep has already done)."""
        end = len(self.layers) if before is None else before
        if local is None:
            carried_from = [scope.layer for scope, _, _ in requests]
        else:
            first_layer = {}
            for (scope, _, _), candidate in zip(requests, local):
                first_layer[candidate.family] = scope.layer
            carried_from = list(first_layer.values())
        carried = sum(max(0, end - 1 - layer) for layer in carried_from) * self._stream_share(local)
        return sum(scope.layer < end for scope, _, _ in requests) + carried + end

    def _layer(self, layer: nn.Module, hidden: list[torch.Tensor]) -> list[torch.Tensor]:
        """``layer`` on every batch; the outputs go to CPU memory when the weights are offloaded."""
        outputs = super()._layer(layer, hidden)
        return [h.cpu() for h in outputs] if self.offloaded else outputs
