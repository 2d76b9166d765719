"""hf-prune side by side with re-implemented peers, same model, same budget, same calibration tokens.

For every model and calibration seed, statistics (channel sums and first-order Taylor sums) are taken
ONCE on the dense model from the same calibration rows; every method then plans at every budget from
them (or from its own pass over the same rows: Wanda-sp's sequential pass, LLM-Pruner's element-wise
gradients, ShortGPT's Block Influence). A plan is evaluated with masks when it is a pure group
removal, and by cutting a copy (hf-prune surgery) when it folds a bias (EMP + bias, FLAP) or deletes
layers (ShortGPT). Quality is the perplexity ratio pruned/dense on fixed held-out windows, paired
(the same windows for every model), with the paired standard error of the mean per-token NLL
difference; the achieved share of prunable (attention + MLP) parameters removed is printed beside
every number.

    HF_HUB_OFFLINE=1 python eval/compare.py --quick                  # reference model, seed 0, 35%
    HF_HUB_OFFLINE=1 python eval/compare.py --models reference smollm2

SmolLM2-135M (``scripts/fetch_smollm2.py``) is the Q4_1-dequantized SmolLM2-135M-Instruct.
Hyperflux trains gates for ``--hyperflux-steps`` + ``--hyperflux-regrowth`` steps of 4 calibration rows
(gate lr 0.01, tick every 10 steps, pressure exponent 3, as ``eval/bench_hyperflux.py``).
Not yet here (see the issue): the lm-eval multiple-choice column and Torch-Pruning.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench_common import EVAL_DIR, REFERENCE_DIR, RESULTS_DIR, save_ratio_figure
from baselines import common, flap, llm_pruner, random_pruning, shortgpt, wanda_sp
from hf_prune import PruningConfig
from hf_prune.adapters import get_adapter
from hf_prune.evaluate import fixed_token_set, window_nll
from hf_prune.masks import GroupMasks, keep_masks
from hf_prune.pruner import apply_pruning, calibration_ids, count_parameters, make_plan
from hf_prune.statistics import CalibrationStatistics, collect_channel_statistics, collect_taylor_statistics

MODELS = {
    "reference": (REFERENCE_DIR, "5M Llama trained here (eval/reference)"),
    "smollm2": (EVAL_DIR / "models" / "smollm2-135m", "SmolLM2-135M-Instruct, Q4_1-dequantized weights"),
}


@dataclass
class Context:
    """One model and one calibration seed: everything a method may read."""

    model: Any
    tokenizer: Any
    scopes: list
    layers: Any
    calibration: torch.Tensor
    stats: CalibrationStatistics
    seed: int
    batch_size: int
    hyperflux: dict[str, Any] = field(default_factory=dict)  # PruningConfig fields of the Hyperflux runs
    cache: dict[str, Any] = field(default_factory=dict)  # per-seed products reused across budgets

    def once(self, key: str, compute: Callable[[], Any]) -> Any:
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]


@dataclass
class Outcome:
    """A method's decision at one budget, ready to evaluate."""

    kept: dict[str, list[int]] | None = None  # evaluate with masks
    model: Any = None  # or a pruned copy
    plan: common.BaselinePlan | None = None  # for sparsity bookkeeping of peers
    achieved: float | None = None
    counts: dict[str, list[int]] | None = None  # kept groups when ``model`` is a cut copy

    def allocation(self) -> dict[str, Any]:
        """What was kept, for the JSON: groups per scope, and removed layers (ShortGPT)."""
        kept = self.kept if self.kept is not None else (self.plan.kept if self.plan else self.counts) or {}
        return {"kept_groups": {name: len(groups) for name, groups in kept.items()},
                "removed_layers": list(self.plan.removed_layers) if self.plan else []}


def hf_prune_method(target: str, units: str, importance: str, compensate: str = "none") -> Callable:
    def run(ctx: Context, sparsity: float) -> Outcome:
        config = PruningConfig(target=target, units=units, sparsity=sparsity, importance=importance,
                               compensate=compensate, calibration="reference", seed=ctx.seed)
        plan = make_plan(ctx.model, config, statistics=ctx.stats)
        if compensate == "none":
            return Outcome(kept=plan.kept)
        pruned = copy.deepcopy(ctx.model)
        report = apply_pruning(pruned, config, plan)
        return Outcome(model=pruned, achieved=report.achieved_sparsity, counts=report.plan)

    return run


def hyperflux_method(ctx: Context, sparsity: float) -> Outcome:
    """Gates trained on the same calibration rows (uniform init, the bench_hyperflux settings)."""
    config = PruningConfig(target="hyperflux", units="all", sparsity=sparsity, calibration="reference",
                           seed=ctx.seed, **ctx.hyperflux)
    return Outcome(kept=make_plan(ctx.model, config, input_ids=ctx.calibration).kept)


def peer(fn: Callable[[Context, float], common.BaselinePlan]) -> Callable:
    def run(ctx: Context, sparsity: float) -> Outcome:
        plan = fn(ctx, sparsity)
        achieved = common.achieved_sparsity(ctx.model, ctx.scopes, plan)
        if plan.channel_means is None and not plan.removed_layers:
            return Outcome(kept=plan.kept, plan=plan, achieved=achieved)
        return Outcome(model=common.materialize(ctx.model, ctx.scopes, plan), plan=plan, achieved=achieved)

    return run


