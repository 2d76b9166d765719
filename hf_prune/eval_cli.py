"""``hf-prune eval``: quality of a checkpoint through lm-eval — the local held-out tasks or any lm-eval task.

Usage::

    hf-prune eval                                   # the embedded default, on the held-out text shipped with it
    hf-prune eval --model pruned/ --json-out metrics.json
    hf-prune eval --model me/llama-pruned --tasks hellaswag,arc_easy --device cuda --dtype bfloat16 --batch-size 32
    hf-prune eval --model DIR --test-file data/corpus/test.jsonl --limit 50

``--model`` is a local directory or a Hub id, pruned or not (pruned checkpoints load their shapes without
``trust_remote_code``). Bad input (missing or corrupt model, missing test file, unknown task) prints one line
to stderr and exits 2. Heavy modules are imported only after the arguments parse, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from .data import BUILTIN, DEFAULT_MODEL_DIR
from .errors import first_line
from .quality.local_tasks import LOCAL_TASKS


class _ShowDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default when it says something: not "None" or "False" (the help says what happens)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hf-prune eval", formatter_class=_ShowDefaults,
        description="Quality of a causal LM through lm-eval (simple_evaluate): the local held-out tasks, or any "
                    "lm-eval task by name.",
        epilog="local tasks: hfprune_perplexity (token, word and byte perplexity of the held-out documents), "
               "hfprune_next_sentence (which of 4 sentences follows a 3-sentence context; chance = 0.25). Any other "
               "name is an lm-eval task (`lm-eval ls tasks`), which downloads its data. "
               "Exit status: 0 done, 2 bad input.")
    p.add_argument("--model", default=str(DEFAULT_MODEL_DIR),
                   help="local checkpoint directory or Hub model id (safetensors), pruned or not; the default is "
                        "the embedded default model")
    p.add_argument("--tasks", default=",".join(LOCAL_TASKS),
                   help="comma-separated task names: the local tasks " + ", ".join(LOCAL_TASKS) +
                        ", or any lm-eval task (hellaswag, arc_easy, ...)")
    p.add_argument("--test-file", default=None,
                   help=f"held-out text of the local tasks: a .jsonl ('text' field) or .txt file, a corpus directory "
                        f"holding test.jsonl, or '{BUILTIN}' (the held-out sample shipped with hf-prune). Default: "
                        f"'{BUILTIN}' for the embedded default model, otherwise $HF_PRUNE_CORPUS/test.jsonl "
                        "or data/corpus/test.jsonl (python scripts/prepare_corpus.py)")
    p.add_argument("--limit", type=int, default=None, help="at most this many documents / items per task (default: all)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass")
    p.add_argument("--device", default=None,
                   help="where the model runs: cpu, cuda, cuda:1, ..., or 'auto' to spread it over the GPUs and CPU "
                        "(accelerate's device_map); default: cuda when available, else cpu")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="compute dtype; 'auto' keeps the checkpoint's dtype on a GPU and uses float32 on a CPU, "
                        "where half precision is many times slower")
    p.add_argument("--mc-items", type=int, default=500, help="next-sentence items built from the held-out text")
    p.add_argument("--json-out", type=Path, default=None, help="also write the metrics here as JSON")
    p.add_argument("--verbose", action="store_true", help="show lm-eval's own logging")
    return p


def _fail(msg: str) -> int:
    print(f"hf-prune eval: error: {msg}", file=sys.stderr)
    return 2


def _device_map(device: str | None):
    import torch

    if device == "auto":
        return "auto"
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return {"": device}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.verbose:
        for name in ("lm_eval", "lm-eval", "datasets", "transformers"):
            logging.getLogger(name).setLevel(logging.ERROR)
    from .checkpoint import load_model
    from .corpus import resolve_split_file
    from .errors import HfPruneError
    from .quality import evaluate

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    local = any(task in LOCAL_TASKS for task in tasks)
    test_file = args.test_file
    if test_file is None and Path(args.model).expanduser().resolve() == DEFAULT_MODEL_DIR:
        test_file = BUILTIN
    for name, value in (("--batch-size", args.batch_size), ("--limit", args.limit), ("--mc-items", args.mc_items)):
        if value is not None and value < 1:
            return _fail(f"{name} must be a positive integer, got {value}")
    try:
        test_file = resolve_split_file(test_file) if local else None
        model, tokenizer = load_model(args.model, dtype=args.dtype, device_map=_device_map(args.device))
        if tokenizer is None:
            raise HfPruneError(f"{args.model} has no tokenizer; lm-eval needs one beside the model")
        t0 = time.time()
        metrics = evaluate(model, tokenizer, test_file=test_file, tasks=tasks, limit=args.limit,
                           batch_size=args.batch_size, mc_items=args.mc_items)
    except (HfPruneError, ValueError, OSError) as exc:
        return _fail(first_line(exc))
    except KeyboardInterrupt:
        print("\nhf-prune eval: interrupted", file=sys.stderr)
        return 130
    seconds = time.time() - t0
    print(f"model: {args.model}" + (f"\ntest file: {test_file}" if test_file else ""))
    for key, value in metrics.items():
        print(f"{key:>24}: {value:,.4f}" if not key.startswith("num_") and not key.endswith("_items")
              else f"{key:>24}: {int(value):,d}")
    print(f"{'eval_seconds':>24}: {seconds:.1f}")
    if args.json_out:
        payload = {"model": str(args.model), "test_file": str(test_file) if test_file else None, "tasks": tasks,
                   "metrics": metrics, "eval_seconds": seconds}
        args.json_out.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
