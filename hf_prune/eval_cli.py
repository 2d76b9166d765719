"""``hf-prune eval``: held-out quality (lm-eval perplexity + next-sentence accuracy) of a checkpoint.

Usage::

    hf-prune eval                                  # the embedded default, on the held-out text shipped with it
    hf-prune eval --model pruned/ --json-out metrics.json
    hf-prune eval --model DIR --test-file data/corpus/test.jsonl --limit 50

Bad input (missing or corrupt model, missing test file) prints one line to stderr and exits 2.
Heavy modules are imported only after the arguments parse, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from .data import BUILTIN
from .errors import first_line

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"
#: the tasks shipped in hf_prune/tasks (kept in step with hf_prune.evaluate.DEFAULT_TASKS by a test)
TASKS = ("hfprune_perplexity", "hfprune_next_sentence")


class _ShowDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default when it says something: not "None" or "False" (the help says what happens)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hf-prune eval", formatter_class=_ShowDefaults,
        description="Held-out quality of a causal LM through lm-eval: rolling-loglikelihood perplexity "
                    "(token / word / byte) and a 4-way next-sentence multiple-choice task built from the same text.",
        epilog="tasks: hfprune_perplexity (token, word and byte perplexity of the held-out documents), "
               "hfprune_next_sentence (which of 4 sentences follows a 3-sentence context; chance = 0.25). "
               "Exit status: 0 done, 2 bad input.")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR,
                   help="checkpoint directory (safetensors); the default is the embedded default model")
    p.add_argument("--test-file", default=None,
                   help=f"held-out text: a .jsonl ('text' field) or .txt file, a corpus directory holding "
                        f"test.jsonl, or '{BUILTIN}' (the held-out sample shipped with hf-prune). Default: "
                        f"'{BUILTIN}' for the embedded default model, otherwise $HF_PRUNE_CORPUS/test.jsonl "
                        "or data/corpus/test.jsonl (python scripts/prepare_corpus.py)")
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated task names, from: " + ", ".join(TASKS))
    p.add_argument("--limit", type=int, default=None, help="at most this many documents / items per task (default: all)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass")
    p.add_argument("--mc-items", type=int, default=500, help="next-sentence items built from the held-out text")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="compute dtype (float32 is the fast one on CPU)")
    p.add_argument("--json-out", type=Path, default=None, help="also write the metrics here as JSON")
    p.add_argument("--verbose", action="store_true", help="show lm-eval's own logging")
    return p


def _fail(msg: str) -> int:
    print(f"hf-prune eval: error: {msg}", file=sys.stderr)
    return 2


def _load(model_dir: Path, dtype: str):
    """Model + tokenizer of a local checkpoint; raises ``HfPruneError`` / ``ValueError`` with a one-line reason."""
    import torch
    from transformers import AutoTokenizer

    from .checkpoint import load_pretrained_model  # also registers the pruned classes

    if not (model_dir / "config.json").is_file():
        raise ValueError(f"model dir {model_dir} not found or has no config.json")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = load_pretrained_model(str(model_dir), dtype=getattr(torch, dtype))
    return model.eval(), tokenizer


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not args.verbose:
        for name in ("lm_eval", "lm-eval", "datasets", "transformers"):
            logging.getLogger(name).setLevel(logging.ERROR)
    from .errors import HfPruneError
    from .evaluate import MissingCorpusError, evaluate, resolve_split_file

    test_file = args.test_file
    if test_file is None and args.model.resolve() == DEFAULT_MODEL_DIR:
        test_file = BUILTIN
    try:
        test_file = resolve_split_file(test_file)
        model, tokenizer = _load(args.model, args.dtype)
    except (MissingCorpusError, HfPruneError, ValueError, OSError) as exc:
        return _fail(first_line(exc))
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    t0 = time.time()
    try:
        metrics = evaluate(model, tokenizer, test_file=test_file, tasks=tasks, limit=args.limit,
                           batch_size=args.batch_size, mc_items=args.mc_items)
    except ValueError as exc:
        return _fail(first_line(exc))
    except KeyboardInterrupt:
        print("\nhf-prune eval: interrupted", file=sys.stderr)
        return 130
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
