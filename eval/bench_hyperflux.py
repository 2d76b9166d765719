"""Hyperflux vs EMP vs uniform on the trained reference model, at the same budgets and calibration rows.

Every method sees the same calibration rows (``--calibration-samples`` x ``--seq-len`` tokens of the
train split): the one-shot methods pass them once to collect statistics; Hyperflux cycles through them
for ``--steps`` + ``--regrowth-steps`` optimizer steps. Pruned copies are scored against the dense
model on the same fixed held-out windows (paired). The run also times one gate step against one full
fine-tuning step (AdamW on every weight) on the same batch, and keeps the trajectory plot of every
Hyperflux run.

    HF_HUB_OFFLINE=1 python eval/bench_hyperflux.py           # ~20 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import shutil
import time

import torch
from bench_common import QUIET, REFERENCE_DIR, RESULTS_DIR, Bench, write_results

from hf_prune import PruningConfig, prune_pretrained
from hf_prune.adapters import get_adapter
from hf_prune.plan.hyperflux import GateSet
from hf_prune.plan.hyperflux.trajectory import plot_trajectory
from hf_prune.plan.planner import calibration_ids, collect_statistics

ONE_SHOT = {  # label -> PruningConfig overrides
    "uniform (activation)": {"target": "uniform", "importance": "activation"},
    "uniform MLP-only (activation)": {"target": "uniform", "units": "mlp", "importance": "activation"},
    "EMP (activation)": {"target": "emp", "importance": "activation"},
}


def time_steps(bench: Bench, rows: torch.Tensor, batch_size: int, repeats: int = 5) -> dict[str, float]:
    """Seconds per optimizer step: gates only (frozen base) vs AdamW on every weight, same batch."""
    model = bench.fresh_copy()
    batch = rows[:batch_size]
    scopes = get_adapter(model).scopes(model)
    gates = GateSet(scopes, {s.name: s.params_per_group(model) for s in scopes})
    gates.init_uniform()
    gate_optimizer = torch.optim.Adam(gates.parameters(), lr=1e-3)
    model.requires_grad_(False)

    def gate_step():
        with gates.masks(model):
            model(batch, labels=batch, use_cache=False).loss.backward()
        gate_optimizer.step()
        gate_optimizer.zero_grad()

    full = bench.fresh_copy().train()
    full_optimizer = torch.optim.AdamW(full.parameters(), lr=1e-5)

    def full_step():
        full(batch, labels=batch, use_cache=False).loss.backward()
        full_optimizer.step()
        full_optimizer.zero_grad()

    timings = {}
    with torch.enable_grad():
        for name, step in (("gate_step_s", gate_step), ("full_finetune_step_s", full_step)):
            step()  # warm-up
            start = time.perf_counter()
            for _ in range(repeats):
                step()
            timings[name] = (time.perf_counter() - start) / repeats
    timings["gate_over_full"] = timings["gate_step_s"] / timings["full_finetune_step_s"]
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REFERENCE_DIR))
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.2, 0.35, 0.5])
    parser.add_argument("--calibration-samples", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--regrowth-steps", type=int, default=60)
    parser.add_argument("--tick-every", type=int, default=10)
    parser.add_argument("--gate-lr", type=float, default=0.01)
    parser.add_argument("--pressure-exponent", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--eval-windows", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="hyperflux_vs_emp")
    args = parser.parse_args()

    bench = Bench(args.model, eval_windows=args.eval_windows)
    common = {"calibration": "reference", "units": "all", "calibration_samples": args.calibration_samples,
              "seq_len": args.seq_len,
              "batch_size": args.batch_size, "seed": args.seed}
    rows = calibration_ids(bench.model, bench.tokenizer, PruningConfig.from_dict(dict(importance="activation", **common)))
    statistics = collect_statistics(bench.model, get_adapter(bench.model).scopes(bench.model),
                                    PruningConfig.from_dict(dict(importance="activation", **common)), rows)
    hyperflux = {"target": "hyperflux", "steps": args.steps, "regrowth_steps": args.regrowth_steps,
                 "tick_every": args.tick_every, "gate_lr": args.gate_lr, "pressure_exponent": args.pressure_exponent}
    methods = {**ONE_SHOT,
               "Hyperflux (uniform init)": hyperflux,
               "Hyperflux (init from activation scores)": {**hyperflux, "gate_init": "scores",
                                                           "importance": "activation"}}
    results = []
    plots = RESULTS_DIR / f"{args.name}_trajectories"
    shutil.rmtree(plots, ignore_errors=True)
    plots.mkdir(parents=True)
    for sparsity in args.sparsities:
        for label, overrides in methods.items():
            config = PruningConfig.from_dict({"sparsity": sparsity, **common, **overrides})
            started = time.perf_counter()
            model, report = prune_pretrained(bench.fresh_copy(), config, tokenizer=bench.tokenizer, input_ids=rows,
                                             statistics=statistics if config.target != "hyperflux" else None,
                                             console=QUIET)
            seconds = time.perf_counter() - started
            comparison = bench.compare(model)
            row = {"method": label, "sparsity": sparsity, "achieved": report.achieved_sparsity, "seconds": seconds,
                   "calibration_rows": int(rows.shape[0]), "calibration_tokens": int(rows.numel()),
                   "token_passes": (config.hyperflux.steps + config.hyperflux.regrowth_steps) * config.calibration.batch_size * rows.shape[1]
                   if config.target == "hyperflux" else int(rows.numel()),
                   "kept": [(r.kv_groups_after, r.neurons_after) for r in report.layers],
                   "details": report.allocation, **comparison}
            results.append(row)
            if report.trajectory:
                names, sizes = zip(*report.pruned_scopes)
                slug = label.split(" ")[0].lower() + ("_scores" if "scores" in label else "")
                plot_trajectory(report.trajectory, names, sizes, plots / f"{slug}_{sparsity}.png")
            print(f"{label:40s} s={sparsity:.2f} achieved={report.achieved_sparsity:.4f} "
                  f"ppl {comparison['dense_ppl']:.2f} -> {comparison['pruned_ppl']:.2f} "
                  f"(+{comparison['delta_pct']:.2f}%) in {seconds:.0f}s", flush=True)

    timings = time_steps(bench, rows, args.batch_size)
    markdown = render(results, args, bench, timings, methods)
    path = write_results(args.name, results, markdown, {**vars(args), "timings": timings})
    print(markdown)
    print(f"wrote {path}; trajectory plots in {plots}")


def render(results, args, bench, timings, methods) -> str:
    dense = results[0]["dense_ppl"]
    lines = [
        f"Perplexity ratio pruned/dense on {bench.token_set.shape[0]} fixed held-out windows of "
        f"{bench.token_set.shape[1]} tokens (dense perplexity {dense:.2f}); achieved sparsity in brackets. Every method "
        f"used the same {args.calibration_samples} x {args.seq_len} calibration tokens (train split, seed {args.seed}); "
        f"Hyperflux: {args.steps} pressure + {args.regrowth_steps} regrowth steps of {args.batch_size} rows, "
        f"gate lr {args.gate_lr}, tick every {args.tick_every} steps.",
        "",
        "| method | " + " | ".join(f"sparsity {s}" for s in args.sparsities)
        + " | seconds (at each sparsity; one-shot statistics are collected once beforehand, not included) |",
        "|---|" + "---|" * (len(args.sparsities) + 1),
    ]
    for label in methods:
        runs = [r for r in results if r["method"] == label]
        cells = [f"{r['pruned_ppl'] / r['dense_ppl']:.3f} ({100 * r['achieved']:.1f}%)" for r in runs]
        lines.append(f"| {label} | " + " | ".join(cells) + " | " + " / ".join(f"{r['seconds']:.0f}" for r in runs) + " |")
    lines += ["", f"One optimizer step on {args.batch_size} x {args.seq_len} tokens: gates only "
              f"{timings['gate_step_s'] * 1000:.0f} ms, full fine-tuning (AdamW, all weights) "
              f"{timings['full_finetune_step_s'] * 1000:.0f} ms: ratio {timings['gate_over_full']:.2f}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
