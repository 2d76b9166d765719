"""A family-neutral view of a decoder's weights, for writers of other file formats (GGUF).

An exporter must not know that Llama calls its query projection ``self_attn.q_proj`` or that Qwen3
normalises queries per head: the adapter hands it this description, and the exporter maps each part to
its own format's names. Every tensor is the model's own (no copies); removed sublayers are described by
what they add to the residual stream (their bias, or nothing).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class AttentionWeights:
    """One kept attention sublayer. Queries are stored head after head (``num_heads`` blocks of
    ``head_dim`` rows), query head ``h`` reads KV head ``h // (num_heads // num_kv_heads)``, and rotary
    embeddings rotate the first half of a head against its second half (transformers' ``rotate_half``)."""

    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    num_heads: int
    num_kv_heads: int
    q_norm: torch.Tensor | None = None  # RMSNorm weight over head_dim, applied per head before rotary
    k_norm: torch.Tensor | None = None


@dataclass(frozen=True)
class MLPWeights:
    """One kept gated MLP: ``down(act(gate(x)) * up(x))``."""

    gate: nn.Linear
    up: nn.Linear
    down: nn.Linear
    activation: str = "silu"


@dataclass(frozen=True)
class RemovedWeights:
    """A sublayer whose every group was removed: it adds ``bias`` to the residual stream (None: nothing)."""

    bias: torch.Tensor | None


@dataclass(frozen=True)
class LayerWeights:
    """One pre-norm decoder layer: ``x + attn(norm1(x))``, then ``h + mlp(norm2(h))``."""

    attention_norm: torch.Tensor
    attention: AttentionWeights | RemovedWeights
    mlp_norm: torch.Tensor
    mlp: MLPWeights | RemovedWeights


@dataclass(frozen=True)
class DecoderWeights:
    """Everything a runtime needs to rebuild a pruned decoder-only model.

    ``rope_factors`` divide the base rotary frequencies (Llama-3 style scaling); None when the model
    uses the plain ``rope_theta`` frequencies. ``lm_head`` is None when it is tied to ``embedding``.
    ``sliding_window`` is the attention window where the model has one shorter than its context.
    """

    embedding: torch.Tensor
    layers: list[LayerWeights]
    final_norm: torch.Tensor
    lm_head: torch.Tensor | None
    head_dim: int
    queries_per_kv_head: int
    rms_norm_eps: float
    rope_theta: float
    context_length: int
    rope_factors: torch.Tensor | None = None
    sliding_window: int | None = None

    @property
    def hidden_size(self) -> int:
        return self.embedding.shape[1]

    @property
    def vocab_size(self) -> int:
        return self.embedding.shape[0]
