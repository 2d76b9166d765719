"""EMP vs uniform allocation on the trained reference model, at the same budget.

Grid: {uniform, EMP, uniform-MLP-only} x {magnitude, activation, fluctuation, taylor} x sparsity
{0.2, 0.35, 0.5} x compensation {none, bias}; data-driven criteria over several calibration seeds
(the calibration sample is the only randomness). Every pruned copy is scored against the dense model
on the same fixed held-out windows (paired), and the *achieved* sparsity is reported beside each
number. Statistics are collected once per (criterion, seed) on the dense model and reused for every
budget, so all runs of a seed see exactly the same calibration tokens.

    HF_HUB_OFFLINE=1 python eval/bench_emp.py            # ~15 min on 2 CPU cores
    HF_HUB_OFFLINE=1 python eval/bench_emp.py --quick    # one seed, fewer cells: a smoke run
"""

from __future__ import annotations

import argparse
import itertools
from collections import defaultdict

import torch
from bench_common import QUIET, REFERENCE_DIR, RESULTS_DIR, Bench, Timer, ratio_cell, save_ratio_figure, write_results

from hf_prune import PruningConfig, prune_pretrained
from hf_prune.adapters import get_adapter
from hf_prune.plan.planner import calibration_ids, collect_statistics

ALLOCATIONS = {  # label -> (target, units)
    "uniform": ("uniform", "all"),
    "EMP": ("emp", "all"),
    "uniform, MLP only": ("uniform", "mlp"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REFERENCE_DIR))
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.2, 0.35, 0.5])
    parser.add_argument("--importances", nargs="+", default=["magnitude", "activation", "fluctuation", "taylor"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--calibration-samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--eval-windows", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="seed 0, sparsity 0.35, no compensation sweep")
    parser.add_argument("--name", default="emp_vs_uniform")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.sparsities = [0], [0.35]

    bench = Bench(args.model, eval_windows=args.eval_windows)
    dense_scopes = get_adapter(bench.model).scopes(bench.model)
    results = []
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for importance, seed in itertools.product(args.importances, args.seeds):
        if importance == "magnitude" and seed != args.seeds[0]:
            continue  # data-free: every seed would give the same model
        base = PruningConfig.from_dict(dict(importance=importance, compensate="bias", calibration="reference",
                                            calibration_samples=args.calibration_samples, seq_len=args.seq_len,
                                            seed=seed))
        rows = calibration_ids(bench.model, bench.tokenizer, base)
        with Timer() as timer:
            statistics = collect_statistics(bench.model, dense_scopes, base, rows)
        grid = list(itertools.product(ALLOCATIONS.items(), args.sparsities, ["none", "bias"]))
        for (label, (target, units)), sparsity, compensate in grid:
            config = PruningConfig(target=target, units=units, sparsity=sparsity, importance=importance,
                                   compensate=compensate, calibration="reference", seed=seed)
            try:
                model, report = prune_pretrained(bench.fresh_copy(), config, tokenizer=bench.tokenizer,
                                                 input_ids=rows, statistics=statistics, console=QUIET)
            except Exception as error:  # e.g. a budget uniform cannot meet with whole groups
                print(f"skip {label} {importance} {sparsity} {compensate}: {error}")
                continue
            comparison = bench.compare(model)
            row = {"allocation": label, "importance": importance, "sparsity": sparsity, "compensate": compensate,
                   "seed": seed, "achieved": report.achieved_sparsity, "beta": report.allocation.get("beta"),
                   "calibration_tokens": int(rows.numel()), "statistics_seconds": timer.seconds,
                   "kept": [(r.kv_groups_after, r.neurons_after) for r in report.layers], **comparison}
            results.append(row)
            cells[(label, importance, compensate, sparsity)].append(row)
            print(f"{label:18s} {importance:11s} comp={compensate:4s} s={sparsity:.2f} seed={seed} "
                  f"achieved={report.achieved_sparsity:.3f} ppl {comparison['dense_ppl']:.2f} -> "
                  f"{comparison['pruned_ppl']:.2f} (+{comparison['delta_pct']:.2f}% ± "
                  f"{100 * comparison['delta_nll_se']:.2f})", flush=True)

    markdown = render(cells, args, bench, results)
    path = write_results(args.name, results, markdown, vars(args))
    plot(cells, args, RESULTS_DIR / f"{args.name}.png")
    print(markdown)
    print(f"wrote {path} and {RESULTS_DIR / (args.name + '.png')}")


def render(cells, args, bench, results) -> str:
    dense_ppl = results[0]["dense_ppl"] if results else float("nan")
    lines = [
        f"Perplexity ratio pruned/dense on {bench.token_set.shape[0]} fixed held-out windows of "
        f"{bench.token_set.shape[1]} tokens (dense perplexity {dense_ppl:.2f}); mean ± sd over calibration "
        f"seeds {args.seeds} (magnitude: data-free, one run); achieved sparsity in brackets. Calibration: "
        f"{args.calibration_samples} x {args.seq_len} tokens of the train split, the same for every cell of a seed.",
        "",
        "| importance | compensation | allocation | " + " | ".join(f"sparsity {s}" for s in args.sparsities) + " |",
        "|---|---|---|" + "---|" * len(args.sparsities),
    ]
    for importance in args.importances:
        for compensate in ("none", "bias"):
            for label in ALLOCATIONS:
                row = [importance, compensate, label]
                for sparsity in args.sparsities:
                    runs = cells.get((label, importance, compensate, sparsity), [])
                    ratios = [r["pruned_ppl"] / r["dense_ppl"] for r in runs]
                    row.append(ratio_cell(ratios, [r["achieved"] for r in runs]) if runs else "n/a")
                lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot(cells, args, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(args.importances), figsize=(4.2 * len(args.importances), 3.8), sharey=True,
                                squeeze=False)
    for axis, importance in zip(axes[0], args.importances):
        for label, compensate in itertools.product(ALLOCATIONS, ("none", "bias")):
            points = []
            for sparsity in args.sparsities:
                runs = cells.get((label, importance, compensate, sparsity), [])
                if runs:
                    points.append((sum(r["achieved"] for r in runs) / len(runs),
                                   sum(r["pruned_ppl"] / r["dense_ppl"] for r in runs) / len(runs)))
            if points:
                xs, ys = zip(*points)
                axis.plot(xs, ys, marker="o", linestyle="-" if compensate == "bias" else "--",
                          label=f"{label}, comp {compensate}")
        axis.set_title(importance)
        axis.set_xlabel("achieved sparsity")
    save_ratio_figure(figure, axes, path)


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
