"""GGUF export without llama.cpp: what the file declares and holds, for every family and every kind of cut.

That llama.cpp then computes the same logits is tested in ``test_gguf_llama_cpp.py`` (marker ``engines``).
"""

from __future__ import annotations

import contextlib

import gguf
import numpy as np
import pytest
import torch

from hf_prune.adapters import get_adapter
from hf_prune.cut.relabel import as_pruned_model
from hf_prune.cut.surgery import apply_plan, ensure_bias
from hf_prune.errors import ConfigError
from hf_prune.io.checkpoint import save_pruned
from hf_prune.io.export.gguf import DTYPES, stored_values, write_gguf
from hf_prune.io.export.gguf_cli import DTYPE_NAMES
from hf_prune.io.export.gguf_vocab import detect_pre_tokenizer
from hf_prune.registry import FILE_FORMATS
from hf_prune.run.cli import main as cli_main
from hf_prune.testing import make_tiny_model, make_tiny_tokenizer, random_plan

VOCAB = 320  # the byte-level test tokenizer has 300 tokens: the last 20 embedding rows get [PAD] tokens


def pruned_tiny(family: str, *, biases: bool = True, **overrides):
    """A tiny model cut by a random plan in which layer 0 loses its MLP and layer 1 its attention; with
    ``biases``, the output projections of layers 0 and 1 carry (compensation) biases first."""
    model = make_tiny_model(family, vocab_size=VOCAB, **overrides)
    scopes = get_adapter(model).scopes(model)
    if biases:
        with torch.no_grad():
            for scope in scopes:
                if scope.layer in (0, 1):
                    ensure_bias(model, scope.consumer.path).bias.normal_()
    plan = random_plan(model, seed=3)
    plan["layers.0.mlp"], plan["layers.1.attention"] = [], []
    apply_plan(model, scopes, plan, allow_empty=True)
    return as_pruned_model(model, get_adapter(model).scopes(model), {"note": "test"})


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tokenizer")
    make_tiny_tokenizer(vocab_size=300, byte_level=True).save_pretrained(directory)
    return directory


def read(path) -> tuple[gguf.GGUFReader, str]:
    reader = gguf.GGUFReader(str(path))
    return reader, reader.fields["general.architecture"].contents()


def field(reader: gguf.GGUFReader, arch: str, key: str):
    return reader.fields[f"{arch}.{key}"].contents()


def test_every_family_declares_its_per_layer_shapes_and_stand_ins(family, tokenizer_dir, tmp_path):
    biases = family != "qwen3"  # openelm has no biases: tested below
    model = pruned_tiny(family, biases=biases, **({"sliding_window": None} if family == "mistral" else {}))
    summary = write_gguf(model, tmp_path / "m.gguf", tokenizer_dir=tokenizer_dir)
    reader, arch = read(summary.path)
    assert arch == ("openelm" if family == "qwen3" else "deci") == summary.architecture
    layers = model.model.layers
    head_dim = get_adapter(model).decoder_weights(model).head_dim
    heads, kv_heads, ffn = (field(reader, arch, key) for key in
                            ("attention.head_count", "attention.head_count_kv", "feed_forward_length"))
    # layer 0 keeps attention but lost its MLP: one zero neuron (0 would drop the attention output)
    assert kv_heads[0] == layers[0].self_attn.k_proj.out_features // head_dim and ffn[0] == 1
    # layer 1 lost its attention: 0 heads, or one zero KV group where the attention adds a bias / has no empty form
    assert (heads[1], kv_heads[1]) == ((0, 0) if family != "qwen3" and not biases else (2, 1))
    assert ffn[1] == layers[1].mlp.down_proj.in_features and ffn[2] == layers[2].mlp.down_proj.in_features
    assert heads[2] == layers[2].self_attn.q_proj.out_features // head_dim
    for key in ("attention.key_length", "attention.value_length", "rope.dimension_count"):
        assert field(reader, arch, key) == head_dim
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    assert np.all(np.asarray(tensors["blk.0.ffn_down.weight"].data) == 0)
    if biases:
        np.testing.assert_allclose(np.asarray(tensors["blk.0.ffn_down.bias"].data), layers[0].mlp.bias.detach().numpy())
        np.testing.assert_allclose(np.asarray(tensors["blk.1.attn_output.bias"].data),
                                   layers[1].self_attn.bias.detach().numpy())
    assert ("output.weight" in tensors) == (not model.config.tie_word_embeddings)
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    assert len(tokens) == VOCAB and tokens[-1] == f"[PAD{VOCAB - 1}]"


