"""Plain torch re-implementations that check lm-eval and give the floor a model must beat.

:func:`rolling_loglikelihood` computes what lm-eval's rolling loglikelihood computes, independently, so
the tests can hold the harness to it; :func:`unigram_perplexity` is the add-one unigram model every
trained LM must clearly beat, in the same tokens.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..corpus import load_documents, resolve_split_file
from ..runtime.offload import execution_device
from .harness import model_max_length


@torch.no_grad()
def rolling_loglikelihood(model, tokenizer, text: str, *, max_length: int | None = None,
                          prefix_token_id: int | None = None) -> tuple[float, int]:
    """Sum of log p(token) over ``text`` and its token count, with lm-eval's rolling windows.

    The text is encoded without special tokens and prefixed by BOS (else EOS); it is scored in
    disjoint windows of ``max_length`` predicted tokens, each window seeing as much preceding
    text as fits (the last, shorter window is right-aligned to a full context). This is an
    independent re-implementation used to check lm-eval and to score text without it.
    """
    max_len = max_length or model_max_length(model)
    prefix = prefix_token_id if prefix_token_id is not None else (
        tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id)
    ids = tokenizer.encode(text, add_special_tokens=False)
    full = torch.tensor([prefix] + ids, dtype=torch.long)  # full[k + 1] is the k-th text token
    device = execution_device(model)
    total, start = 0.0, 0  # start = index (in ids) of the first token predicted by this window
    while start < len(ids):
        end = min(start + max_len, len(ids))  # predict ids[start:end]
        ctx_start = max(0, end - max_len)  # window = full[ctx_start : end], predicting full[.. + 1]
        inp = full[ctx_start:end].unsqueeze(0).to(device)
        logits = model(input_ids=inp).logits[0].float()
        logp = torch.log_softmax(logits, dim=-1)
        targets = full[ctx_start + 1 : end + 1].to(device)
        token_lp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        total += float(token_lp[start - ctx_start :].sum())
        start = end
    return total, len(ids)


def unigram_perplexity(tokenizer, train_file: str | Path | None = None, test_file: str | Path | None = None) -> float:
    """Token perplexity of an add-one-smoothed unigram model fit on *train*, scored on *test*.

    The floor any trained LM must clearly beat, measured in the same tokens (same tokenizer,
    EOS after each document, as in :func:`fixed_token_set`).
    """
    def counts(path: Path) -> torch.Tensor:
        c = torch.zeros(len(tokenizer), dtype=torch.float64)
        for row in tokenizer(load_documents(path), add_special_tokens=False)["input_ids"]:
            c += torch.bincount(torch.tensor(row + [tokenizer.eos_token_id]), minlength=len(tokenizer)).double()
        return c

    train = counts(resolve_split_file(train_file, "train"))
    test = counts(resolve_split_file(test_file, "test"))
    logp = torch.log((train + 1) / (train.sum() + train.numel()))
    return math.exp(float(-(test * logp).sum() / test.sum()))
