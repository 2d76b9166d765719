"""llama.cpp runs what ``hf-prune export-gguf`` writes: same logits and greedy tokens as PyTorch.

Needs ``llama-cpp-python`` (it compiles llama.cpp; see README, "Serving"), so it is marked ``engines``
and runs in CI's engine step: ``python -m pytest -m engines tests``. Comparisons are made on token ids,
so a tokenizer difference cannot hide in them; tokenization is compared on its own. llama.cpp runs with
an f32 KV cache (``type_k=type_v=0``): its default f16 cache alone moves logits by ~2e-3.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hf_prune.adapters import get_adapter
from hf_prune.cut.relabel import as_pruned_model
from hf_prune.cut.surgery import apply_plan
from hf_prune.data import DEFAULT_MODEL_DIR
from hf_prune.io.checkpoint import load_model
from hf_prune.io.export.gguf import with_stored_weights, write_gguf
from hf_prune.testing import make_tiny_model, random_plan

from .test_gguf import pruned_tiny, tokenizer_dir  # noqa: F401  (a fixture)

try:
    import llama_cpp
except ImportError:  # the default run deselects these tests; CI's engine step installs it first
    llama_cpp = None

pytestmark = [pytest.mark.engines, pytest.mark.skipif(llama_cpp is None, reason="pip install llama-cpp-python")]

F32_TOLERANCE = 1e-3
GGML_F32 = 0
PROMPT = list(range(5, 37))


def llama_cpp_logits(path, ids: list[int], n_ctx: int = 128) -> np.ndarray:
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=2,
                          type_k=GGML_F32, type_v=GGML_F32)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()


def llama_cpp_greedy(path, ids: list[int], new_tokens: int = 20) -> list[int]:
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, verbose=False, n_threads=2, type_k=GGML_F32, type_v=GGML_F32)
    try:
        generated = []
        for token in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0):
            generated.append(token)
            if len(generated) == new_tokens:
                return generated
        return generated
    finally:
        llm.close()


def torch_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def torch_greedy(model, ids: list[int], new_tokens: int = 20) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(ids):].tolist()


def assert_same_model(model, path, ids=PROMPT):
    difference = np.abs(llama_cpp_logits(path, ids) - torch_logits(model, ids)).max()
    print(f"{model.config.model_type}: max |logit difference| llama.cpp vs PyTorch {difference:.1e}")  # shown by -s
    assert difference <= F32_TOLERANCE, difference
    assert llama_cpp_greedy(path, ids[:8]) == torch_greedy(model, ids[:8])


def test_every_family_with_removed_sublayers_and_biases_runs_exactly(family, tokenizer_dir, tmp_path):
    """Biases wherever the written architecture holds them (``openelm``, the one for per-head Q/K norms, holds
    none); no sliding window (exact only within it: the next test)."""
    probe = make_tiny_model(family)
    biases = get_adapter(probe).decoder_weights(probe).layers[0].attention.q_norm is None
    overrides = {"sliding_window": None} if getattr(probe.config, "sliding_window", None) else {}
    model = pruned_tiny(family, biases=biases, **overrides)
    summary = write_gguf(model, tmp_path / "m.gguf", tokenizer_dir=tokenizer_dir)
    assert_same_model(model, summary.path)


def test_mistral_is_exact_within_its_sliding_window(tokenizer_dir, tmp_path):
    model = pruned_tiny("mistral")  # sliding_window 8, written as the context length
    summary = write_gguf(model, tmp_path / "m.gguf", tokenizer_dir=tokenizer_dir)
    ids = PROMPT[:8]
    assert np.abs(llama_cpp_logits(summary.path, ids, n_ctx=8) - torch_logits(model, ids)).max() <= F32_TOLERANCE


def test_llama3_rope_scaling_runs_exactly_beyond_the_original_context(tokenizer_dir, tmp_path):
    rope = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
    model = pruned_tiny("llama", rope_parameters=rope)
    summary = write_gguf(model, tmp_path / "m.gguf", tokenizer_dir=tokenizer_dir)
    assert_same_model(model, summary.path, ids=list(range(5, 69)))  # 64 tokens, 4x the original context


@pytest.fixture(scope="module")
def default_pruned():
    """The embedded default (a trained 4-layer Llama) cut to different shapes in every layer."""
    model, tokenizer = load_model(str(DEFAULT_MODEL_DIR), dtype="float32")
    scopes = get_adapter(model).scopes(model)
    apply_plan(model, scopes, random_plan(model, seed=5))
    return as_pruned_model(model, get_adapter(model).scopes(model), {"note": "test"}), tokenizer


@pytest.fixture(scope="module")
def heldout_ids(default_pruned):
    _, tokenizer = default_pruned
    text = json.loads((DEFAULT_MODEL_DIR.parent / "data" / "heldout.jsonl").read_text().splitlines()[0])["text"]
    return tokenizer.encode(text)[:64]


def test_the_embedded_default_pruned_runs_exactly_and_tokenizes_alike(default_pruned, heldout_ids, tmp_path):
    model, tokenizer = default_pruned
    summary = write_gguf(model, tmp_path / "d.gguf", tokenizer_dir=DEFAULT_MODEL_DIR)
    assert len({(s.heads, s.ffn) for s in summary.layers}) > 1  # really per-layer shapes
    assert_same_model(model, summary.path, heldout_ids)
    llm = llama_cpp.Llama(model_path=summary.path, n_ctx=64, verbose=False, vocab_only=True)
    try:
        for line in (DEFAULT_MODEL_DIR.parent / "data" / "heldout.jsonl").read_text().splitlines()[:10]:
            text = json.loads(line)["text"]
            assert llm.tokenize(text.encode(), add_bos=False) == tokenizer.encode(text, add_special_tokens=False)
    finally:
        llm.close()


@pytest.mark.parametrize("dtype,min_agreement,max_kl", [("q8_0", 0.98, 1e-3), ("q4_1", 0.95, 2e-3)])
def test_quantized_files_agree_with_the_dequantized_weights(dtype, min_agreement, max_kl, default_pruned, heldout_ids,
                                                            tmp_path):
    """llama.cpp quantizes activations too, so a quantized file matches PyTorch on the same (dequantized)
    weights in its predictions, not to the last digit: argmax agreement and KL(PyTorch || llama.cpp)."""
    model, _ = default_pruned
    summary = write_gguf(model, tmp_path / "q.gguf", tokenizer_dir=DEFAULT_MODEL_DIR, dtype=dtype)
    reference = with_stored_weights(model, dtype)
    expected, actual = torch_logits(reference, heldout_ids), llama_cpp_logits(summary.path, heldout_ids)
    agreement = (expected.argmax(-1) == actual.argmax(-1)).mean()
    log_p, log_q = torch.log_softmax(torch.tensor(expected), -1), torch.log_softmax(torch.tensor(actual), -1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean().item()
    print(f"{dtype}: argmax agreement {agreement:.3f}, mean KL {kl:.5f}")
    assert agreement >= min_agreement and kl <= max_kl

