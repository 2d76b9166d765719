"""eval/baselines/slicegpt.py on tiny random models: rotation invariance (ε = 0 equals the dense model, which checks
the norm fusion and every rotation), PCA slicing consistency, the parameter budget with shortcut matrices, and that
the input model is left unchanged."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from hf_prune.adapters import get_adapter, prunable_parameters
from hf_prune.testing import make_tiny_model

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "eval"))
from baselines import slicegpt

FAMILIES = ("llama", "mistral", "qwen2", "qwen3")


def tiny(family: str, dtype: torch.dtype = torch.float64):
    """A tiny model with non-trivial norm weights (the fusion must fold them) in ``dtype``."""
    model = make_tiny_model(family, seed=1)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(5)
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(torch.rand(param.shape, generator=generator) + 0.5)
    return model.to(dtype)


def calibration(rows: int = 6, length: int = 16) -> torch.Tensor:
    return torch.randint(0, 256, (rows, length), generator=torch.Generator().manual_seed(3))


def ids() -> torch.Tensor:
    return torch.randint(0, 256, (3, 12), generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rotation_only_equals_dense(family, dtype):
    model = tiny(family, dtype)
    with torch.no_grad():
        dense = model(input_ids=ids()).logits
    rotated, _ = slicegpt.rotate_and_slice(model, calibration(), model.config.hidden_size, batch_size=4)
    with torch.no_grad():
        logits = rotated(input_ids=ids()).logits
    # transformers' RMSNorm (and RMSN) normalise in float32 even for a float64 model: float32 rounding either way
    atol = 1e-5 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(logits, dense, atol=atol * dense.abs().max().item(), rtol=0)
    assert all(isinstance(layer, slicegpt.SlicedDecoderLayer) for layer in get_adapter(rotated).decoder_layers(rotated))


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_fusion_alone_equals_dense(family):
    model = tiny(family)
    fused = tiny(family)
    slicegpt.fuse_norms(fused)
    with torch.no_grad():
        torch.testing.assert_close(fused(input_ids=ids()).logits, model(input_ids=ids()).logits)
    assert fused.lm_head.weight is not fused.model.embed_tokens.weight


def test_pca_sorted_and_orthonormal():
    x = torch.randn(2, 50, 8, dtype=torch.float64) * torch.arange(1, 9, dtype=torch.float64)
    values, vectors = slicegpt.pca([x[0], x[1]])
    assert torch.all(values[:-1] >= values[1:])
    torch.testing.assert_close(vectors.T @ vectors, torch.eye(8, dtype=torch.float64))
    flat = x.reshape(-1, 8)
    torch.testing.assert_close(vectors.T @ (flat.T @ flat) @ vectors, torch.diag(values))


def test_slicing_to_the_signal_rank_is_lossless():
    """A residual stream confined to k directions (embeddings of rank k, every writer projected into the same
    subspace) loses nothing when sliced to k: PCA finds the subspace and the shortcuts carry it."""
    model = tiny("llama")
    k = 40
    with torch.no_grad():
        basis = torch.linalg.qr(torch.randn(64, k, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))[0]
        project = basis @ basis.T
        model.model.embed_tokens.weight.copy_(model.model.embed_tokens.weight @ project)
        for layer in model.model.layers:
            for linear in (layer.self_attn.o_proj, layer.mlp.down_proj):
                linear.weight.copy_(project @ linear.weight)
                linear.bias.copy_(project @ linear.bias)
        dense = model(input_ids=ids()).logits
    sliced, info = slicegpt.rotate_and_slice(model, calibration(), k, batch_size=3, slice_head=True)
    assert sliced.model.embed_tokens.weight.shape == (256, k)
    assert sliced.lm_head.weight.shape == (256, k)
    assert min(info["kept_variance"]) > 1 - 1e-9
    with torch.no_grad():
        torch.testing.assert_close(sliced(input_ids=ids()).logits, dense, atol=1e-5 * dense.abs().max().item(), rtol=0)


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("sparsity", [0.2, 0.35])
def test_budget_and_shapes(family, sparsity):
    model = tiny(family, torch.float32)
    before = {name: p.clone() for name, p in model.state_dict().items()}
    sliced, achieved, details = slicegpt.slicegpt_prune(model, calibration(), sparsity, batch_size=4)

    # the input model is unchanged (weights, tying, modules)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not any(isinstance(layer, slicegpt.SlicedDecoderLayer) for layer in model.model.layers)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == bool(model.config.tie_word_embeddings)

    # the budget: shortcuts counted as kept prunable parameters, within 1 point of the request
    assert abs(achieved - sparsity) <= 0.01
    dense = prunable_parameters(model, get_adapter(model).scopes(model))
    linear = prunable_parameters(sliced, get_adapter(sliced).scopes(sliced))
    d, hidden = details["dimension"], model.config.hidden_size
    layers = model.config.num_hidden_layers
    assert details["shortcut_params"] == (2 * layers - 1) * d * d + d * hidden  # the head is not sliced
    assert achieved == pytest.approx((dense - linear - details["shortcut_params"]) / dense)
    assert details["epsilon"] == pytest.approx(1 - d / hidden)
    assert sliced.model.embed_tokens.weight.shape == (256, d)
    assert sliced.lm_head.weight.shape == (256, hidden)
    last = sliced.model.layers[-1]
    assert last.mlp.down_proj.out_features == hidden and last.self_attn.o_proj.out_features == d
    assert details["embedding_params"] == (256 * hidden, 256 * d)

    # runs with batch > 1, finite, close to the dense model in distribution on a random model's scale
    with torch.no_grad():
        logits = sliced(input_ids=ids()).logits
    assert logits.shape == (3, 12, 256) and torch.isfinite(logits).all()


def test_more_sparsity_slices_more():
    model = tiny("llama")
    dims = [slicegpt.solve_dimension(model, s)[0] for s in (0.0, 0.2, 0.35, 0.5)]
    assert dims == sorted(dims, reverse=True) and dims[0] < model.config.hidden_size  # shortcuts cost at ε = 0


def test_dimension_rounds_to_eight_when_close_enough():
    """SmolLM2-like proportions in miniature: a wide model where a multiple of 8 meets the budget within 1%."""
    model = make_tiny_model("llama", hidden_size=256, intermediate_size=512, num_attention_heads=8,
                            num_key_value_heads=4, num_hidden_layers=2, attention_bias=False, mlp_bias=False)
    for sparsity in (0.2, 0.35):
        d, achieved, interval = slicegpt.solve_dimension(model, sparsity)
        assert interval == 8 and d % 8 == 0 and abs(achieved - sparsity) <= 0.01
