"""Held-out quality evaluation of (pruned) causal LMs, through lm-eval and a paired torch loop.

Two complementary measurements live here:

* :func:`evaluate` runs lm-eval (``lm_eval.simple_evaluate`` on an in-memory ``HFLM``) over the
  package's local tasks in ``hf_prune/tasks``: rolling-loglikelihood perplexity of the held-out
  test split (word / byte / token perplexity, bits per byte) and a 4-way next-sentence
  multiple-choice task built deterministically from the same held-out text.
* :func:`fixed_token_set` + :func:`paired_perplexity` / :func:`paired_comparison` score dense and
  pruned models on exactly the same fixed, seeded token windows, so a difference in perplexity is
  a difference in the model and never in the sample.

The corpus comes from ``python scripts/prepare_corpus.py`` (``data/corpus`` or
``$HF_PRUNE_CORPUS``). The test split is only ever *evaluated* on -- never trained or calibrated on.

This module deliberately imports nothing else from ``hf_prune`` and imports lm-eval lazily
(it takes seconds to import).
"""

from __future__ import annotations

import bisect
import json
import math
import os
import random
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

PERPLEXITY_TASK = "hfprune_perplexity"
NEXT_SENTENCE_TASK = "hfprune_next_sentence"
DEFAULT_TASKS: tuple[str, ...] = (PERPLEXITY_TASK, NEXT_SENTENCE_TASK)
TASKS_DIR = Path(__file__).resolve().parent / "tasks"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"
_REPO_ROOT = Path(__file__).resolve().parent.parent


class MissingCorpusError(ValueError):
    """The held-out text is missing; the message names the file and the command that makes it."""


# --------------------------------------------------------------------------------------------
# Corpus location and loading
# --------------------------------------------------------------------------------------------


def default_corpus_dir() -> Path:
    """``$HF_PRUNE_CORPUS``, else ``./data/corpus``, else ``data/corpus`` beside the source tree."""
    env = os.environ.get("HF_PRUNE_CORPUS")
    if env:
        return Path(env)
    local = Path("data/corpus")
    return local if local.exists() else _REPO_ROOT / "data" / "corpus"


def resolve_split_file(path: str | Path | None = None, split: str = "test") -> Path:
    """The JSONL file of ``split`` (a file, a corpus dir, ``builtin``, or the default corpus); raise if missing.

    ``builtin`` is the held-out sample shipped in :mod:`hf_prune.data` (a sample of the test split).
    """
    from .data import BUILTIN, HELDOUT_FILE

    if str(path) == BUILTIN:
        return HELDOUT_FILE
    p = Path(path) if path is not None else default_corpus_dir()
    if p.is_dir() or path is None:
        p = p / f"{split}.jsonl"
    if not p.is_file():
        raise MissingCorpusError(
            f"held-out text {p} not found: run `python scripts/prepare_corpus.py` (or set HF_PRUNE_CORPUS), "
            f"pass a .jsonl/.txt file, or use '{BUILTIN}' for the small held-out sample shipped with hf-prune"
        )
    return p


