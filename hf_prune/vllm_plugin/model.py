"""vLLM model classes of hf-prune checkpoints: every decoder layer built at its own pruned shape.

vLLM's stock classes read one head count and one MLP width from the config for all layers, and
Nemotron-NAS / DeciLM (the one stock class with per-layer blocks) fixes the number of query heads. So
this plugin keeps vLLM's ``LlamaForCausalLM`` / ``LlamaModel`` (embedding, layer loop, final norm,
LM head, weight loading with the stacked ``qkv_proj`` / ``gate_up_proj`` mapping) and swaps only the
decoder layer: :class:`PrunedDecoderLayer` reuses ``LlamaDecoderLayer.forward`` and builds its two
sublayers from vLLM's own modules at the shapes :mod:`.specs` reads from the config:

* attention: the module the family's entry names (``Family.vllm_attention``): ``LlamaAttention`` (Llama, and
  Qwen2, which is Llama with q/k/v biases: vLLM's ``Qwen2Attention`` derives head_dim from hidden_size /
  num_heads, wrong once heads are cut), ``MistralAttention`` (its sliding window reaches the attention through
  vLLM's model-level ``cache_config.sliding_window``) or ``Qwen3Attention`` (q/k norm); each gets a per-layer copy
  of the config with this layer's head counts and an explicit head_dim;
* MLP: ``MistralMLP``, the stock MLP with separate gate/up and down bias flags, so a ``down_proj`` bias
  added by FLAP compensation loads without inventing gate/up biases;
* ``o_proj`` bias (compensation) where the stock attention has no flag for it (Qwen3): a biased
  ``RowParallelLinear`` in its place;
* a removed sublayer: :class:`RemovedAttention` / :class:`RemovedMLP`, which return the stored output
  bias (or zeros). No vLLM ``Attention`` is created for a removed attention, so the engine allocates no
  KV cache for that layer (the KV cache spec is collected from the ``Attention`` modules that exist),
  as with DeciLM's no-op blocks.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import RowParallelLinear
from vllm.model_executor.models.llama import LlamaAttention, LlamaDecoderLayer, LlamaForCausalLM
from vllm.model_executor.models.mistral import MistralAttention, MistralMLP
from vllm.model_executor.models.qwen3 import Qwen3Attention
from vllm.model_executor.models.utils import extract_layer_index
from vllm.v1.attention.backend import AttentionType

from . import ARCHITECTURES
from .specs import AttentionSpec, LayerSpec, MLPSpec, RemovedSpec, family, layer_spec


class _Removed(nn.Module):
    """What a sublayer without any group adds to the residual stream: its output bias, or nothing.

    The bias is a parameter named ``bias`` so the checkpoint's ``model.layers.N.mlp.bias`` /
    ``...self_attn.bias`` loads through vLLM's ordinary weight loader.
    """

    def __init__(self, hidden_size: int, has_bias: bool):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(hidden_size), requires_grad=False) if has_bias else None

    def contribution(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return torch.zeros_like(hidden_states)
        return self.bias.to(hidden_states.dtype).expand_as(hidden_states).clone()


class RemovedAttention(_Removed):
    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.contribution(hidden_states)


class RemovedMLP(_Removed):
    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.contribution(hidden_states)


def _layer_config(config, spec: AttentionSpec):
    """A shallow copy of the model config with this layer's head counts (vLLM's attention classes read
    head_dim, rope and layer_types from the config they are given)."""
    layer_config = copy.copy(config)
    layer_config.num_attention_heads = spec.num_heads
    layer_config.num_key_value_heads = spec.num_kv_heads
    layer_config.head_dim = spec.head_dim
    return layer_config


def _attention(config, spec: LayerSpec, vllm_config: VllmConfig, prefix: str) -> nn.Module:
    attn = spec.attention
    if isinstance(attn, RemovedSpec):
        return RemovedAttention(config.hidden_size, attn.has_bias)
    layer_config = _layer_config(config, attn)
    common = dict(hidden_size=config.hidden_size, num_heads=attn.num_heads, num_kv_heads=attn.num_kv_heads,
                  cache_config=vllm_config.cache_config, quant_config=vllm_config.quant_config,
                  prefix=f"{prefix}.self_attn", attn_type=AttentionType.DECODER)
    kind = family(config).vllm_attention
    if kind == "qwen3":
        module = Qwen3Attention(rope_parameters=config.rope_parameters, max_position=config.max_position_embeddings,
                                head_dim=attn.head_dim, rms_norm_eps=config.rms_norm_eps, qkv_bias=attn.qkv_bias,
                                per_layer_sliding_window=spec.sliding_window, **common)
        if attn.o_bias:  # Qwen3Attention has no o_proj bias flag
            module.o_proj = RowParallelLinear(attn.num_heads * attn.head_dim, config.hidden_size, bias=True,
                                              quant_config=vllm_config.quant_config,
                                              prefix=f"{prefix}.self_attn.o_proj")
        return module
    attention_cls = MistralAttention if kind == "mistral" else LlamaAttention
    return attention_cls(config=layer_config, max_position_embeddings=config.max_position_embeddings,
                         bias=attn.qkv_bias, bias_o_proj=attn.o_bias, **common)


def _mlp(config, spec: LayerSpec, vllm_config: VllmConfig, prefix: str) -> nn.Module:
    mlp = spec.mlp
    if isinstance(mlp, RemovedSpec):
        return RemovedMLP(config.hidden_size, mlp.has_bias)
    assert isinstance(mlp, MLPSpec)
    return MistralMLP(hidden_size=config.hidden_size, intermediate_size=mlp.intermediate_size,
                      hidden_act=config.hidden_act, quant_config=vllm_config.quant_config, bias=mlp.down_bias,
                      gate_up_proj_bias=mlp.gate_up_bias, prefix=f"{prefix}.mlp")


class PrunedDecoderLayer(LlamaDecoderLayer):
    """A pre-norm decoder layer (``LlamaDecoderLayer.forward``) whose sublayers have this layer's shapes."""

    def __init__(self, vllm_config: VllmConfig, prefix: str = "", config=None) -> None:
        nn.Module.__init__(self)
        config = config or vllm_config.model_config.hf_config
        spec = layer_spec(config, extract_layer_index(prefix))
        self.hidden_size = config.hidden_size
        self.self_attn = _attention(config, spec, vllm_config, prefix)
        self.mlp = _mlp(config, spec, vllm_config, prefix)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)


def _check_sliding_windows(config) -> None:
    """vLLM's ``Attention`` falls back to the model-level window when a layer passes none, so a model whose
    layers mix sliding and full attention cannot be expressed (vLLM's own Qwen2 refuses it likewise)."""
    if getattr(config, "sliding_window", None) and len(set(getattr(config, "layer_types", None) or [])) > 1:
        raise NotImplementedError("hf-prune's vLLM plugin cannot serve a model that mixes sliding-window and "
                                  "full-attention layers")


class PrunedForCausalLM(LlamaForCausalLM):
    """vLLM's Llama causal LM with :class:`PrunedDecoderLayer` layers; serves all four pruned families."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        _check_sliding_windows(vllm_config.model_config.hf_config)
        super().__init__(vllm_config=vllm_config, prefix=prefix, layer_type=PrunedDecoderLayer)


def __getattr__(name: str) -> type:
    """One class per architecture string hf-prune writes into config.json (``PrunedLlamaForCausalLM``, ...), as
    vLLM looks them up by name: :class:`PrunedForCausalLM` under that name, made on first use."""
    if name not in ARCHITECTURES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = type(name, (PrunedForCausalLM,), {"__module__": __name__, "__qualname__": name})
    return globals()[name]
