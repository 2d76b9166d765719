#!/usr/bin/env python
"""Measure every number eval/README.md states about a trained model, in one reproducible run.

For a checkpoint it reports: lm-eval held-out metrics (``hf_prune.quality.evaluate``), the same
token perplexity from the independent torch rolling loop (their relative difference), the
add-one unigram baseline on the same test tokens, and the paired perplexity on two fixed token
sets drawn with different seeds (the sampling spread a single token set hides), and how much
zeroing a random 25% of every layer's MLP neurons costs (a model too flat to rank pruning
methods loses almost nothing here).

    python scripts/_reference_report.py --model eval/reference --json-out eval/reference/metrics.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hf_prune.corpus import default_corpus_dir, load_documents, resolve_split_file  # noqa: E402
from hf_prune import quality as ev  # noqa: E402


def zero_random_mlp_neurons(model, fraction: float, seed: int):
    """A copy of a Llama-style model with ``fraction`` of each layer's MLP neurons zeroed (seeded).

    Zeroing the ``down_proj`` input columns removes a neuron's contribution exactly, which is what
    structured MLP pruning does before surgery.
    """
    import copy

    import torch

    pruned = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in pruned.model.layers:
            down = layer.mlp.down_proj.weight
            k = int(round(fraction * down.shape[1]))
            down[:, torch.randperm(down.shape[1], generator=gen)[:k]] = 0
    return pruned


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--corpus", type=Path, default=None, help="corpus dir (default $HF_PRUNE_CORPUS or data/corpus)")
    ap.add_argument("--windows", type=int, default=128, help="windows per fixed token set")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--mlp-zero-frac", type=float, default=0.25, help="random MLP neurons zeroed per layer")
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    corpus = args.corpus or default_corpus_dir()
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    seq_len = ev.model_max_length(model)
    report: dict = {"model": str(args.model), "parameters": sum(p.numel() for p in model.parameters()),
                    "config": {k: getattr(model.config, k) for k in (
                        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                        "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings")}}

    t0 = time.time()
    report["lm_eval"] = ev.evaluate(model, tok, test_file=corpus, batch_size=args.batch_size)
    report["lm_eval_seconds"] = round(time.time() - t0, 1)

    t0 = time.time()
    docs = load_documents(resolve_split_file(corpus))
    total_ll, n_tok = 0.0, 0
    for d in docs:
        ll, n = ev.rolling_loglikelihood(model, tok, d, max_length=seq_len)
        total_ll, n_tok = total_ll + ll, n_tok + n
    torch_ppl = math.exp(-total_ll / n_tok)
    report["torch_loop"] = {"token_perplexity": torch_ppl, "num_tokens": n_tok,
                            "seconds": round(time.time() - t0, 1),
                            "rel_diff_vs_lm_eval": abs(torch_ppl / report["lm_eval"]["token_perplexity"] - 1)}

    report["unigram_token_perplexity"] = ev.unigram_perplexity(tok, corpus, corpus)
    report["paired"] = {}
    for seed in (0, 1):
        ts = ev.fixed_token_set(tok, corpus, num_windows=args.windows, seq_len=seq_len, seed=seed)
        report["paired"][f"seed{seed}"] = ev.paired_perplexity(model, token_set=ts, batch_size=args.batch_size)
    vals = list(report["paired"].values())
    report["paired"]["spread_pct"] = 100 * (max(vals) / min(vals) - 1)
    report["paired"]["windows"], report["paired"]["seq_len"] = args.windows, seq_len

    ts = ev.fixed_token_set(tok, corpus, num_windows=args.windows, seq_len=seq_len, seed=0)
    zeroed = zero_random_mlp_neurons(model, args.mlp_zero_frac, seed=0)
    report["mlp_zeroed"] = {"fraction": args.mlp_zero_frac, "seed": 0,
                            **ev.paired_comparison(model, zeroed, ts, batch_size=args.batch_size)}

    text = json.dumps(report, indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
