"""Dense and pruned models scored on exactly the same fixed, seeded token windows.

A difference in perplexity measured here is a difference in the model and never in the sample, and
the per-window pairing gives a standard error that the between-window variance does not swamp. This
is what the benchmarks compare methods with; lm-eval (:mod:`hf_prune.quality.harness`) is what users
see.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..corpus import load_documents, resolve_split_file
from ..runtime.modes import eval_mode
from ..runtime.offload import execution_device


def fixed_token_set(
    tokenizer, test_file: str | Path | None = None, *, num_windows: int = 128, seq_len: int = 256,
    seed: int = 0,
) -> torch.Tensor:
    """A fixed ``[num_windows, seq_len]`` LongTensor of held-out tokens for paired comparisons.

    The test documents are tokenized in file order, joined by EOS and cut into non-overlapping
    windows; ``seed`` picks which windows (``torch.Generator`` -- identical on every machine).
    Derive it once, then score every model on it (or save it with :func:`save_token_set`).
    """
    docs = load_documents(resolve_split_file(test_file))
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for row in tokenizer(docs, add_special_tokens=False, verbose=False)["input_ids"]:
        stream.extend(row)
        stream.append(eos)
    n = len(stream) // seq_len
    if n == 0:
        raise ValueError(f"held-out text has {len(stream)} tokens, fewer than one window of {seq_len}")
    windows = torch.tensor(stream[: n * seq_len], dtype=torch.long).view(n, seq_len)
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(n, generator=gen)[: min(num_windows, n)].sort().values
    return windows[pick].clone()


def save_token_set(tokens: torch.Tensor, path: str | Path, **meta: Any) -> None:
    """Save a token set (and how it was made, as string metadata) so later benchmarks reuse exactly the
    same tokens. safetensors, like every tensor file hf-prune writes: loading it runs no code."""
    from safetensors.torch import save_file

    save_file({"tokens": tokens.contiguous()}, str(path), metadata={key: str(value) for key, value in meta.items()})


def load_token_set(path: str | Path) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(path))["tokens"]


@torch.no_grad()
def window_nll(model, token_set: torch.Tensor, *, batch_size: int = 16) -> torch.Tensor:
    """Mean next-token NLL of every window (``[num_windows]`` float64), in order."""
    device = execution_device(model)
    out = []
    with eval_mode(model):
        for batch in token_set.split(batch_size):
            batch = batch.to(device)
            logits = model(input_ids=batch).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1), reduction="none")
            out.append(nll.view(batch.size(0), -1).double().mean(dim=1).cpu())
    return torch.cat(out)


def paired_perplexity(model, tokenizer=None, token_set: torch.Tensor | None = None, *, batch_size: int = 16,
                      test_file: str | Path | None = None) -> float:
    """Perplexity of ``model`` on a fixed token set (every window has the same length).

    ``token_set`` defaults to :func:`fixed_token_set` ``(tokenizer, test_file)`` with seed 0.
    """
    if token_set is None:
        if tokenizer is None:
            raise ValueError("pass a token_set, or a tokenizer to derive the default one")
        token_set = fixed_token_set(tokenizer, test_file)
    return math.exp(float(window_nll(model, token_set, batch_size=batch_size).mean()))


def paired_comparison(dense, pruned, token_set: torch.Tensor, *, batch_size: int = 16,
                      dense_nll: torch.Tensor | None = None) -> dict[str, float]:
    """Dense vs pruned perplexity on the same windows, with a paired standard error.

    Returns ``dense_ppl``, ``pruned_ppl``, ``delta_pct`` (relative perplexity increase, %),
    ``delta_nll`` (mean per-token NLL difference) and ``delta_nll_se`` (standard error of the
    per-window difference): pairing removes the between-window variance that dominates
    unpaired comparisons. ``dense_nll`` (the dense model's :func:`window_nll` on these windows) may be
    passed to score many pruned copies against one dense pass.
    """
    a = dense_nll if dense_nll is not None else window_nll(dense, token_set, batch_size=batch_size)
    b = window_nll(pruned, token_set, batch_size=batch_size)
    diff = b - a
    n = diff.numel()
    se = float(diff.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    dense_ppl, pruned_ppl = math.exp(float(a.mean())), math.exp(float(b.mean()))
    return {
        "dense_ppl": dense_ppl,
        "pruned_ppl": pruned_ppl,
        "delta_pct": 100.0 * (pruned_ppl / dense_ppl - 1.0),
        "delta_nll": float(diff.mean()),
        "delta_nll_se": se,
        "num_windows": float(n),
        "num_tokens": float(n * (token_set.size(1) - 1)),
    }
