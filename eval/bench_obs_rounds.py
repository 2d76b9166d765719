"""How many rounds ``--compensate obs`` needs: greedy OBS removal one group at a time against removing
``ceil(removed / rounds)`` groups per round, and against ``lstsq`` on the criterion's choice at the same counts.

Scored on the corpus **validation** split (this chooses a constant, so the test split stays unseen), uniform MLP-only
counts, refit on the pruned inputs, one calibration sample (seed 0):

    python eval/bench_obs_rounds.py                       # SmolLM2-135M, 35% and 50%
    python eval/bench_obs_rounds.py --model reference --sparsities 0.35

Writes eval/results/obs_rounds.{md,json}.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time

from bench_common import RESULTS_DIR, add_cut_arguments, load_float32

from hf_prune import PruningConfig
from hf_prune.adapters import get_adapter
from hf_prune.calibration.statistics import collect_channel_statistics
from hf_prune.corpus import resolve_split_file
from hf_prune.cut.apply import apply_pruning
from hf_prune.cut.compensation import obs
from hf_prune.plan.planner import calibration_ids, make_plan
from hf_prune.quality import fixed_token_set, window_nll

ONE_AT_A_TIME = 10**9


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_cut_arguments(parser)
    parser.add_argument("--rounds", type=int, nargs="+", default=[8, 32, 128, ONE_AT_A_TIME])
    args = parser.parse_args(argv)

    model, tokenizer = load_float32(args.model)
    tokens = fixed_token_set(tokenizer, resolve_split_file(split="validation"), num_windows=args.eval_windows, seq_len=256)
    dense = window_nll(model, tokens, batch_size=args.batch_size)
    base = dict(target="uniform", units="mlp", importance="activation", calibration="reference",
                seq_len=args.seq_len, calibration_samples=args.calibration_samples, seed=0)
    rows = calibration_ids(model, tokenizer, PruningConfig.from_dict(base))
    stats = collect_channel_statistics(model, get_adapter(model).scopes(model), rows, batch_size=args.batch_size,
                                       gram=True)
    results = []
    for sparsity in args.sparsities:
        variants = [("lstsq", None)] + [("obs", rounds) for rounds in args.rounds]
        for compensate, rounds in variants:
            config = PruningConfig.from_dict({**base, "sparsity": sparsity, "compensate": compensate})
            plan = make_plan(model, config, input_ids=rows, statistics=stats)
            pruned = copy.deepcopy(model)
            started = time.perf_counter()
            obs.ROUNDS = rounds or obs.ROUNDS
            apply_pruning(pruned, config, plan)
            seconds = time.perf_counter() - started
            ratio = math.exp(float((window_nll(pruned, tokens, batch_size=args.batch_size) - dense).mean()))
            label = compensate if rounds is None else f"obs, {'one at a time' if rounds == ONE_AT_A_TIME else rounds} rounds"
            results.append({"model": args.model, "sparsity": sparsity, "method": label, "ratio": ratio,
                            "cut_seconds": seconds})
            print(f"{args.model} {sparsity:.2f} {label:28s} ratio {ratio:.3f}  cut {seconds:.0f}s", flush=True)
    write(results, args)
    return results


def write(results: list[dict], args: argparse.Namespace) -> None:
    lines = ["# `--compensate obs`: rounds of greedy removal", "",
             f"Model {args.model}, uniform MLP-only counts, refit on pruned inputs, {args.calibration_samples} x "
             f"{args.seq_len} calibration tokens (seed 0); perplexity ratio on {args.eval_windows} x 256 tokens of "
             "the corpus **validation** split. Cut time: the whole cut on this machine's 2 CPU cores.", "",
             "Reproduce: `python eval/bench_obs_rounds.py " + " ".join(
                 ["--model", args.model, "--sparsities", *map(str, args.sparsities)]) + "`", "",
             "| sparsity | method | perplexity ratio | cut (s) |", "|---|---|---|---|"]
    lines += [f"| {r['sparsity']:.0%} | {r['method']} | {r['ratio']:.3f} | {r['cut_seconds']:.0f} |" for r in results]
    (RESULTS_DIR / "obs_rounds.md").write_text("\n".join(lines) + "\n")
    (RESULTS_DIR / "obs_rounds.json").write_text(json.dumps({"settings": vars(args) | {"model": args.model},
                                                             "rows": results}, indent=1, default=str))


if __name__ == "__main__":
    main()
