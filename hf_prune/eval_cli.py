"""``hf-prune eval``: held-out quality (lm-eval perplexity + next-sentence accuracy) of a checkpoint.

Usage::

    hf-prune eval                                  # the embedded default model
    hf-prune eval --model runs/reference/final --json-out metrics.json
    hf-prune eval --model DIR --test-file data/corpus/test.jsonl --limit 50

Bad input (missing model dir, missing test file) prints one line to stderr and exits 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from hf_prune.errors import first_line
from hf_prune.evaluate import DEFAULT_MODEL_DIR, DEFAULT_TASKS, MissingCorpusError, evaluate, resolve_split_file


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hf-prune eval", description="Held-out quality of a causal LM through lm-eval.")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR,
                   help="HF checkpoint dir (default: the embedded default model)")
    p.add_argument("--test-file", type=Path, default=None,
                   help="held-out JSONL ('text' field) or corpus dir (default: $HF_PRUNE_CORPUS or data/corpus)")
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help="comma-separated task names")
    p.add_argument("--limit", type=int, default=None, help="at most this many documents / items per task")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--mc-items", type=int, default=500, help="next-sentence items built from the test text")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="compute dtype (float32 is the fast one on CPU)")
    p.add_argument("--json-out", type=Path, default=None, help="also write the metrics here as JSON")
    p.add_argument("--verbose", action="store_true", help="show lm-eval's own logging")
    return p


def _fail(msg: str) -> int:
    print(f"hf-prune eval: error: {msg}", file=sys.stderr)
    return 2


def _load(model_dir: Path, dtype: str):
    """Load model + tokenizer offline-friendly; raises ``ValueError`` with a one-line reason."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (model_dir / "config.json").is_file():
        raise ValueError(f"model dir {model_dir} not found or has no config.json")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    return model.eval(), tokenizer


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not args.verbose:
        for name in ("lm_eval", "lm-eval", "datasets", "transformers"):
            logging.getLogger(name).setLevel(logging.ERROR)
    try:
        test_file = resolve_split_file(args.test_file)
        model, tokenizer = _load(args.model, args.dtype)
    except (MissingCorpusError, ValueError, OSError) as exc:
        return _fail(first_line(exc))
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    t0 = time.time()
    try:
        metrics = evaluate(model, tokenizer, test_file=test_file, tasks=tasks, limit=args.limit,
                           batch_size=args.batch_size, mc_items=args.mc_items)
    except ValueError as exc:
        return _fail(first_line(exc))
    seconds = time.time() - t0
    print(f"model: {args.model}\ntest file: {test_file}")
    for key, value in metrics.items():
        print(f"{key:>24}: {value:,.4f}" if not key.startswith("num_") and not key.endswith("_items")
              else f"{key:>24}: {int(value):,d}")
    print(f"{'eval_seconds':>24}: {seconds:.1f}")
    if args.json_out:
        payload = {"model": str(args.model), "test_file": str(test_file), "metrics": metrics, "eval_seconds": seconds}
        args.json_out.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
