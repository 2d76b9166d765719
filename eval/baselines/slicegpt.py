"""SliceGPT (Ashkboos et al., "SliceGPT: Compress Large Language Models by Deleting Rows and Columns", ICLR 2024,
arXiv 2401.15024), re-implemented on a ``transformers`` ``*ForCausalLM`` for the llama-layout families.

Followed: the paper's sections 3.1-3.3 (computational invariance of RMSNorm networks, PCA of the residual stream
per block, deletion of the minor principal directions, shortcut matrices ``Q_lᵀ Q_{l+1}``) and the official code,
``microsoft/TransformerCompression`` ``src/slicegpt/``: ``layernorm_fusion.fuse_modules`` / ``fuse_ln_linear``,
``modules.RMSN``, ``rotate.rotate_and_slice_sequential`` with ``pca_calc``, ``adapters/llama_adapter.py``
(``CompressedLlamaDecoderLayer``: ``residual @ attn_shortcut_Q + attn_out``), ``slicing_scheduler.
ConstSlicingScheduler`` and ``experiments/run_slicegpt.py`` (dimension from ``--sparsity``, ``--round-interval 8``).

What their code does, step for step (sequential blocks, as in Llama):
1. Fusion: copy the LM head's weight (it may be tied to the embeddings); multiply every RMSNorm's weight into the
   columns of the Linear layers that read it (q/k/v after ``input_layernorm``, gate/up after
   ``post_attention_layernorm``, lm_head after the final norm) and replace each norm by ``RMSN(hidden_size)``:
   ``x * rsqrt(Σ x² / hidden_size + eps)`` -- no weight, and it divides by the *original* hidden size, so that on a
   sliced (shorter) residual it still computes the norm of the full one up to the deleted components.
2. ``Q_0`` = PCA of the embeddings' output (the first layer's input). ``pca_calc``: ``H = Σ_tokens x xᵀ`` in
   float64, plus ``0.01 * mean(diag H)`` on the diagonal (damping; it leaves the eigenvectors unchanged), ``eigh``,
   eigenvectors sorted by decreasing eigenvalue. Embedding ``E ← E Q_0[:, :d]``.
3. Per layer, in order, on the activations of the *already sliced* model (their calibration inputs are the
   previous sliced layer's outputs):
   - q/k/v ``W ← W Q_in[:, :d]``; the layer's input is ``x Q_in[:, :d]``; attention shortcut ``Q_in[:, :d]ᵀ``.
   - ``Q_mid`` = PCA of the input of ``post_attention_layernorm``, i.e. the *un-normalised* residual stream
     between attention and MLP (captured with o_proj still writing the original basis).
   - attention shortcut ``Q_in[:, :d]ᵀ Q_mid[:, :d]``; o_proj (weight and bias) ``W ← Q_mid[:, :d]ᵀ W``;
     gate/up ``W ← W Q_mid[:, :d]``; MLP shortcut ``Q_mid[:, :d]ᵀ``.
   - ``Q_out`` = PCA of the layer's output (run with the rotated attention and MLP input, down_proj unrotated);
     MLP shortcut ``Q_mid[:, :d]ᵀ Q_out[:, :d']``; down_proj ``W ← Q_out[:, :d']ᵀ W``; ``Q_in`` of the next layer
     is ``Q_out``.
4. lm_head ``W ← W Q_out``. With ``ConstSlicingScheduler(d)`` (``do_slice_head=False``, what ``run_slicegpt.py``
   builds) the head is *not* sliced: the last layer's MLP output ``d'`` is the full hidden size and lm_head only
   rotated; every other residual dimension is ``d``.
5. ``d = int((1 - sparsity) * hidden_size)`` rounded down to a multiple of ``round_interval`` (default 8). Their
   "sparsity" is the sliced share of the hidden dimension, not a share of parameters.

Where this differs, and why:
- Budget: the project compares methods at an equal removed share of the *prunable* parameters (attention + MLP
  Linear weights and producer biases, :func:`hf_prune.adapters.prunable_parameters`). Here the shortcut matrices
  (``(2L - 1) d² + d D``: the last MLP shortcut maps to the unsliced head) count as kept prunable parameters, and
  ``d`` is solved for so that ``(dense - sliced linear - shortcuts) / dense`` meets the request: the multiple of 8
  closest to it, or any integer where no multiple of 8 comes within 1 percentage point. ``details`` reports
  ε = 1 - d/D, ``d``, the counts, and the embedding / lm_head parameters separately: they are not prunable
  parameters; the embedding shrinks to ``V x d``, but a tied lm_head becomes a separate ``V x D`` matrix, so a
  tied model's *total* can grow (``details["total_params"]``). ``slice_head=True`` slices the head as well.
- The embedding rows are not mean-centred. ``fuse_modules`` subtracts each embedding row's mean for every model;
  that is LayerNorm's (OPT's) half of the fusion and not function-preserving for an RMSNorm model (the QuaRot
  authors, whose fusion copies it, call it unnecessary for LLaMA, spcl/QuaRot#7; a SpinQuant user measured
  Llama-2-7B perplexity 6.8 -> 6.5 without it, facebookresearch/SpinQuant#14). ``center_embeddings=True`` restores it.
- RMSN's epsilon is the model's own ``rms_norm_eps`` (theirs is fixed at 1e-5, Llama-2's and SmolLM2's value), so
  that at ε = 0 the rotated model equals the dense one also for families with 1e-6.
- Orientation: ``--final-orientation`` defaults to ``random`` in ``run_slicegpt.py`` (a random orthogonal
  rotation inside the kept ``d``-dimensional subspace); this keeps the PCA orientation. The random rotation only
  changes the basis in which the kept subspace is stored: every later PCA is taken in the original basis (the
  shortcut projects back first), so the model's function is the same in exact arithmetic.
- Shortcut products (``Q_inᵀ Q_mid``, ...) are formed in float64 and stored in the model's dtype (theirs multiply
  in the model's dtype); the layer inputs are rotated in the model's dtype, as theirs.
- No padding mask (the project's calibration rows are full windows); their ``--cal-nsamples 128`` x 2048 tokens of
  WikiText-2 become the project's calibration rows.
- Representation: each decoder layer is replaced by :class:`SlicedDecoderLayer`, which reuses the layer's own
  attention and MLP modules (rotary embeddings, GQA, masks, q/k norms and biases act in head space and are
  untouched by the residual rotation) with reshaped Linear weights, two weightless :class:`RMSN` and the two
  shortcut parameters. Module names stay those of the llama layout, so ``adapter.scopes`` works on the result.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from hf_prune.adapters import PrunableScope, count_parameters, get_adapter, prunable_parameters
from hf_prune.calibration.statistics import first_layer_inputs

from .common import hidden_of

#: llama-layout norm module names (the adapters expose the Linear layers through scopes, not the norms)
ATTENTION_NORM, MLP_NORM, FINAL_NORM = "input_layernorm", "post_attention_layernorm", "model.norm"
#: their ``--round-interval`` default
ROUND_INTERVAL = 8
#: how far (share of prunable parameters) a multiple of ``ROUND_INTERVAL`` may miss the request
ROUND_TOLERANCE = 0.01


class RMSN(nn.Module):
    """Their ``modules.RMSN``: RMS normalisation without a weight that divides by the *original* hidden size."""

    def __init__(self, mean_dim: int, eps: float) -> None:
        super().__init__()
        self.mean_dim = mean_dim
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.to(torch.float32)
        variance = x.pow(2).sum(-1, keepdim=True) / self.mean_dim
        return (x * torch.rsqrt(variance + self.eps)).to(dtype)

    def extra_repr(self) -> str:
        return f"mean_dim={self.mean_dim}, eps={self.eps}"


class SlicedDecoderLayer(nn.Module):
    """A decoder layer in the rotated, sliced residual basis (their ``CompressedLlamaDecoderLayer``):
    ``h = x @ attn_shortcut_Q + attn(RMSN(x))``, ``y = h @ mlp_shortcut_Q + mlp(RMSN(h))``. A shortcut that is None
    is the identity. Reuses the original layer's attention and MLP modules."""

    def __init__(self, layer: nn.Module, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.self_attn = layer.self_attn
        self.mlp = layer.mlp
        self.input_layernorm = RMSN(hidden_size, eps)
        self.post_attention_layernorm = RMSN(hidden_size, eps)
        self.register_parameter("attn_shortcut_Q", None)
        self.register_parameter("mlp_shortcut_Q", None)
        for name in ("attention_type", "layer_idx"):  # read by some models' forward (mask per layer type)
            if hasattr(layer, name):
                setattr(self, name, getattr(layer, name))

    @staticmethod
    def _shortcut(residual: torch.Tensor, matrix: torch.Tensor | None) -> torch.Tensor:
        return residual if matrix is None else residual @ matrix

    def attention_block(self, hidden_states: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        out, _ = self.self_attn(hidden_states=self.input_layernorm(hidden_states), **kwargs)
        return self._shortcut(hidden_states, self.attn_shortcut_Q) + out

    def mlp_block(self, hidden_states: torch.Tensor) -> torch.Tensor:
        out = self.mlp(self.post_attention_layernorm(hidden_states))
        return self._shortcut(hidden_states, self.mlp_shortcut_Q) + out

    def forward(self, hidden_states: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.mlp_block(self.attention_block(hidden_states, **kwargs))


def pca(signals: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Their ``pca_calc``: eigenvalues (damping removed) and eigenvectors (columns) of ``Σ x xᵀ`` over every
    token, float64, in decreasing order of eigenvalue."""
    gram = None
    for x in signals:
        x = x.reshape(-1, x.shape[-1]).to(torch.float64)
        gram = x.T @ x if gram is None else gram + x.T @ x
    damp = 0.01 * gram.diagonal().mean()
    gram.diagonal().add_(damp)
    values, vectors = torch.linalg.eigh(gram)
    order = torch.argsort(values, descending=True)
    return values[order] - damp, vectors[:, order]


def _rotate_inputs(linear: nn.Module, basis: torch.Tensor) -> None:
    """A Linear reading the residual: ``W ← W Q[:, :k]`` (its bias acts on the output, unchanged)."""
    weight = linear.weight.data
    linear.weight.data = (weight.to(torch.float64) @ basis).to(weight.dtype)
    linear.in_features = basis.shape[1]


def _rotate_outputs(linear: nn.Module, basis: torch.Tensor) -> None:
    """A Linear writing the residual: ``W ← Q[:, :k]ᵀ W``, ``b ← Q[:, :k]ᵀ b``."""
    weight = linear.weight.data
    linear.weight.data = (basis.T @ weight.to(torch.float64)).to(weight.dtype)
    if linear.bias is not None:
        linear.bias.data = (basis.T @ linear.bias.data.to(torch.float64)).to(weight.dtype)
    linear.out_features = basis.shape[1]


def _fold_norm(norm: nn.Module, readers: Sequence[nn.Module]) -> None:
    """``fuse_ln_linear`` for an RMSNorm (no bias): scale the readers' input columns by the norm's weight."""
    scale = norm.weight.data.to(torch.float64)
    for linear in readers:
        weight = linear.weight.data
        linear.weight.data = (weight.to(torch.float64) * scale).to(weight.dtype)


def _norm_eps(norm: nn.Module) -> float:
    for name in ("variance_epsilon", "eps", "epsilon"):
        if hasattr(norm, name):
            return float(getattr(norm, name))
    raise ValueError(f"{type(norm).__name__}: no epsilon attribute")


def _layer_scopes(model: nn.Module) -> list[tuple[PrunableScope, PrunableScope]]:
    """(attention, MLP) scope of every decoder layer; SliceGPT needs both sublayers in every layer."""
    scopes = get_adapter(model).scopes(model)
    by_layer: dict[int, dict[str, PrunableScope]] = {}
    for scope in scopes:
        by_layer.setdefault(scope.layer, {})[scope.kind] = scope
    layers = len(get_adapter(model).decoder_layers(model))
    if sorted(by_layer) != list(range(layers)) or any(len(kinds) != 2 for kinds in by_layer.values()):
        raise ValueError("SliceGPT needs an attention and an MLP sublayer in every decoder layer")
    return [(by_layer[i]["attention"], by_layer[i]["mlp"]) for i in range(layers)]


def layer_dimensions(num_layers: int, hidden_size: int, dimension: int,
                     slice_head: bool = False) -> list[tuple[int, int]]:
    """Per layer, the residual dimension at its input, between attention and MLP, and at its output
    (``ConstSlicingScheduler``: all ``dimension``, but the last output is the head's, full unless ``slice_head``)."""
    head = dimension if slice_head else hidden_size
    return [(dimension, dimension, head if i == num_layers - 1 else dimension) for i in range(num_layers)]


def kept_parameters(model: nn.Module, dims: Sequence[tuple[int, int, int]]) -> tuple[int, int]:
    """(prunable Linear parameters, shortcut parameters) of ``model`` sliced to ``dims`` -- counted as
    :func:`~hf_prune.adapters.prunable_parameters` counts them (weights and producer biases)."""
    linear = shortcuts = 0
    for (attention, mlp), (d_in, d_mid, d_out) in zip(_layer_scopes(model), dims):
        for scope, reads, writes in ((attention, d_in, d_mid), (mlp, d_mid, d_out)):
            for piece in scope.producers:
                producer = model.get_submodule(piece.path)
                linear += producer.out_features * (reads + (producer.bias is not None))
            linear += model.get_submodule(scope.consumer.path).in_features * writes
        shortcuts += d_in * d_mid + d_mid * d_out
    return linear, shortcuts


def solve_dimension(model: nn.Module, sparsity: float, *, round_interval: int = ROUND_INTERVAL,
                    slice_head: bool = False) -> tuple[int, float, int]:
    """The sliced dimension whose removed share of prunable parameters (shortcuts kept) is closest to ``sparsity``:
    a multiple of ``round_interval`` if one comes within ``ROUND_TOLERANCE``, else any integer. Returns
    (dimension, achieved share, rounding used)."""
    hidden = model.config.hidden_size
    layers = len(get_adapter(model).decoder_layers(model))
    dense = prunable_parameters(model, get_adapter(model).scopes(model))

    def share(d: int) -> float:
        return (dense - sum(kept_parameters(model, layer_dimensions(layers, hidden, d, slice_head)))) / dense

    shares = {d: share(d) for d in range(1, hidden + 1)}
    for interval in (round_interval, 1):
        candidates = [d for d in shares if d % interval == 0]
        best = min(candidates, key=lambda d: (abs(shares[d] - sparsity), d))
        if abs(shares[best] - sparsity) <= ROUND_TOLERANCE or interval == 1:
            return best, shares[best], interval
    raise AssertionError("unreachable")


@torch.no_grad()
def fuse_norms(model: nn.Module, *, center_embeddings: bool = False) -> None:
    """Step 1 in place: untie and fold every RMSNorm into its readers, decoder layers wrapped in
    :class:`SlicedDecoderLayer` (identity shortcuts), final norm replaced by :class:`RMSN`. Function-preserving
    (unless ``center_embeddings``)."""
    adapter = get_adapter(model)
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    if head.weight is embedding.weight:
        head.weight = nn.Parameter(embedding.weight.detach().clone(), requires_grad=embedding.weight.requires_grad)
        model.config.tie_word_embeddings = False
    if center_embeddings:  # their fuse_modules; LayerNorm's mean subtraction, not an identity for RMSNorm
        weight = embedding.weight.data
        embedding.weight.data = (weight.double() - weight.double().mean(dim=-1, keepdim=True)).to(weight.dtype)
    hidden = model.config.hidden_size
    layers = adapter.decoder_layers(model)
    for index, (attention, mlp) in enumerate(_layer_scopes(model)):
        layer = layers[index]
        eps = _norm_eps(getattr(layer, ATTENTION_NORM))
        _fold_norm(getattr(layer, ATTENTION_NORM), [model.get_submodule(p.path) for p in attention.producers])
        _fold_norm(getattr(layer, MLP_NORM), [model.get_submodule(p.path) for p in mlp.producers])
        layers[index] = SlicedDecoderLayer(layer, hidden, eps)
    final_norm = model.get_submodule(FINAL_NORM)
    _fold_norm(final_norm, [head])
    parent, _, name = FINAL_NORM.rpartition(".")
    setattr(model.get_submodule(parent), name, RMSN(hidden, _norm_eps(final_norm)))


@torch.no_grad()
def rotate_and_slice(model: nn.Module, calibration: torch.Tensor, dimension: int, *, batch_size: int = 1,
                     slice_head: bool = False, center_embeddings: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """Steps 1-4 on a copy of ``model``: every residual dimension ``dimension`` (``hidden_size`` = rotation only).
    ``calibration`` is ``[rows, seq_len]`` token ids. Returns the sliced copy and the share of each PCA's
    variance that the kept directions hold (embeddings, then per layer: between attention and MLP, output)."""
    sliced = copy.deepcopy(model).eval()
    fuse_norms(sliced, center_embeddings=center_embeddings)
    adapter = get_adapter(sliced)
    layers = adapter.decoder_layers(sliced)
    scopes = _layer_scopes(sliced)
    hidden = sliced.config.hidden_size
    dtype = sliced.get_input_embeddings().weight.dtype
    dims = layer_dimensions(len(layers), hidden, dimension, slice_head)

    captured = first_layer_inputs(sliced, layers, calibration.split(batch_size))
    signals = [hidden_of(args, kwargs) for args, kwargs in captured]  # the residual stream, original basis
    contexts = [kwargs for _, kwargs in captured]
    if any(len(args) > 1 for args, _ in captured):
        raise ValueError("decoder layers called with positional arguments beyond the hidden states")
    kept_variance: list[float] = []

    def principal(xs: list[torch.Tensor], keep: int) -> torch.Tensor:
        values, vectors = pca(xs)
        kept_variance.append(float(values[:keep].sum() / values.sum()))
        return vectors

    basis = principal(signals, dims[0][0])
    embedding = sliced.get_input_embeddings()
    embedding.weight.data = (embedding.weight.data.to(torch.float64) @ basis[:, : dims[0][0]]).to(dtype)
    embedding.embedding_dim = dims[0][0]

    for layer, (attention, mlp), (d_in, d_mid, d_out) in zip(layers, scopes, dims):
        q_in = basis[:, :d_in]
        for piece in attention.producers:
            _rotate_inputs(sliced.get_submodule(piece.path), q_in)
        layer.attn_shortcut_Q = nn.Parameter(q_in.T.to(dtype), requires_grad=False)  # back to the original basis
        inputs = [x @ q_in.to(dtype) for x in signals]
        mid = [layer.attention_block(x, **kwargs) for x, kwargs in zip(inputs, contexts)]
        q_mid = principal(mid, d_mid)[:, :d_mid]
        layer.attn_shortcut_Q = nn.Parameter((q_in.T @ q_mid).to(dtype), requires_grad=False)
        _rotate_outputs(sliced.get_submodule(attention.consumer.path), q_mid)
        for piece in mlp.producers:
            _rotate_inputs(sliced.get_submodule(piece.path), q_mid)
        layer.mlp_shortcut_Q = nn.Parameter(q_mid.T.to(dtype), requires_grad=False)
        signals = [layer(x, **kwargs) for x, kwargs in zip(inputs, contexts)]
        basis = principal(signals, d_out)
        q_out = basis[:, :d_out]
        layer.mlp_shortcut_Q = nn.Parameter((q_mid.T @ q_out).to(dtype), requires_grad=False)
        _rotate_outputs(sliced.get_submodule(mlp.consumer.path), q_out)

    _rotate_inputs(sliced.get_output_embeddings(), basis[:, : dims[-1][2]])
    for param in sliced.parameters():
        param.requires_grad_(False)
    return sliced, {"kept_variance": kept_variance}


def slicegpt_prune(model: nn.Module, calibration: torch.Tensor, sparsity: float, *, batch_size: int = 1,
                   slice_head: bool = False, center_embeddings: bool = False,
                   round_interval: int = ROUND_INTERVAL) -> tuple[nn.Module, float, dict[str, Any]]:
    """SliceGPT at ``sparsity`` = removed share of the prunable (attention + MLP) parameters, the shortcut
    matrices counted as kept. Returns a sliced copy (``model`` unchanged), the achieved share, and details."""
    dimension, achieved, interval = solve_dimension(model, sparsity, round_interval=round_interval,
                                                    slice_head=slice_head)
    sliced, info = rotate_and_slice(model, calibration, dimension, batch_size=batch_size, slice_head=slice_head,
                                    center_embeddings=center_embeddings)
    hidden = model.config.hidden_size
    dense = prunable_parameters(model, get_adapter(model).scopes(model))
    linear = prunable_parameters(sliced, get_adapter(sliced).scopes(sliced))
    layers = get_adapter(sliced).decoder_layers(sliced)
    shortcuts = sum(layer.attn_shortcut_Q.numel() + layer.mlp_shortcut_Q.numel() for layer in layers)
    measured = (dense - linear - shortcuts) / dense
    if abs(measured - achieved) > 1e-12:
        raise AssertionError(f"parameter count {measured} differs from the planned {achieved}")
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head.weight is embedding.weight
    details = {
        "epsilon": 1.0 - dimension / hidden,
        "dimension": dimension,
        "hidden_size": hidden,
        "round_interval": interval,
        "slice_head": slice_head,
        "dense_prunable": dense,
        "sliced_linear": linear,
        "shortcut_params": shortcuts,
        "kept_prunable": linear + shortcuts,
        "requested": sparsity,
        "achieved": measured,
        "embedding_params": (embedding.weight.numel(), sliced.get_input_embeddings().weight.numel()),
        "lm_head_params": (0 if tied else head.weight.numel(), sliced.get_output_embeddings().weight.numel()),
        "lm_head_tied_in_dense": tied,
        "total_params": (count_parameters(model), count_parameters(sliced)),
        "kept_variance": info["kept_variance"],
    }
    return sliced, measured, details