def load_documents(path: str | Path) -> list[str]:
    """Documents of a ``.jsonl`` file (``text`` field) or a ``.txt`` file (blank-line separated)."""
    p = Path(path)
    raw = p.read_text(encoding="utf-8")
    if p.suffix == ".txt":
        return [d.strip() for d in re.split(r"\n\s*\n", raw) if d.strip()]
    docs = []
    for n, line in enumerate(raw.splitlines(), 1):
        if line.strip():
            try:
                docs.append(json.loads(line)["text"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{p}:{n}: expected a JSON object with a 'text' field ({exc})") from None
    if not docs:
        raise ValueError(f"{p} contains no documents")
    return docs


# --------------------------------------------------------------------------------------------
# Next-sentence multiple choice, built from held-out text
# --------------------------------------------------------------------------------------------

_SENT_RE = re.compile(r"(?<=[.!?])[\"'\u201d\u2019)]*\s+|\n+")


def split_sentences(text: str) -> list[str]:
    """Rough sentence split on ``.!?`` and line breaks: good enough to make candidate sentences."""
    return [s.strip() for s in _SENT_RE.split(text) if s and s.strip()]


def build_next_sentence_items(
    docs: Sequence[str], *, num_items: int = 500, num_choices: int = 4, seed: int = 1234,
    context_sentences: int = 3, min_chars: int = 30, max_chars: int = 200,
) -> list[dict[str, Any]]:
    """Deterministic "which sentence comes next?" items from held-out documents.

    Each item takes ``context_sentences`` consecutive sentences of one document as context; the
    answer is the sentence that follows, the distractors are sentences of similar length drawn
    from *other* documents, so guessing scores ``1/num_choices``. Same docs + seed -> same items.
    """
    rng = random.Random(seed)
    per_doc = [split_sentences(d) for d in docs]
    pool = [(i, s) for i, sents in enumerate(per_doc) for s in sents if min_chars <= len(s) <= max_chars]
    pool.sort(key=lambda t: len(t[1]))
    lengths = [len(s) for _, s in pool]
    spots = [(i, j) for i, sents in enumerate(per_doc) for j in range(context_sentences, len(sents))
             if min_chars <= len(sents[j]) <= max_chars]
    rng.shuffle(spots)
    items = []
    for doc_i, j in spots[:num_items]:
        answer = per_doc[doc_i][j]
        distractors = _similar_length_sentences(pool, lengths, answer, doc_i, num_choices - 1, rng)
        if len(distractors) < num_choices - 1:
            continue
        choices = distractors + [answer]
        rng.shuffle(choices)
        context = " ".join(per_doc[doc_i][j - context_sentences : j])
        items.append({"context": context, "choices": choices, "label": choices.index(answer)})
    return items


def _similar_length_sentences(pool, lengths, answer: str, doc_i: int, k: int, rng: random.Random) -> list[str]:
    """``k`` distinct sentences from other documents whose length is close to ``answer``'s.

    Matching lengths stops a model from winning on length priors alone.
    """
    centre = bisect.bisect_left(lengths, len(answer))
    lo, hi = max(0, centre - 40), min(len(pool), centre + 40)
    window = [s for i, s in pool[lo:hi] if i != doc_i and s != answer]
    window = sorted(set(window))
    rng.shuffle(window)
    return window[:k]


# --------------------------------------------------------------------------------------------
# lm-eval
# --------------------------------------------------------------------------------------------


def _write_runtime_tasks(workdir: Path, test_file: Path, docs: list[str], tasks: Sequence[str], mc_items: int) -> None:
    """Copy the shipped task YAMLs into ``workdir`` with their ``data_files`` filled in.

    lm-eval's ``json`` loader needs concrete paths, which are only known at run time (the
    corpus location is configurable), so the YAMLs ship with ``data_files: null``.
    """
    import yaml

    data = {PERPLEXITY_TASK: test_file}
    if NEXT_SENTENCE_TASK in tasks:
        mc_file = workdir / "next_sentence.jsonl"
        with open(mc_file, "w", encoding="utf-8") as fh:
            for item in build_next_sentence_items(docs, num_items=mc_items):
                fh.write(json.dumps(item) + "\n")
        data[NEXT_SENTENCE_TASK] = mc_file
    for name in tasks:
        src = TASKS_DIR / f"{name}.yaml"
        if not src.exists():
            known = ", ".join(sorted(p.stem for p in TASKS_DIR.glob("*.yaml")))
            raise ValueError(f"unknown task {name!r} (known: {known})")
        cfg = yaml.safe_load(src.read_text())
        cfg.setdefault("dataset_kwargs", {})["data_files"] = {"test": str(data[name])}
        (workdir / src.name).write_text(yaml.safe_dump(cfg, sort_keys=False))


def make_lm(model, tokenizer, *, batch_size: int = 16, max_length: int | None = None):
    """Wrap an in-memory model for lm-eval (``HFLM``), with the context length the model was trained on."""
    from lm_eval.models.huggingface import HFLM

    class _HFLM(HFLM):
        """HFLM whose rolling loglikelihood does not draw a fresh progress bar for every batch."""

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
            quiet = disable_tqdm or override_bs is not None  # override_bs: called per rolling batch
            return super()._loglikelihood_tokens(requests, disable_tqdm=quiet, override_bs=override_bs)

    return _HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
                 max_length=max_length or model_max_length(model))


def model_max_length(model) -> int:
    """Context length from the config (``max_position_embeddings``): RoPE is untrained beyond it."""
    cfg = model.config
    for attr in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(cfg, attr, None)
        if value:
            return int(value)
    return 2048


def evaluate(
    model,
    tokenizer,
    *,
    test_file: str | Path | None = None,
    tasks: Sequence[str] = DEFAULT_TASKS,
    limit: int | float | None = None,
    batch_size: int = 16,
    mc_items: int = 500,
    max_length: int | None = None,
) -> dict[str, float]:
    """Held-out quality of ``model`` through lm-eval; returns a flat dict of floats.

    Keys: ``token_perplexity``, ``word_perplexity``, ``byte_perplexity``, ``bits_per_byte``,
    ``num_docs``, ``num_tokens`` (perplexity task) and ``next_sentence_acc``,
    ``next_sentence_acc_norm``, ``next_sentence_items`` (multiple-choice task).
    ``limit`` caps the documents/items per task (lm-eval semantics: int = count, float = fraction).
    """
    from lm_eval.evaluator import evaluate as lm_eval_evaluate
    from lm_eval.tasks import TaskManager

    path = resolve_split_file(test_file)
    docs = load_documents(path)
    tasks = list(tasks)
    lm = make_lm(model, tokenizer, batch_size=batch_size, max_length=max_length)
    with tempfile.TemporaryDirectory(prefix="hfprune_tasks_") as tmp:
        _write_runtime_tasks(Path(tmp), path, docs, tasks, mc_items)
        manager = TaskManager(include_path=tmp, include_defaults=False)
        was_training = model.training
        model.eval()
        try:
            # lm-eval's evaluate() on an in-memory model and our task dict: simple_evaluate would add
            # only model construction, seeding (which would reset the caller's global RNGs in the middle
            # of a seeded pruning run) and run metadata, whose `git describe` prints "fatal: not a git
            # repository" on the user's terminal outside a checkout. The tasks are 0-shot and fixed.
            out = lm_eval_evaluate(lm=lm, task_dict=manager.load(tasks), limit=limit, bootstrap_iters=0,
                                   log_samples=True, verbosity="ERROR")
        finally:
            model.train(was_training)
    return _collect_metrics(out, lm)


def _collect_metrics(out: dict[str, Any], lm) -> dict[str, float]:
    """Flatten lm-eval's results; token perplexity is recomputed from the per-document samples.

    lm-eval reports word and byte perplexity; token perplexity needs the token count, which is
    taken with the very tokenizer call lm-eval used (``lm.tok_encode``), so it is exact.
    """
    res: dict[str, float] = {}
    if PERPLEXITY_TASK in out["results"]:
        r = out["results"][PERPLEXITY_TASK]
        for metric in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
            res[metric] = float(r[f"{metric},none"])
        samples = out["samples"][PERPLEXITY_TASK]
        total_ll = sum(float(s["filtered_resps"][0]) for s in samples)
        n_tokens = sum(len(lm.tok_encode(s["doc"]["text"])) for s in samples)
        res["token_perplexity"] = math.exp(-total_ll / n_tokens)
        res["num_docs"] = float(len(samples))
        res["num_tokens"] = float(n_tokens)
    if NEXT_SENTENCE_TASK in out["results"]:
        r = out["results"][NEXT_SENTENCE_TASK]
        res["next_sentence_acc"] = float(r["acc,none"])
        res["next_sentence_acc_norm"] = float(r["acc_norm,none"])
        res["next_sentence_items"] = float(len(out["samples"][NEXT_SENTENCE_TASK]))
    return res


# --------------------------------------------------------------------------------------------
# Plain torch reference loop (what lm-eval's rolling loglikelihood computes)
# --------------------------------------------------------------------------------------------


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
    device = next(model.parameters()).device
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


# --------------------------------------------------------------------------------------------
# Paired perplexity on a fixed token set
# --------------------------------------------------------------------------------------------


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
    """Save a token set (and how it was made) so later benchmarks reuse exactly the same tokens."""
    torch.save({"tokens": tokens, "meta": meta}, path)


def load_token_set(path: str | Path) -> torch.Tensor:
    return torch.load(path, weights_only=True)["tokens"]


@torch.no_grad()
def window_nll(model, token_set: torch.Tensor, *, batch_size: int = 16) -> torch.Tensor:
    """Mean next-token NLL of every window (``[num_windows]`` float64), in order."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        for batch in token_set.split(batch_size):
            batch = batch.to(device)
            logits = model(input_ids=batch).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1), reduction="none")
            out.append(nll.view(batch.size(0), -1).double().mean(dim=1).cpu())
    finally:
        model.train(was_training)
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


# --------------------------------------------------------------------------------------------
# Baseline
# --------------------------------------------------------------------------------------------


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