def _random_at_uniform(ctx: Context, sparsity: float) -> common.BaselinePlan:
    config = PruningConfig(target="uniform", units="all", sparsity=sparsity, importance="magnitude")
    counts = random_pruning.kept_counts(make_plan(ctx.model, config).kept)
    return random_pruning.random_plan(ctx.scopes, counts, seed=ctx.seed)


METHODS: dict[str, tuple[str, Callable]] = {  # label -> (who, run)
    "uniform (activation)": ("hf-prune", hf_prune_method("uniform", "all", "activation")),
    "uniform, MLP only (activation)": ("hf-prune", hf_prune_method("uniform", "mlp", "activation")),
    "EMP (activation)": ("hf-prune", hf_prune_method("emp", "all", "activation")),
    "EMP, MLP only (activation)": ("hf-prune", hf_prune_method("emp", "mlp", "activation")),
    "EMP (fluctuation)": ("hf-prune", hf_prune_method("emp", "all", "fluctuation")),
    "EMP + bias (fluctuation)": ("hf-prune", hf_prune_method("emp", "all", "fluctuation", "bias")),
    "Hyperflux (uniform init)": ("hf-prune", hyperflux_method),
    "FLAP": ("peer", peer(lambda c, s: flap.flap_plan(c.model, c.scopes, c.stats, s))),
    "Wanda-sp": ("peer", peer(lambda c, s: wanda_sp.wanda_sp_plan(c.model, c.scopes, c.layers, c.calibration, s,
                                                                  batch_size=c.batch_size))),
    "LLM-Pruner (block-wise, no tuning)": ("peer", peer(lambda c, s: llm_pruner.llm_pruner_plan(
        c.model, c.scopes, c.calibration, s, batch_size=c.batch_size, grads=c.once("taylor-grads", lambda: (
            llm_pruner.elementwise_taylor_gradients(c.model, c.scopes, c.calibration, c.batch_size)))))),
    "ShortGPT (whole layers)": ("peer", peer(lambda c, s: shortgpt.shortgpt_plan(
        c.model, c.scopes, c.layers, c.calibration, s, batch_size=c.batch_size,
        bi=c.once("block-influence", lambda: shortgpt.block_influence(c.model, c.layers, c.calibration, c.batch_size))))),
    "random (uniform allocation)": ("floor", peer(_random_at_uniform)),
}


def evaluate(ctx: Context, outcome: Outcome, tokens: torch.Tensor, batch_size: int) -> torch.Tensor:
    if outcome.model is not None:
        return window_nll(outcome.model, tokens, batch_size=batch_size)
    with GroupMasks(ctx.model, ctx.scopes, keep_masks(ctx.scopes, outcome.kept)):
        return window_nll(ctx.model, tokens, batch_size=batch_size)


def masked_sparsity(ctx: Context, kept: dict[str, list[int]]) -> float:
    return common.achieved_sparsity(ctx.model, ctx.scopes, common.BaselinePlan("", kept))


