"""Adapter for Llama-layout decoders: Llama, Mistral, Qwen2 and Qwen3 share these module names.

Each decoder layer ``model.layers.i`` has ``self_attn.{q,k,v,o}_proj`` and ``mlp.{gate,up,down}_proj``.
Query heads are stored head after head, and query head ``h`` reads KV head ``h // n_rep``
(``repeat_kv``), so the query heads of KV group ``g`` are one contiguous block of ``n_rep * head_dim``
rows of ``q_proj``. Removing whole KV groups keeps ``n_rep`` unchanged, which is why no attribute of the
attention module needs rewriting after surgery (transformers 5.x reshapes with ``-1`` heads). Qwen2's
q/k/v biases are cut with their rows by the surgery; Qwen3's ``q_norm``/``k_norm`` act on ``head_dim``
and need no change.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..modeling import RemovedSublayer
from .base import COLUMNS, ROWS, LinearSlice, ModelAdapter, PrunableScope
from .weights import AttentionWeights, DecoderWeights, LayerWeights, MLPWeights, RemovedWeights


class LlamaLayoutAdapter(ModelAdapter):
    family = "llama-layout"

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        return model.model.layers

    def logits(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return model.lm_head(model.model.norm(hidden))

    def scopes(self, model: nn.Module) -> list[PrunableScope]:
        scopes: list[PrunableScope] = []
        for index, layer in enumerate(self.decoder_layers(model)):
            prefix = f"model.layers.{index}"
            if not isinstance(layer.self_attn, RemovedSublayer):
                scopes.append(self._attention_scope(index, prefix, layer.self_attn))
            if not isinstance(layer.mlp, RemovedSublayer):
                scopes.append(self._mlp_scope(index, prefix, layer.mlp))
        return scopes

    def decoder_weights(self, model: nn.Module) -> DecoderWeights:
        config, decoder = model.config, model.model
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        if config.hidden_act != "silu":
            raise ConfigError(f"hidden_act {config.hidden_act!r}: only silu MLPs can be written in other formats")
        window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
        return DecoderWeights(
            embedding=decoder.embed_tokens.weight,
            layers=[self._layer_weights(layer, head_dim) for layer in decoder.layers],
            final_norm=decoder.norm.weight,
            lm_head=None if model.lm_head.weight is decoder.embed_tokens.weight else model.lm_head.weight,
            head_dim=head_dim,
            queries_per_kv_head=config.num_attention_heads // config.num_key_value_heads,
            rms_norm_eps=config.rms_norm_eps,
            rope_theta=float(config.rope_parameters["rope_theta"]),
            context_length=config.max_position_embeddings,
            rope_factors=self._rope_factors(decoder.rotary_emb, config),
            sliding_window=window if window and window < config.max_position_embeddings else None,
        )

    @staticmethod
    def _layer_weights(layer: nn.Module, head_dim: int) -> LayerWeights:
        attention, mlp = layer.self_attn, layer.mlp
        if isinstance(attention, RemovedSublayer):
            attention_weights = RemovedWeights(attention.bias)
        else:
            q_norm, k_norm = getattr(attention, "q_norm", None), getattr(attention, "k_norm", None)  # Qwen3
            attention_weights = AttentionWeights(
                q=attention.q_proj, k=attention.k_proj, v=attention.v_proj, o=attention.o_proj,
                num_heads=attention.q_proj.out_features // head_dim,
                num_kv_heads=attention.k_proj.out_features // head_dim,
                q_norm=None if q_norm is None else q_norm.weight, k_norm=None if k_norm is None else k_norm.weight)
        mlp_weights = (RemovedWeights(mlp.bias) if isinstance(mlp, RemovedSublayer)
                       else MLPWeights(gate=mlp.gate_proj, up=mlp.up_proj, down=mlp.down_proj))
        return LayerWeights(attention_norm=layer.input_layernorm.weight, attention=attention_weights,
                            mlp_norm=layer.post_attention_layernorm.weight, mlp=mlp_weights)

    @staticmethod
    def _rope_factors(rotary: nn.Module, config) -> torch.Tensor | None:
        """Per-frequency divisors of the base rotary frequencies, or None for plain RoPE.

        Scalings that are a fixed rescaling of each frequency (``llama3``, ``linear``) are exactly such
        divisors; ones that change with the sequence length (``dynamic``) or scale the attention
        (``yarn``, ``longrope``) are not, and are refused.
        """
        if rotary.rope_type == "default":
            return None
        base, _ = rotary.compute_default_rope_parameters(config)
        if rotary.rope_type not in ("llama3", "linear") or rotary.attention_scaling != 1.0:
            raise ConfigError(f"rope_type {rotary.rope_type!r} cannot be written as fixed RoPE frequency factors; "
                              "supported: default, linear, llama3")
        return (base / rotary.original_inv_freq.float().cpu()).contiguous()

    def stock_config_values(self, model: nn.Module) -> dict[str, int]:
        layers = self.decoder_layers(model)
        if any(isinstance(layer.self_attn, RemovedSublayer) or isinstance(layer.mlp, RemovedSublayer)
               for layer in layers):
            raise ConfigError("--uniform-shapes: a whole sublayer was removed, which no stock config expresses")
        attention = layers[0].self_attn
        head_dim = attention.head_dim
        kv_heads = {layer.self_attn.k_proj.out_features // head_dim for layer in layers}
        widths = {layer.mlp.down_proj.in_features for layer in layers}
        if len(kv_heads) > 1 or len(widths) > 1:
            raise ConfigError(f"--uniform-shapes needs equal counts in every layer, got KV heads {sorted(kv_heads)} "
                              f"and MLP widths {sorted(widths)}: use --target uniform")
        kv = kv_heads.pop()
        return {"num_key_value_heads": kv, "num_attention_heads": kv * attention.num_key_value_groups,
                "intermediate_size": widths.pop(), "head_dim": head_dim}

    @staticmethod
    def _attention_scope(index: int, prefix: str, attention: nn.Module) -> PrunableScope:
        head_dim = attention.head_dim
        queries_per_group = attention.num_key_value_groups
        query_block = queries_per_group * head_dim
        attn = f"{prefix}.self_attn"
        return PrunableScope(
            layer=index,
            kind="attention",
            num_groups=attention.k_proj.out_features // head_dim,
            producers=(
                LinearSlice(f"{attn}.q_proj", ROWS, query_block),
                LinearSlice(f"{attn}.k_proj", ROWS, head_dim),
                LinearSlice(f"{attn}.v_proj", ROWS, head_dim),
            ),
            consumer=LinearSlice(f"{attn}.o_proj", COLUMNS, query_block),
            unit="kv_group",
            sublayer=attn,
        )

    @staticmethod
    def _mlp_scope(index: int, prefix: str, mlp: nn.Module) -> PrunableScope:
        path = f"{prefix}.mlp"
        return PrunableScope(
            layer=index,
            kind="mlp",
            num_groups=mlp.down_proj.in_features,
            producers=(LinearSlice(f"{path}.gate_proj", ROWS, 1), LinearSlice(f"{path}.up_proj", ROWS, 1)),
            consumer=LinearSlice(f"{path}.down_proj", COLUMNS, 1),
            unit="neuron",
            sublayer=path,
            ends_layer=True,  # decoder layer: h + attn(norm(h)), then + mlp(norm(.)) last
        )