def test_query_and_key_rows_are_permuted_per_layer_for_deci(tokenizer_dir, tmp_path):
    model = pruned_tiny("llama")
    reader, _ = read(write_gguf(model, tmp_path / "m.gguf", tokenizer_dir=tokenizer_dir).path)
    tensors = {tensor.name: np.asarray(tensor.data) for tensor in reader.tensors}
    attention = model.model.layers[2].self_attn
    head_dim = get_adapter(model).decoder_weights(model).head_dim
    heads = attention.q_proj.out_features // head_dim
    q = attention.q_proj.weight.detach().numpy().reshape(heads, head_dim, -1)
    written = tensors["blk.2.attn_q.weight"].reshape(heads, head_dim, -1)
    # llama.cpp's pair (2i, 2i+1) of a head is transformers' (i, i + head_dim/2)
    np.testing.assert_array_equal(written[:, 0::2], q[:, : head_dim // 2])
    np.testing.assert_array_equal(written[:, 1::2], q[:, head_dim // 2:])


def test_llama3_rope_scaling_is_written_as_frequency_factors(tokenizer_dir, tmp_path):
    rope = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
    model = pruned_tiny("llama", rope_parameters=rope)
    reader, _ = read(write_gguf(model, tmp_path / "m.gguf", tokenizer_dir=tokenizer_dir).path)
    factors = next(np.asarray(t.data) for t in reader.tensors if t.name == "rope_freqs.weight")
    rotary = model.model.rotary_emb
    base, _ = rotary.compute_default_rope_parameters(model.config)
    np.testing.assert_allclose(base.numpy() / factors, rotary.inv_freq.numpy(), rtol=1e-6)
    assert factors.min() == 1.0 and factors.max() == 8.0  # high frequencies kept, low ones divided by `factor`
    model.config.rope_parameters = {**rope, "rope_type": "yarn"}
    model.model.rotary_emb.rope_type = "yarn"
    with pytest.raises(ConfigError, match="yarn"):
        write_gguf(model, tmp_path / "yarn.gguf", tokenizer_dir=tokenizer_dir)
    assert not list(tmp_path.glob("yarn.gguf*"))


def test_what_openelm_cannot_hold_is_refused_in_one_line(tokenizer_dir, tmp_path):
    for model, reason in ((pruned_tiny("qwen3", biases=True), "biases"),
                          (pruned_tiny("qwen3", biases=False, tie_word_embeddings=False), "untied lm_head")):
        with pytest.raises(ConfigError, match=reason):
            write_gguf(model, tmp_path / "q.gguf", tokenizer_dir=tokenizer_dir)
    assert not list(tmp_path.iterdir())


def test_a_window_shorter_than_the_context_becomes_the_context_length(tokenizer_dir, tmp_path):
    model = pruned_tiny("mistral")  # sliding_window 8
    summary = write_gguf(model, tmp_path / "m.gguf", tokenizer_dir=tokenizer_dir)
    reader, arch = read(summary.path)
    assert field(reader, arch, "context_length") == 8 == summary.context_length


def test_quantized_rows_that_are_not_whole_blocks_fall_back_to_f16(tokenizer_dir, tmp_path):
    model = pruned_tiny("llama", biases=False)
    summary = write_gguf(model, tmp_path / "q.gguf", tokenizer_dir=tokenizer_dir, dtype="q8_0")
    reader, _ = read(summary.path)
    types = {tensor.name: tensor.tensor_type for tensor in reader.tensors}
    assert types["blk.2.attn_q.weight"] == gguf.GGMLQuantizationType.Q8_0  # 64 inputs: two blocks of 32
    ffn = model.model.layers[2].mlp.down_proj.in_features
    assert (types["blk.2.ffn_down.weight"] == gguf.GGMLQuantizationType.F16) == (ffn % 32 != 0)
    assert ("blk.2.ffn_down.weight" in summary.unquantized) == (ffn % 32 != 0)
    assert types["blk.2.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    weight = model.model.layers[2].self_attn.v_proj.weight  # v: rows not permuted
    expected = stored_values(weight, "q8_0")
    error = (expected - weight).abs().max().item()
    assert 0 < error < weight.abs().max().item() / 100
    [written] = [tensor for tensor in reader.tensors if tensor.name == "blk.2.attn_v.weight"]
    held = gguf.quants.dequantize(np.asarray(written.data), written.tensor_type).reshape(tuple(weight.shape))
    np.testing.assert_array_equal(held, expected.numpy())  # what llama.cpp reads is what the tests compare with


def test_dtype_names_of_the_command_are_the_writers(tmp_path):
    assert DTYPE_NAMES == list(DTYPES) and "gguf" in FILE_FORMATS


def test_pre_tokenizer_of_the_embedded_default_is_gpt2s():
    from hf_prune.data import DEFAULT_MODEL_DIR

    assert detect_pre_tokenizer(DEFAULT_MODEL_DIR) == "gpt-2"


def test_command_writes_a_pruned_checkpoint_and_refuses_bad_input_in_one_line(tokenizer_dir, tmp_path, capsys):
    model = pruned_tiny("qwen2")
    save_pruned(model, make_tiny_tokenizer(vocab_size=300, byte_level=True), tmp_path / "pruned")
    out = tmp_path / "pruned.gguf"
    assert cli_main(["export-gguf", str(tmp_path / "pruned"), str(out), "--dtype", "q4_1"]) == 0
    printed = capsys.readouterr().out
    assert "deci" in printed and "q4_1" in printed and out.is_file()
    reader, arch = read(out)
    assert field(reader, arch, "attention.head_count_kv")[1] == 1
    for argv, message in (([str(tmp_path / "pruned"), str(out)], "exists; pass --overwrite"),
                          ([str(tmp_path / "missing"), str(tmp_path / "x.gguf")], "does not exist"),
                          ([str(tmp_path / "pruned"), str(tmp_path / "no" / "x.gguf")], "does not exist")):
        assert cli_main(["export-gguf", *argv]) == 2
        error = capsys.readouterr().err
        assert message in error and len(error.strip().splitlines()) == 1
    assert cli_main(["export-onnx", "a", "b"]) == 2 and "export-gguf" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned", "pruned.gguf"]  # no partial file left


@pytest.mark.parametrize("dtype", ["f32", "q8_0"])
def test_export_reads_the_checkpoint_one_decoder_layer_at_a_time(dtype, tokenizer_dir, tmp_path, monkeypatch):
    """export-gguf of an 8B–70B checkpoint must not hold the model: its weights stay in the shards (on meta) except
    while one unit (a decoder layer, or the weights outside the layers) is read, each tensor is encoded a few rows at
    a time, and the file is the one the in-memory writer gives."""
    from hf_prune.io.export import gguf as exporter

    model = pruned_tiny("llama")
    save_pruned(model, make_tiny_tokenizer(vocab_size=300, byte_level=True), tmp_path / "pruned")
    (tmp_path / "memory").mkdir()
    (tmp_path / "shards").mkdir()
    write_gguf(model, tmp_path / "memory" / "m.gguf", tokenizer_dir=tmp_path / "pruned", dtype=dtype)
    loaded = {}
    load_offloaded, resident = exporter.load_offloaded, exporter.resident

    def loading(*args, **kwargs):
        loaded["model"], stored = load_offloaded(*args, **kwargs)
        loaded["layers"] = get_adapter(loaded["model"]).decoder_layers(loaded["model"])
        loaded["counts"] = []
        return loaded["model"], stored

    @contextlib.contextmanager
    def watched(modules):
        with resident(modules):
            loaded["counts"].append(sum(any(p.device.type != "meta" for p in layer.parameters())
                                        for layer in loaded["layers"]))
            yield

    monkeypatch.setattr(exporter, "load_offloaded", loading)
    monkeypatch.setattr(exporter, "resident", watched)
    monkeypatch.setattr(exporter, "ROWS_PER_ENCODE", 7)  # several blocks of rows in every 2-D tensor
    exporter.export_checkpoint(str(tmp_path / "pruned"), tmp_path / "shards" / "m.gguf", dtype=dtype)
    layers = len(loaded["layers"])
    assert loaded["counts"] == [0] + [1] * layers + [0], "outside weights, each layer alone, outside weights again"
    assert all(p.device.type == "meta" for p in loaded["model"].parameters()), "nothing stays loaded"
    assert (tmp_path / "memory" / "m.gguf").read_bytes() == (tmp_path / "shards" / "m.gguf").read_bytes()