def run_model(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, description = MODELS.get(name, (Path(name), name))
    if not Path(path).is_dir():
        sys.exit(f"error: {path} not found (for smollm2 run scripts/fetch_smollm2.py first)")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    adapter = get_adapter(model)
    scopes = adapter.scopes(model)
    tokens = fixed_token_set(tokenizer, num_windows=args.eval_windows, seq_len=args.eval_seq_len)
    dense = window_nll(model, tokens, batch_size=args.batch_size)
    params_dense = count_parameters(model)
    print(f"[{name}] {description}: {params_dense:,} parameters, dense perplexity {math.exp(float(dense.mean())):.3f} "
          f"on {tokens.shape[0]} x {tokens.shape[1]} held-out tokens", flush=True)
    rows = []
    for seed in args.seeds:
        config = PruningConfig(importance="activation", calibration="reference", seq_len=args.seq_len,
                               calibration_samples=args.calibration_samples, seed=seed)
        calibration = calibration_ids(model, tokenizer, config)
        started = time.perf_counter()
        stats = collect_channel_statistics(model, scopes, calibration, batch_size=args.batch_size)
        collect_taylor_statistics(model, scopes, calibration, batch_size=args.batch_size, stats=stats)
        print(f"[{name}] seed {seed}: statistics of {calibration.numel():,} calibration tokens in "
              f"{time.perf_counter() - started:.0f}s", flush=True)
        hyperflux = {"steps": args.hyperflux_steps, "regrowth_steps": args.hyperflux_regrowth, "tick_every": 10,
                     "gate_lr": 0.01, "pressure_exponent": 3.0, "batch_size": 4}
        ctx = Context(model, tokenizer, scopes, adapter.decoder_layers(model), calibration, stats, seed,
                      args.batch_size, hyperflux)
        for label in args.methods:
            who, run = METHODS[label]
            for sparsity in args.sparsities:
                started = time.perf_counter()
                try:
                    outcome = run(ctx, sparsity)
                except Exception as error:  # a budget a method cannot meet is a result, not a crash
                    print(f"[{name}] {label} s={sparsity}: skipped ({str(error).splitlines()[0]})", flush=True)
                    rows.append({"model": name, "method": label, "who": who, "seed": seed, "sparsity": sparsity,
                                 "skipped": str(error).splitlines()[0]})
                    continue
                achieved = outcome.achieved if outcome.achieved is not None else masked_sparsity(ctx, outcome.kept)
                nll = evaluate(ctx, outcome, tokens, args.batch_size)
                diff = nll - dense
                row = {
                    "model": name, "method": label, "who": who, "seed": seed, "sparsity": sparsity,
                    "achieved": achieved, "dense_ppl": math.exp(float(dense.mean())),
                    "pruned_ppl": math.exp(float(nll.mean())), "ratio": math.exp(float(diff.mean())),
                    "delta_nll": float(diff.mean()), "delta_nll_se": float(diff.std() / math.sqrt(diff.numel())),
                    "seconds": time.perf_counter() - started, **outcome.allocation(),
                }
                rows.append(row)
                print(f"[{name}] {label:36s} s={sparsity:.2f} seed={seed} achieved={achieved:.3f} "
                      f"ppl {row['dense_ppl']:.2f} -> {row['pruned_ppl']:.2f} (x{row['ratio']:.3f}, "
                      f"dNLL {row['delta_nll']:.4f} ± {row['delta_nll_se']:.4f}) {row['seconds']:.0f}s", flush=True)
    return rows


def render(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"Perplexity ratio pruned/dense on {args.eval_windows} fixed held-out windows of {args.eval_seq_len} tokens "
        f"(corpus test split), mean over calibration seeds {args.seeds}; ± is the paired standard error of the mean "
        f"per-token NLL difference (first seed); achieved share of prunable parameters removed in brackets. "
        f"Calibration: {args.calibration_samples} x {args.seq_len} tokens of the train split, the same rows for every "
        f"method of a seed. SmolLM2 = Q4_1-dequantized SmolLM2-135M-Instruct.",
        "",
    ]
    for model in dict.fromkeys(r["model"] for r in rows):
        lines += [f"### {model}", "", "| method | " + " | ".join(f"{s:.0%}" for s in args.sparsities) + " |",
                  "|---|" + "---|" * len(args.sparsities)]
        for method in args.methods:
            cells = []
            for sparsity in args.sparsities:
                runs = [r for r in rows if r["model"] == model and r["method"] == method and r["sparsity"] == sparsity]
                done = [r for r in runs if "ratio" in r]
                if not done:
                    cells.append("n/a" if not runs else "skipped")
                    continue
                ratio = sum(r["ratio"] for r in done) / len(done)
                achieved = sum(r["achieved"] for r in done) / len(done)
                se = done[0]["delta_nll_se"]
                cells.append(f"{ratio:.3f} ± {se:.3f} ({100 * achieved:.1f}%)")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    figure, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for axis, model in zip(axes[0], models):
        for index, method in enumerate(args.methods):
            points = sorted((r["achieved"], r["ratio"]) for r in rows
                            if r["model"] == model and r["method"] == method and "ratio" in r)
            if points:  # tab20: a distinct colour for each of up to 20 methods (the default cycle has 10)
                axis.plot(*zip(*points), marker="o", label=method, color=plt.cm.tab20(index % 20),
                          linestyle="-" if METHODS[method][0] == "hf-prune" else "--")
        axis.set_title(model)
        axis.set_xlabel("achieved share of prunable parameters removed")
    save_ratio_figure(figure, axes, path)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["reference", "smollm2"],
                        help=f"{', '.join(sorted(MODELS))} or a checkpoint directory")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.2, 0.35, 0.5])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--calibration-samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--eval-windows", type=int, default=64)
    parser.add_argument("--eval-seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--hyperflux-steps", type=int, default=300, help="Hyperflux steps under pressure (4 rows each)")
    parser.add_argument("--hyperflux-regrowth", type=int, default=60, help="Hyperflux steps at zero pressure")
    parser.add_argument("--quick", action="store_true", help="reference model, seed 0, 35%%, 32 eval windows")
    parser.add_argument("--name", default=None, help="output name (default compare[_quick])")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.seeds, args.sparsities, args.eval_windows = ["reference"], [0], [0.35], 32
    name = args.name or ("compare_quick" if args.quick else "compare")
    torch.manual_seed(0)
    started = time.perf_counter()
    rows = [row for model in args.models for row in run_model(model, args)]
    markdown = render(rows, args)
    meta = {**vars(args), "seconds": time.perf_counter() - started, "machine": platform.platform(),
            "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "command": shlex.join(sys.argv)}
    meta["out_dir"] = str(meta["out_dir"])
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (args.out_dir / f"{name}.md").write_text(markdown)
    plot(rows, args, args.out_dir / f"{name}.png")
    print(markdown)
    print(f"wrote {args.out_dir / name}.{{md,json,png}} in {meta['seconds'] / 60:.1f} min")
    return rows


if __name__ == "__main__":
    main()
