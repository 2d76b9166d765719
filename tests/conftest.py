"""Tiny random models of every supported family, built from configs as transformers' own tests do.

Shapes are chosen so that every code path is exercised: GQA with 4 KV groups of 2 query heads,
head_dim different from hidden/heads (Qwen3), q/k/v biases (Qwen2), sliding-window attention
(Mistral), tied embeddings (Qwen3).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

import hf_prune  # noqa: F401  (registers the pruned classes)

COMMON = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=8,
    num_key_value_heads=4,
    max_position_embeddings=256,
)

FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM, {"attention_bias": True, "mlp_bias": True}),
    "mistral": (MistralConfig, MistralForCausalLM, {"sliding_window": 8}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, {"head_dim": 16, "tie_word_embeddings": True}),
}


def make_model(family: str, attn_implementation: str = "eager", seed: int = 0, **overrides) -> torch.nn.Module:
    """A tiny random causal LM of ``family`` in float32, eval mode.

    Weights are re-drawn with a larger std than the default init so that pruning visibly changes
    the logits: a test comparing two pruned models must not pass merely because every logit is ~0.
    """
    config_cls, model_cls, extra = FAMILIES[family]
    config = config_cls(**{**COMMON, **extra, **overrides})
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = model_cls(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.normal_(0.0, 0.2)
    return model.eval()


@pytest.fixture(params=sorted(FAMILIES))
def family(request) -> str:
    return request.param


@pytest.fixture
def input_ids() -> torch.Tensor:
    return torch.randint(0, COMMON["vocab_size"], (2, 24), generator=torch.Generator().manual_seed(1))
