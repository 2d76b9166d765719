"""A pruned model as one GGUF file that llama.cpp runs with its per-layer shapes.

Which llama.cpp architecture: most of llama.cpp's graph builders (``llama``, ``qwen2``, ``qwen3``) read
one head count and one MLP width for every layer. Two read them per layer — ``deci`` (Nemotron-NAS:
separate Q/K/V with optional biases, interleaved-pair RoPE with optional frequency factors, optional
untied output, a layer may have no attention) and ``openelm`` (fused QKV, per-head Q/K RMSNorm,
half-rotation RoPE, tied output, no biases). A model whose attention normalises Q and K per head
(Qwen3) is written as ``openelm``; every other one as ``deci``. The choice is made on what the weights
are, never on the family's name; what the chosen builder cannot express is refused with one line.

Exactness traps, each found by running llama.cpp (see ``tests/test_gguf_llama_cpp.py``):

* ``deci`` rotates pairs of neighbouring values; transformers rotates the first half of a head against
  the second. Q and K rows (and biases) are permuted per layer with that layer's own head count.
* ``deci`` skips a layer whose MLP width is 0 *including its attention output*, and drops the output
  bias of an attention with 0 heads. A removed MLP under a kept attention is therefore written as one
  zero neuron, and a removed attention that adds a compensation bias as one zero KV group whose output
  bias is that bias: both add exactly what the pruned model adds.
* The default head size is ``hidden / heads of layer 0``: ``key_length``, ``value_length`` and
  ``rope.dimension_count`` are always written.
* ``deci`` has no sliding-window attention: a model with a window shorter than its context (Mistral v0.1)
  is exact within the window, so the window is written as the context length, with a warning.

Quantized types store rows in blocks (32 values for ``q8_0``/``q4_*``); a tensor whose rows do not
fill whole blocks (an MLP pruned to 344 neurons, as ``ffn_down``'s rows) is written as ``f16``, the way
``llama-quantize`` falls back, and reported. 1-D tensors (norms, biases) stay ``f32``.

Memory: the file's tensors are computed when gguf's writer reaches them (``gguf.LazyNumpyTensor``), one decoder
layer at a time, and ``export-gguf`` reads the checkpoint the way ``--layerwise`` does (every weight left in its
shards until its layer is written, in the checkpoint's own dtype) — so an 8B–70B model is exported in about one
layer and one vocabulary table of memory, where loading it whole in float32 and handing the writer every tensor
would hold it about twice over.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf.lazy import LazyNumpyTensor
from huggingface_hub import snapshot_download
from torch import nn

from ...adapters import get_adapter
from ...adapters.weights import AttentionWeights, DecoderWeights, LayerWeights, MLPWeights, RemovedWeights
from ...errors import ConfigError
from ...runtime.offload import modules_outside, resident
from ..checkpoint import load_config, resolve_dtypes
from ..layerwise import load_offloaded
from .gguf_vocab import add_vocabulary

logger = logging.getLogger(__name__)

Q = gguf.GGMLQuantizationType
#: --dtype -> (tensor type of 2-D weights, file type recorded in the header)
DTYPES: dict[str, tuple[gguf.GGMLQuantizationType, gguf.LlamaFileType]] = {
    "f32": (Q.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (Q.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (Q.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "q8_0": (Q.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    "q5_1": (Q.Q5_1, gguf.LlamaFileType.MOSTLY_Q5_1),
    "q5_0": (Q.Q5_0, gguf.LlamaFileType.MOSTLY_Q5_0),
    "q4_1": (Q.Q4_1, gguf.LlamaFileType.MOSTLY_Q4_1),
    "q4_0": (Q.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0),
}

Tensors = list[tuple[str, torch.Tensor]]
#: rows of a tensor converted to float32 at a time while encoding (Llama-3's 128k x 4096 table: 64 MB a block)
ROWS_PER_ENCODE = 4096


@dataclass
class LayerShape:
    """What one GGUF block declares: query heads, KV heads, MLP width (0 = absent)."""

    heads: int
    kv_heads: int
    ffn: int


@dataclass
class GgufSummary:
    """What was written, for the command's last line and for tests."""

    path: str
    architecture: str
    dtype: str
    tokenizer: str
    layers: list[LayerShape]
    bytes: int = 0
    unquantized: list[str] = field(default_factory=list)  # 2-D tensors kept at f16 (rows not whole blocks)
    context_length: int = 0


