"""The calibration rows walked through the decoder layers, one layer at a time, as the cut changes them.

Compensation refits a consumer (``o_proj`` / ``down_proj``) from the statistics of its input. Gathered on the dense
model before the cut (``--refit-on dense``), those are not the inputs the consumer sees once the layers before it are
cut, so every layer's error is left for the layers after it to carry. Walking the layers in order removes that, as
SlimGPT (arXiv 2412.18110), Týr-the-Pruner (arXiv 2503.09657) and GPTQ / SparseGPT's layer loop do: the calibration
rows' hidden states enter layer 0; for each layer the statistics of its consumers' inputs are gathered on the
activations the already-cut prefix produces, the consumers are refit to what their dense weights compute from those
same inputs and cut, and the cut layer produces the next layer's inputs.

``asymmetric`` (``--refit-on asymmetric``) also walks the dense model's own hidden states, through a dense copy of
each layer taken before it is cut, and pairs every consumer input x of the pruned stream with the dense stream's y
on the same tokens: the refit then reproduces the dense model's output W y rather than W x, so each layer also
undoes the drift its prefix left (the asymmetric calibration of GPTAQ, arXiv 2504.02692, applied to structured
pruning). It costs a second stream and one dense layer copy.

What it holds: this process's share of the calibration rows' hidden states (rows × seq_len × hidden, on the
execution device; twice with ``asymmetric``), and the statistics of one layer's consumers at a time (least squares: a
d×d float64 matrix per consumer, two with ``asymmetric``) — never every layer's. Statistics are summed over the
processes of an ``accelerate launch`` run, so every process refits the same weights.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from accelerate.hooks import remove_hook_from_module
from torch import nn

from ..adapters import PrunableScope
from ..calibration.statistics import CalibrationStatistics, ChannelStatistics, first_layer_inputs, record_channels
from ..runtime.distributed import shard_for_this_process


class LayerWalk:
    """The hidden states of this process's calibration rows at the input of the next decoder layer (and, with
    ``asymmetric``, the dense model's hidden states there too)."""

    def __init__(self, model: nn.Module, layers: nn.ModuleList, rows: torch.Tensor, batch_size: int = 1,
                 asymmetric: bool = False) -> None:
        self.model = model
        mine = shard_for_this_process(rows)
        captured = first_layer_inputs(model, layers, list(mine.split(batch_size)))
        self._hidden = [args[0] for args, _ in captured]
        self._extras = [(args[1:], kwargs) for args, kwargs in captured]  # positions, masks: the same for every layer
        self._dense_hidden = list(self._hidden) if asymmetric else None
        self._dense_layer: nn.Module | None = None
        self._names = {id(module): name for name, module in model.named_modules()}
        self._mine = int(mine.numel())
        self.tokens = self._mine  # this process's, until the first statistics sum every process's
        self.layer_passes = 0

    @property
    def asymmetric(self) -> bool:
        return self._dense_hidden is not None

    def hidden_states(self) -> list[torch.Tensor]:
        """The current inputs, per batch: with :meth:`restore_hidden_states`, how an interrupted walk is resumed."""
        if self.asymmetric:
            raise NotImplementedError("an asymmetric walk also holds a dense stream and a dense layer copy")
        return self._hidden

    def restore_hidden_states(self, hidden: list[torch.Tensor]) -> None:
        """Continue from inputs :meth:`hidden_states` returned (the walk must have been built on the same rows)."""
        if len(hidden) != len(self._hidden):
            raise ValueError(f"{len(hidden)} batches of hidden states for a walk of {len(self._hidden)}")
        self._hidden = list(hidden)

    def enter(self, layer: nn.Module) -> None:
        """Call before cutting anything of ``layer`` (resident): an asymmetric walk keeps a dense copy of it."""
        if self.asymmetric:
            self._dense_layer = None
            dense = copy.deepcopy(layer)
            remove_hook_from_module(dense, recurse=True)  # an offloaded layer's copy holds its loaded weights
            self._dense_layer = dense

    def run(self, layer: nn.Module, hidden: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """``layer`` (as it is now) on every batch of the current inputs (or of ``hidden``)."""
        outputs = []
        for index, (args, kwargs) in enumerate(self._extras):
            output = layer((self._hidden if hidden is None else hidden)[index], *args, **kwargs)
            outputs.append(output[0] if isinstance(output, tuple) else output)
        self.layer_passes += 1
        return outputs

    def statistics(self, layer: nn.Module, scopes: Sequence[PrunableScope], gram: bool) -> CalibrationStatistics:
        """The input statistics of the ``scopes``' consumers (all in ``layer``) on the current inputs, summed over
        processes; ``gram``: with their second moments. Asymmetric: paired with the dense copy's inputs."""
        stats = CalibrationStatistics()
        if self.asymmetric:
            self._paired_statistics(layer, scopes, gram, stats)
        else:
            handles = record_channels(self.model, scopes, stats, gram)
            try:
                self.run(layer)
            finally:
                for handle in handles:
                    handle.remove()
        stats.tokens = self._mine
        stats.reduce_across_processes()
        self.tokens = stats.tokens  # every process's
        return stats

    def advance(self, layer: nn.Module) -> None:
        """Make ``layer``'s outputs (as it is now, i.e. cut) the inputs of the next layer; the dense stream goes on
        through the dense copy."""
        self._hidden = self.run(layer)
        if self.asymmetric:
            self._dense_hidden = self.run(self._dense_layer, self._dense_hidden)
            self._dense_layer = None

    def _paired_statistics(self, layer: nn.Module, scopes: Sequence[PrunableScope], gram: bool,
                           stats: CalibrationStatistics) -> None:
        """Per batch: the dense copy on the dense stream records each consumer's input, then the layer on the pruned
        stream adds its own input paired with it."""
        if self._dense_layer is None:
            raise RuntimeError("LayerWalk.enter(layer) must come before an asymmetric walk's statistics")
        prefix = self._names[id(layer)] + "."
        targets: dict[str, torch.Tensor] = {}
        handles = []
        for scope in scopes:
            relative = scope.consumer.path.removeprefix(prefix)
            dense_consumer = self._dense_layer.get_submodule(relative)
            channels = stats.channels.setdefault(
                scope.name, ChannelStatistics.zeros(dense_consumer.in_features, gram, target=True))
            handles.append(dense_consumer.register_forward_pre_hook(
                lambda module, args, name=scope.name: targets.__setitem__(name, args[0])))
            handles.append(self.model.get_submodule(scope.consumer.path).register_forward_pre_hook(
                lambda module, args, name=scope.name, channels=channels: channels.update(args[0], targets[name])))
        try:
            for index, (args, kwargs) in enumerate(self._extras):
                self._dense_layer(self._dense_hidden[index], *args, **kwargs)
                layer(self._hidden[index], *args, **kwargs)
                targets.clear()
        finally:
            for handle in handles:
                handle.remove()
        self.layer_passes += 2
