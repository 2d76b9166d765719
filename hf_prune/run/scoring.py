"""``hf-prune eval``: quality of a checkpoint through lm-eval — the local held-out tasks or any lm-eval task.

Usage::

    hf-prune eval                                   # the embedded default, on the held-out text shipped with it
    hf-prune eval --model pruned/ --json-out metrics.json
    hf-prune eval --model me/llama-pruned --eval-tasks hellaswag,arc_easy --device-map cuda --dtype bfloat16
    hf-prune eval --model DIR --eval-data data/corpus/test.jsonl --eval-limit 50

``--model`` is a local directory or a Hub id, pruned or not (pruned checkpoints load their shapes without
``trust_remote_code``). The flags are those of ``hf-prune`` for the same options. Bad input (missing or corrupt
model, missing text file, unknown task) is one line and exit status 2.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..config import EvalOptions
from ..corpus import default_corpus_dir, resolve_split_file
from ..data import BUILTIN
from ..errors import EXIT_OK, HfPruneError, first_line
from ..io.checkpoint import device_map_for, load_model
from ..quality import LOCAL_TASKS, evaluate


def heldout_text(options: EvalOptions) -> tuple[Path | None, str | None]:
    """The held-out text of the local tasks, and a note when it is the shipped sample for want of a corpus."""
    if not any(task in LOCAL_TASKS for task in options.quality.tasks):
        return None, None
    name = options.quality.heldout
    if name is None and not options.load.is_embedded_default:
        corpus_test = default_corpus_dir() / "test.jsonl"
        if corpus_test.is_file():
            return corpus_test, None
        return resolve_split_file(BUILTIN), (f"held-out text: the sample shipped with hf-prune (no corpus test split "
                                             f"at {corpus_test}; pass --eval-data FILE for text of your own)")
    return resolve_split_file(name or BUILTIN), None


def run_eval(options: EvalOptions) -> int:
    """Score the model; print every metric, and write them as JSON when asked."""
    quality, load = options.quality, options.load
    try:
        test_file, note = heldout_text(options)
        model, tokenizer = load_model(load.model_id, dtype=load.dtype, device_map=device_map_for(load.device_map))
        if tokenizer is None:
            raise HfPruneError(f"{load.model_id} has no tokenizer; lm-eval needs one beside the model")
        started = time.time()
        metrics = evaluate(model, tokenizer, test_file=test_file, tasks=quality.tasks, limit=quality.limit,
                           batch_size=quality.batch_size, mc_items=quality.mc_items)
    except (ValueError, OSError) as error:  # from the libraries underneath: still one line
        raise HfPruneError(first_line(error)) from error
    seconds = time.time() - started
    if note:
        print(note)
    print(f"model: {load.model_id}" + (f"\ntest file: {test_file}" if test_file else ""))
    for key, value in metrics.items():
        print(f"{key:>24}: {value:,.4f}" if not key.startswith("num_") and not key.endswith("_items")
              else f"{key:>24}: {int(value):,d}")
    print(f"{'eval_seconds':>24}: {seconds:.1f}")
    if options.json_out:
        payload = {"model": load.model_id, "test_file": str(test_file) if test_file else None,
                   "tasks": list(quality.tasks), "metrics": metrics, "eval_seconds": seconds}
        try:
            Path(options.json_out).write_text(json.dumps(payload, indent=2) + "\n")
        except OSError as error:
            raise HfPruneError(f"cannot write {options.json_out} ({error.strerror or first_line(error)})") from error
    return EXIT_OK