def _zeros(rows: int, columns: int, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros(rows, columns, dtype=like.dtype)


def _rotate_pairs(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of each head from transformers' half-rotation order to llama.cpp's interleaved pairs."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _zero_kv_group(weights: DecoderWeights, like: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor,
                                                                        torch.Tensor, torch.Tensor]:
    """(query heads, q, k, v, o) of one KV group whose weights are all zero: its output is exactly zero (zero
    values, zero output projection), so it stands in for a removed attention where a graph needs heads."""
    heads, hidden, head_dim = weights.queries_per_kv_head, weights.hidden_size, weights.head_dim
    return (heads, _zeros(heads * head_dim, hidden, like), _zeros(head_dim, hidden, like),
            _zeros(head_dim, hidden, like), _zeros(hidden, heads * head_dim, like))


def _zero_neuron(hidden: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(gate, up, down) of one MLP neuron with zero weights (silu(0) * 0 = 0): a removed MLP where a graph needs one."""
    return _zeros(1, hidden, like), _zeros(1, hidden, like), _zeros(hidden, 1, like)


def _linear(name: str, linear: nn.Linear, rows=lambda t: t) -> Tensors:
    tensors = [(f"{name}.weight", rows(linear.weight))]
    if linear.bias is not None:
        tensors.append((f"{name}.bias", rows(linear.bias)))
    return tensors


class _DeciBlocks:
    """Decoder layers as llama.cpp's ``deci`` blocks."""

    architecture = "deci"

    def __init__(self, weights: DecoderWeights):
        self.weights = weights

    def layer(self, index: int, layer: LayerWeights) -> tuple[LayerShape, Tensors]:
        blk, hidden = f"blk.{index}", self.weights.hidden_size
        attention, tensors = layer.attention, []
        if isinstance(attention, AttentionWeights):
            heads, kv_heads = attention.num_heads, attention.num_kv_heads
            tensors += [(f"{blk}.attn_norm.weight", layer.attention_norm),
                        *_linear(f"{blk}.attn_q", attention.q, lambda t: _rotate_pairs(t, heads)),
                        *_linear(f"{blk}.attn_k", attention.k, lambda t: _rotate_pairs(t, kv_heads)),
                        *_linear(f"{blk}.attn_v", attention.v), *_linear(f"{blk}.attn_output", attention.o)]
        elif attention.bias is not None:  # one zero KV group, so that the bias is added
            heads, q, k, v, o = _zero_kv_group(self.weights, layer.attention_norm)
            kv_heads = 1
            tensors += [(f"{blk}.attn_norm.weight", layer.attention_norm), (f"{blk}.attn_q.weight", q),
                        (f"{blk}.attn_k.weight", k), (f"{blk}.attn_v.weight", v), (f"{blk}.attn_output.weight", o),
                        (f"{blk}.attn_output.bias", attention.bias)]
        else:
            heads = kv_heads = 0
        mlp = layer.mlp
        if isinstance(mlp, MLPWeights):
            ffn = mlp.down.in_features
            tensors += [(f"{blk}.ffn_norm.weight", layer.mlp_norm), *_linear(f"{blk}.ffn_gate", mlp.gate),
                        *_linear(f"{blk}.ffn_up", mlp.up), *_linear(f"{blk}.ffn_down", mlp.down)]
        elif heads == 0 and mlp.bias is None:
            ffn = 0  # the whole layer adds nothing; deci skips it
        else:  # one zero neuron: deci drops the attention output of a layer with no MLP
            ffn, (gate, up, down) = 1, _zero_neuron(hidden, layer.mlp_norm)
            tensors += [(f"{blk}.ffn_norm.weight", layer.mlp_norm), (f"{blk}.ffn_gate.weight", gate),
                        (f"{blk}.ffn_up.weight", up), (f"{blk}.ffn_down.weight", down)]
            if mlp.bias is not None:
                tensors.append((f"{blk}.ffn_down.bias", mlp.bias))
        return LayerShape(heads, kv_heads, ffn), tensors

    def globals(self) -> Tensors:
        weights, tensors = self.weights, []
        if weights.lm_head is not None:
            tensors.append(("output.weight", weights.lm_head))
        if weights.rope_factors is not None:
            tensors.append(("rope_freqs.weight", weights.rope_factors))
        return tensors


class _OpenElmBlocks:
    """Decoder layers with per-head Q/K norms as llama.cpp's ``openelm`` blocks (fused QKV, no biases,
    half-rotation RoPE as in transformers, so no permutation)."""

    architecture = "openelm"

    def __init__(self, weights: DecoderWeights):
        unsupported = [reason for reason, present in (
            ("an untied lm_head", weights.lm_head is not None),
            ("RoPE frequency scaling", weights.rope_factors is not None),
            ("biases", any(_has_bias(layer) for layer in weights.layers))) if present]
        if unsupported:
            raise ConfigError(f"llama.cpp's only per-layer architecture with Q/K norms (openelm) cannot hold "
                              f"{' or '.join(unsupported)}; serve this model with the vLLM plugin instead "
                              "(see README, 'Serving')")
        self.weights = weights

    def layer(self, index: int, layer: LayerWeights) -> tuple[LayerShape, Tensors]:
        blk, attention, like = f"blk.{index}", layer.attention, layer.attention_norm
        if isinstance(attention, AttentionWeights):
            heads, kv_heads = attention.num_heads, attention.num_kv_heads
            qkv = torch.cat([attention.q.weight, attention.k.weight, attention.v.weight])
            output, q_norm, k_norm = attention.o.weight, attention.q_norm, attention.k_norm
        else:  # openelm has no attention-free layer: one zero KV group adds exactly nothing
            heads, q, k, v, output = _zero_kv_group(self.weights, like)
            kv_heads, qkv = 1, torch.cat([q, k, v])
            q_norm = k_norm = torch.ones(self.weights.head_dim)
        mlp = layer.mlp
        if isinstance(mlp, MLPWeights):
            ffn, gate, up, down = mlp.down.in_features, mlp.gate.weight, mlp.up.weight, mlp.down.weight
        else:  # one zero neuron adds nothing
            ffn, (gate, up, down) = 1, _zero_neuron(self.weights.hidden_size, like)
        return LayerShape(heads, kv_heads, ffn), [
            (f"{blk}.attn_norm.weight", layer.attention_norm), (f"{blk}.attn_qkv.weight", qkv),
            (f"{blk}.attn_q_norm.weight", q_norm), (f"{blk}.attn_k_norm.weight", k_norm),
            (f"{blk}.attn_output.weight", output), (f"{blk}.ffn_norm.weight", layer.mlp_norm),
            (f"{blk}.ffn_gate.weight", gate), (f"{blk}.ffn_up.weight", up), (f"{blk}.ffn_down.weight", down)]

    def globals(self) -> Tensors:
        return []


def _has_bias(layer: LayerWeights) -> bool:
    parts = [layer.attention, layer.mlp]
    linears = [getattr(part, name) for part in parts for name in ("q", "k", "v", "o", "gate", "up", "down")
               if hasattr(part, name)]
    return any(linear.bias is not None for linear in linears) or any(
        isinstance(part, RemovedWeights) and part.bias is not None for part in parts)


def _blocks_for(weights: DecoderWeights) -> _DeciBlocks | _OpenElmBlocks:
    qk_norm = any(isinstance(layer.attention, AttentionWeights) and layer.attention.q_norm is not None
                  for layer in weights.layers)
    return _OpenElmBlocks(weights) if qk_norm else _DeciBlocks(weights)


@dataclass(frozen=True)
class _Encoding:
    """How a tensor of some shape is stored for a requested type: 1-D tensors in f32, rows that are not whole
    blocks of a quantized type in f16 (``fell_back``); known from the shape alone, before any value is read."""

    written: gguf.GGMLQuantizationType
    array_dtype: type
    array_shape: tuple[int, ...]  # of the bytes handed to the writer (a quantized type's are uint8 rows)
    fell_back: bool = False

    @classmethod
    def of(cls, shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType) -> "_Encoding":
        if len(shape) == 1 or qtype == Q.F32:
            return cls(Q.F32, np.float32, shape)
        if qtype == Q.F16:
            return cls(Q.F16, np.float16, shape)
        if shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
            return cls(Q.F16, np.float16, shape, fell_back=True)
        return cls(qtype, np.uint8, tuple(gguf.quant_shape_to_byte_shape(shape, qtype)))

    def encode(self, tensor: torch.Tensor) -> np.ndarray:
        """The tensor's bytes in the written type, ROWS_PER_ENCODE rows at a time (every type encodes rows
        independently), so a bfloat16 vocabulary table is never whole in float32 on its way to the file."""
        tensor = tensor.detach().to(device="cpu")
        encoded = np.empty(self.array_shape, dtype=self.array_dtype)
        for first in range(0, tensor.shape[0], ROWS_PER_ENCODE):
            rows = tensor[first : first + ROWS_PER_ENCODE].to(torch.float32).contiguous().numpy()
            encoded[first : first + rows.shape[0]] = (rows if self.written in (Q.F32, Q.F16)
                                                      else gguf.quants.quantize(rows, self.written))
        return encoded


def _global_tensors(weights: DecoderWeights, blocks: _DeciBlocks | _OpenElmBlocks) -> tuple[Tensors, Tensors]:
    """(the tensors written before the decoder layers, those written after them)."""
    return [("token_embd.weight", weights.embedding), ("output_norm.weight", weights.final_norm)], blocks.globals()


#: a unit of the file's tensors: a decoder layer's index, or the tensors written before / after the layers
Unit = int | str
BEFORE, AFTER = "before the layers", "after the layers"


class _TensorSource:
    """The file's tensors as the writer reaches them, a *unit* at a time: a decoder layer, or the tensors outside the
    layers written before them (embedding, final norm) or after them (untied head, RoPE factors). A unit's weights
    are made resident (a no-op for a model in memory), its tensors formed by the blocks, and each is handed over once
    and forgotten, so one unit is held at a time — and never the embedding and an untied head together."""

    def __init__(self, model: nn.Module, untied_head: bool) -> None:
        self.model, self.adapter, self.untied_head = model, get_adapter(model), untied_head
        self.layers = self.adapter.decoder_layers(model)
        embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
        heads = [head] if head is not None else []
        self.resident_for = {BEFORE: modules_outside(model, self.layers, skip=heads),
                             AFTER: modules_outside(model, self.layers, skip=[embedding] + ([] if untied_head else heads))}
        self._unit: Unit | None = None
        self._tensors: dict[str, torch.Tensor] = {}

    def tensor(self, unit: Unit, name: str) -> torch.Tensor:
        if unit != self._unit:
            self._tensors = {}
            self._unit = unit
            with resident([self.layers[unit]] if isinstance(unit, int) else self.resident_for[unit]):
                weights = self.adapter.decoder_weights(self.model)
                if not self.untied_head:  # an offloaded embedding made resident is no longer the head's tensor
                    weights = dataclasses.replace(weights, lm_head=None)
                blocks = _blocks_for(weights)
                if isinstance(unit, int):
                    self._tensors = dict(blocks.layer(unit, weights.layers[unit])[1])
                else:
                    before, after = _global_tensors(weights, blocks)
                    self._tensors = dict(before if unit == BEFORE else after)
        return self._tensors.pop(name)


def _write(partial: Path, model: nn.Module, dtype: str, tokenizer_dir, tokenizer_pre: str | None, name: str,
           progress: bool) -> GgufSummary:
    """Write the whole file at ``partial``: the tensors' names and shapes from the model's (possibly offloaded,
    meta) weights, their values computed as the writer reaches them."""
    qtype, file_type = DTYPES[dtype]
    weights = get_adapter(model).decoder_weights(model)
    blocks = _blocks_for(weights)
    before, after = _global_tensors(weights, blocks)
    listed: list[tuple[Unit, str, tuple[int, ...]]] = [(BEFORE, n, tuple(t.shape)) for n, t in before]
    shapes = []
    for index, layer in enumerate(weights.layers):
        shape, layer_tensors = blocks.layer(index, layer)
        shapes.append(shape)
        listed += [(index, n, tuple(t.shape)) for n, t in layer_tensors]
    listed += [(AFTER, n, tuple(t.shape)) for n, t in after]
    writer = gguf.GGUFWriter(str(partial), blocks.architecture)
    context = weights.context_length
    if weights.sliding_window is not None:
        logger.warning("llama.cpp's %s blocks have no sliding-window attention: the model is exact up to its window "
                       "of %d tokens, which is written as its context length", blocks.architecture, weights.sliding_window)
        context = weights.sliding_window
    writer.add_name(name)
    writer.add_context_length(context)
    writer.add_embedding_length(weights.hidden_size)
    writer.add_block_count(len(shapes))
    writer.add_head_count([shape.heads for shape in shapes])
    writer.add_head_count_kv([shape.kv_heads for shape in shapes])
    writer.add_feed_forward_length([shape.ffn for shape in shapes])
    writer.add_key_length(weights.head_dim)
    writer.add_value_length(weights.head_dim)
    writer.add_rope_dimension_count(weights.head_dim)
    writer.add_rope_freq_base(weights.rope_theta)
    writer.add_layer_norm_rms_eps(weights.rms_norm_eps)
    writer.add_vocab_size(weights.vocab_size)
    writer.add_file_type(file_type)
    if qtype not in (Q.F32, Q.F16, Q.BF16):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    tokenizer = add_vocabulary(writer, Path(tokenizer_dir), weights.vocab_size, tokenizer_pre)
    source, unquantized = _TensorSource(model, untied_head=weights.lm_head is not None), []
    for unit, tensor_name, shape in listed:
        encoding = _Encoding.of(shape, qtype)
        if encoding.fell_back:
            logger.info("%s: rows of %d values are not whole blocks of %s; written as f16", tensor_name, shape[-1],
                        qtype.name)
            unquantized.append(tensor_name)
        meta = LazyNumpyTensor.meta_with_dtype_and_shape(encoding.array_dtype, encoding.array_shape)
        values = LazyNumpyTensor(meta=meta, func=lambda unit=unit, tensor_name=tensor_name, encoding=encoding:
                                 encoding.encode(source.tensor(unit, tensor_name)))
        writer.add_tensor(tensor_name, values, raw_dtype=encoding.written)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=progress)
    finally:
        writer.close()
    return GgufSummary(path=str(partial), architecture=blocks.architecture, dtype=dtype, tokenizer=tokenizer,
                       layers=shapes, unquantized=unquantized, context_length=context)


def stored_values(tensor: torch.Tensor, dtype: str) -> torch.Tensor:
    """The values a file of ``dtype`` holds for ``tensor``, dequantized to float32.

    Loading these into the PyTorch model gives the model llama.cpp actually runs, so the two can be compared
    on the same weights (what remains is llama.cpp's own arithmetic, e.g. 8-bit activations in quantized matmuls).
    """
    encoding = _Encoding.of(tuple(tensor.shape), DTYPES[dtype][0])
    data = encoding.encode(tensor)  # a buffer of its own: encode writes into a new array
    if encoding.written == Q.F32:
        return torch.from_numpy(data)
    return torch.from_numpy(gguf.quants.dequantize(data, encoding.written).reshape(tuple(tensor.shape)).astype(np.float32))


def with_stored_weights(model: nn.Module, dtype: str) -> nn.Module:
    """A copy of ``model`` whose 2-D weights are replaced by the values a ``dtype`` file holds: the model
    llama.cpp actually runs, to compare with it on the same weights."""
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for weight in reference.parameters():  # each tensor once, a tied embedding included
            if weight.ndim == 2:
                weight.copy_(stored_values(weight, dtype))
    return reference


def write_gguf(model: nn.Module, path: str | os.PathLike, *, tokenizer_dir: str | os.PathLike, dtype: str = "f32",
               tokenizer_pre: str | None = None, name: str | None = None, progress: bool = False) -> GgufSummary:
    """Write ``model`` (pruned or not, any per-layer shapes) and its tokenizer as a GGUF file at ``path``.

    The file is written next to ``path`` under a temporary name and renamed when complete, so an
    interrupted export never leaves a truncated file that llama.cpp would fail on later.
    """
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    try:
        summary = _write(partial, model, dtype, tokenizer_dir, tokenizer_pre, name or path.stem, progress)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, path)
    summary.path, summary.bytes = str(path), path.stat().st_size
    return summary


def export_checkpoint(model: str, path: str | os.PathLike, *, tokenizer: str | None = None, dtype: str = "f32",
                      tokenizer_pre: str | None = None, progress: bool = False) -> GgufSummary:
    """Write the checkpoint ``model`` (pruned or not) with its tokenizer (``tokenizer``: a directory; default the
    model's own) as a GGUF file at ``path``, reading its weights a decoder layer at a time from the shards."""
    _, stored = resolve_dtypes("auto", getattr(load_config(model), "dtype", None))
    loaded, _ = load_offloaded(model, dtype=stored or torch.float32, device=torch.device("cpu"))
    return write_gguf(loaded, path, tokenizer_dir=_tokenizer_dir(model, tokenizer), dtype=dtype,
                      tokenizer_pre=tokenizer_pre, progress=progress)


def _tokenizer_dir(model: str, explicit: str | None) -> Path:
    """The directory whose tokenizer files go into the GGUF: explicit, the local model, or the Hub repo's files."""
    if explicit is not None or Path(model).expanduser().is_dir():
        return Path(explicit or model).expanduser()
    patterns = ["tokenizer*", "special_tokens_map.json", "vocab.json", "merges.txt", "config.json"]
    return Path(snapshot_download(model, allow_patterns=patterns))

