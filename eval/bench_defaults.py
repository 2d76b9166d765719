"""Which recipe should `hf-prune` use when the user names none? Measured, on the validation split.

Candidates are the one-shot recipes a user can choose with flags (target x units x importance x
compensation). Each model is calibrated on the text it would get by default (the package's
``builtin`` sample of the train split), scored once per calibration seed, cut at every budget, and
compared with its dense self on fixed windows of the corpus's *validation* split (paired
perplexity): defaults are chosen on validation text so that the test split stays untouched for the
numbers the README reports.

    python scripts/prepare_corpus.py                    # the validation split (10 s)
    HF_HUB_OFFLINE=1 python eval/bench_defaults.py       # eval/results/defaults.{md,json}, ~10 min
"""

from __future__ import annotations

import argparse
import itertools
from collections import defaultdict
from pathlib import Path

import torch
from bench_common import QUIET, REFERENCE_DIR, Bench, Timer, ratio_cell, write_results

from hf_prune import PruningConfig, prune_pretrained
from hf_prune.adapters import get_adapter
from hf_prune.corpus import default_corpus_dir
from hf_prune.data import DEFAULT_MODEL_DIR
from hf_prune.plan.planner import calibration_ids, collect_statistics

#: label -> PruningConfig fields; every data-driven criterion shares one statistics pass per seed
RECIPES = {
    "uniform, magnitude": dict(target="uniform", units="all", importance="magnitude"),
    "uniform, activation": dict(target="uniform", units="all", importance="activation"),
    "uniform MLP-only, activation": dict(target="uniform", units="mlp", importance="activation"),
    "uniform MLP-only, fluctuation": dict(target="uniform", units="mlp", importance="fluctuation"),
    "EMP, activation": dict(target="emp", units="all", importance="activation"),
    "EMP, activation + bias": dict(target="emp", units="all", importance="activation", compensate="bias"),
    "EMP, fluctuation": dict(target="emp", units="all", importance="fluctuation"),
    "EMP, fluctuation + bias": dict(target="emp", units="all", importance="fluctuation", compensate="bias"),
    "EMP MLP-only, activation": dict(target="emp", units="mlp", importance="activation"),
}
#: SmolLM2-135M (Q4_1-dequantized weights) is included once scripts/fetch_smollm2.py has written it
MODELS = {"embedded default": DEFAULT_MODEL_DIR, "reference": REFERENCE_DIR,
          "smollm2-135m": REFERENCE_DIR.parent / "models" / "smollm2-135m"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS),
                        default=[name for name, path in MODELS.items() if (path / "config.json").exists()])
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES), metavar="RECIPE",
                        help="a subset of: " + "; ".join(RECIPES))
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.2, 0.3, 0.5])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--calibration-samples", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--eval-text", type=Path, default=None,
                        help="held-out windows (default: the corpus's validation split)")
    parser.add_argument("--eval-windows", type=int, default=64)
    parser.add_argument("--name", default="defaults")
    args = parser.parse_args()
    eval_text = args.eval_text or default_corpus_dir() / "validation.jsonl"

    cells: dict[tuple, list[dict]] = defaultdict(list)
    rows_out = []
    dense = {}
    for model_name in args.models:
        bench = Bench(MODELS[model_name], eval_windows=args.eval_windows, test_file=eval_text)
        scopes = get_adapter(bench.model).scopes(bench.model)
        for seed in args.seeds:
            base = PruningConfig.from_dict(dict(importance="activation", compensate="bias", calibration="builtin",
                                                calibration_samples=args.calibration_samples, seq_len=args.seq_len,
                                                seed=seed))
            rows = calibration_ids(bench.model, bench.tokenizer, base)
            with Timer() as timer:
                statistics = collect_statistics(bench.model, scopes, base, rows)
            for label, sparsity in itertools.product(args.recipes, args.sparsities):
                recipe = RECIPES[label]
                if recipe["importance"] == "magnitude" and seed != args.seeds[0]:
                    continue  # data-free: every seed gives the same model
                config = PruningConfig.from_dict(dict(sparsity=sparsity, calibration="builtin", seed=seed, **recipe))
                try:
                    model, report = prune_pretrained(bench.fresh_copy(), config, tokenizer=bench.tokenizer,
                                                     input_ids=rows, statistics=statistics, console=QUIET)
                except Exception as error:  # e.g. a budget that whole groups cannot meet
                    print(f"skip {model_name} / {label} / {sparsity}: {error}")
                    continue
                comparison = bench.compare(model)
                dense[model_name] = comparison["dense_ppl"]
                row = {"model": model_name, "recipe": label, "sparsity": sparsity, "seed": seed,
                       "achieved": report.achieved_sparsity, "statistics_seconds": timer.seconds, **comparison}
                rows_out.append(row)
                cells[(model_name, label, sparsity)].append(row)
                print(f"{model_name:16s} {label:32s} s={sparsity:.2f} seed={seed} ratio "
                      f"{comparison['pruned_ppl'] / comparison['dense_ppl']:.3f}", flush=True)
    markdown = render(cells, args, dense, eval_text)
    path = write_results(args.name, rows_out, markdown, {**vars(args), "eval_text": str(eval_text)})
    print(markdown)
    print(f"wrote {path}")


def render(cells, args, dense, eval_text) -> str:
    lines = [
        f"Perplexity ratio pruned/dense on {args.eval_windows} fixed windows of 256 tokens of "
        f"`{Path(eval_text).name}` (dense: " + ", ".join(f"{m} {p:.2f}" for m, p in dense.items()) + "); "
        f"mean ± sd over calibration seeds {args.seeds} ({args.calibration_samples} x {args.seq_len} tokens of "
        "the shipped `builtin` calibration sample); achieved sparsity in brackets. Best per column in bold.",
        "",
    ]
    for model_name in args.models:
        lines += [f"### {model_name}", "",
                  "| recipe | " + " | ".join(f"sparsity {s}" for s in args.sparsities) + " |",
                  "|---|" + "---|" * len(args.sparsities)]
        best = {}
        for sparsity in args.sparsities:
            means = {label: sum(r["pruned_ppl"] / r["dense_ppl"] for r in runs) / len(runs)
                     for label in args.recipes if (runs := cells.get((model_name, label, sparsity)))}
            best[sparsity] = min(means, key=means.get) if means else None
        for label in args.recipes:
            row = [label]
            for sparsity in args.sparsities:
                runs = cells.get((model_name, label, sparsity), [])
                cell = ratio_cell([r["pruned_ppl"] / r["dense_ppl"] for r in runs], [r["achieved"] for r in runs]) \
                    if runs else "n/a"
                row.append(f"**{cell}**" if best[sparsity] == label else cell)
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
