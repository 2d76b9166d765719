"""What a model adapter tells the rest of hf-prune: the prunable scopes of every decoder layer.

A *scope* is a set of interchangeable groups inside one decoder layer — the KV groups of its
attention, or the intermediate neurons of its MLP. A *group* owns a contiguous block of rows in the
Linear layers that produce it and a block of input columns in the Linear layer that consumes it.
Everything downstream (masks, importance, allocation, surgery, checkpoints) works on these
descriptions only, so no algorithm ever needs to know a module name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .weights import DecoderWeights

ScopeKind = Literal["attention", "mlp"]
ROWS, COLUMNS = 0, 1


@dataclass(frozen=True)
class LinearSlice:
    """A Linear layer that a scope cuts: along ``dim`` (ROWS = outputs, COLUMNS = inputs), ``block``
    consecutive rows/columns per group, group ``g`` owning ``[g * block, (g + 1) * block)``."""

    path: str
    dim: int
    block: int


@dataclass(frozen=True)
class PrunableScope:
    """The groups of one kind in one decoder layer, and the weight slices each of them owns.

    ``consumer`` is the slice whose *input* carries the groups' outputs (``o_proj`` for attention,
    ``down_proj`` for the MLP): zeroing its input block of a group is exactly removing the group,
    which is what masks and gates do, and where activation statistics are taken. ``sublayer`` is the
    module (``self_attn`` / ``mlp``) that surgery replaces by a stand-in when every group is removed.
    """

    layer: int
    kind: ScopeKind
    num_groups: int
    producers: tuple[LinearSlice, ...]
    consumer: LinearSlice
    unit: str  # what one group is called in reports: "kv_group", "neuron"
    sublayer: str = ""  # module path of the whole attention / MLP sublayer
    #: the consumer's output is the last thing the layer adds to the residual stream (Llama's MLP): changing this
    #: scope changes the layer's output by exactly the change of the consumer's output, so the search reads a
    #: candidate's change of the layer's output off the consumer alone instead of running the whole layer
    ends_layer: bool = False

    @property
    def name(self) -> str:
        return f"layers.{self.layer}.{self.kind}"

    @property
    def slices(self) -> tuple[LinearSlice, ...]:
        return (*self.producers, self.consumer)

    def sum_per_group(self, per_index: torch.Tensor, piece: LinearSlice) -> torch.Tensor:
        """Sum a value per row (ROWS) or column (COLUMNS) of ``piece`` over the block each group owns."""
        return per_index.reshape(self.num_groups, piece.block).sum(dim=1)

    def params_per_group(self, model: nn.Module) -> int:
        """Weights (and bias entries) that removing one group deletes."""
        total = 0
        for piece in self.producers:
            linear = model.get_submodule(piece.path)
            total += piece.block * (linear.in_features + (linear.bias is not None))
        consumer = model.get_submodule(self.consumer.path)
        total += self.consumer.block * consumer.out_features
        return total


class ModelAdapter(ABC):
    """Knows the module layout of one family of causal LMs. The only place where module names live."""

    #: human-readable family name, for messages
    family: str = ""

    @abstractmethod
    def scopes(self, model: nn.Module) -> list[PrunableScope]:
        """Every prunable scope of ``model``, attention before MLP within a layer, layers in order.

        A sublayer already removed whole (a :class:`~hf_prune.modeling.RemovedSublayer`) has no scope.
        """

    @abstractmethod
    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        """The decoder layers in order (layer-by-layer calibration runs them one at a time)."""

    @abstractmethod
    def logits(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits from the last decoder layer's output (final norm, then the LM head), so a
        search can run the model from any layer on cached inputs."""

    @abstractmethod
    def decoder_weights(self, model: nn.Module) -> DecoderWeights:
        """The model's weights in family-neutral terms (see :mod:`.weights`), for writers of other formats;
        a ConfigError where the model uses something those terms cannot describe (e.g. a dynamic rotary scaling)."""

    @abstractmethod
    def stock_config_values(self, model: nn.Module) -> dict[str, int]:
        """The config fields of the family's stock (unpruned) class that describe ``model``'s current shapes,
        when every layer has the same counts and no sublayer was removed; otherwise a ConfigError saying why."""


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def prunable_parameters(model: nn.Module, scopes: list[PrunableScope]) -> int:
    """Parameters the scopes' groups own: what a sparsity is a share of."""
    return sum(scope.num_groups * scope.params_per_group(model) for scope in scopes)
