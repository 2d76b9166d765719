"""Recovery after the cut, measured: what a budget of tokens buys back with a LoRA or with every weight trained, on
the language-modelling loss (LM) or distilled from the dense teacher (KD).

The model is cut once per sparsity with the recipe (``recipes/search-lstsq.yaml``: the search with least squares),
then each method trains a copy of the cut model with ``hf_prune.recovery.distill`` — the same Trainer, schedule
(5% warm-up, cosine to a tenth of the peak) and rows for all four, so only the loss and the trained parameters
differ: LoRA-LM, full-LM, LoRA-KD, full-KD. Text: the corpus train split without one source (``--off-domain``,
default gcide), streamed and packed like ``--recover distill`` does. Scored on the corpus **test** split without that
source (in-domain) and on that source's test split (a domain neither the cut nor the recovery saw), as the
perplexity ratio recovered / dense on fixed windows, and optionally multiple-choice retention (``--mc-items``).
Each (sparsity, method, budget) is its own run, with its own schedule, so budgets compare at equal tokens; the
held-out curve of a run is kept for the page's figure.

    HF_HUB_OFFLINE=1 python eval/bench_recovery.py                     # SmolLM2, 35 / 50%, budgets 0.1M / 0.3M, full-KD 1M too
    HF_HUB_OFFLINE=1 python eval/bench_recovery.py --model reference --sparsities 0.5 --budgets 20000 --long-budget 0

A run is saved as it ends (``<name>.partial.json``); ``--resume`` skips the saved ones and continues the one an
interruption stopped from its checkpoint. Writes ``eval/results/recovery_<model>.{md,json,png}`` (``--name``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

EVAL_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(EVAL_DIR.parent))
sys.path.insert(0, str(EVAL_DIR))
import hf_prune  # noqa: E402
from bench_common import CUT_MODELS, QUIET, RESULTS_DIR, split_by_source, write_results  # noqa: E402
from hf_prune.calibration.stream import PackedTokenStream  # noqa: E402
from hf_prune.config import PruningConfig, RecoveryOptions, load_recipe  # noqa: E402
from hf_prune.corpus import TextSource  # noqa: E402
from hf_prune.quality import fixed_token_set, window_nll  # noqa: E402
from hf_prune.recovery.distill import recover_with_distillation  # noqa: E402
from hf_prune.calibration.rows import RecoveryText  # noqa: E402

RECIPE = EVAL_DIR.parent / "recipes" / "search-lstsq.yaml"
#: method -> (trained parameters, KL weight, LM weight)
METHODS = {"LoRA-LM": ("lora", 0.0, 1.0), "full-LM": ("full", 0.0, 1.0),
           "LoRA-KD": ("lora", 1.0, 0.0), "full-KD": ("full", 1.0, 0.0)}


class Scorer:
    """Perplexity ratio model / dense on fixed windows of each test text (the dense NLLs computed once)."""

    def __init__(self, dense, tokenizer, files: dict[str, str], windows: int, batch_size: int):
        self.batch_size = batch_size
        self.texts = {text: fixed_token_set(tokenizer, files[text], num_windows=windows, seq_len=256)
                      for text in ("in-domain", "off-domain")}
        self.dense = {text: window_nll(dense, tokens, batch_size=batch_size) for text, tokens in self.texts.items()}

    def ratios(self, model) -> dict[str, float]:
        return {text: math.exp(float((window_nll(model, tokens, batch_size=self.batch_size) - self.dense[text]).mean()))
                for text, tokens in self.texts.items()}


def cut_model(model_dir: Path, sparsity: float, train_file: str, workdir: Path, args) -> Path:
    """The recipe's cut at ``sparsity``, written once into ``workdir`` (reused by every method and budget)."""
    target = workdir / f"cut-{sparsity:g}"
    if (target / "config.json").is_file():
        return target
    config = PruningConfig.from_dict({**load_recipe(RECIPE), "sparsity": sparsity, "calibration": train_file,
                                      "calibration_samples": args.calibration_samples, "seq_len": 256})
    hf_prune.prune_pretrained(str(model_dir), config, output_dir=str(target), overwrite=True, console=QUIET)
    return target


def recover(cut_dir: Path, teacher, tokenizer, train_file: str, method: str, budget: int, state_dir: Path,
            args) -> tuple[Any, Any]:
    """(the recovered model, its RecoveryResult) of one run."""
    params, kl, lm = METHODS[method]
    model = AutoModelForCausalLM.from_pretrained(cut_dir, dtype=torch.float32)
    stream = PackedTokenStream(TextSource(train_file), tokenizer, 256, held_out=args.eval_rows, seed=0)
    options = RecoveryOptions(method="distill", tokens=budget, params=params, kl_weight=kl, lm_weight=lm,
                              batch_size=args.batch_size, distill_lr=args.lora_lr if params == "lora" else args.full_lr,
                              eval_rows=args.eval_rows)
    result = recover_with_distillation(model, RecoveryText(None, stream.held_out(), train_file, stream), options,
                                       seed=0, teacher=lambda: teacher, state_dir=str(state_dir),
                                       resume=args.resume and state_dir.is_dir())
    return model, result


def runs(args) -> list[tuple[float, str, int]]:
    planned = [(s, m, b) for s in args.sparsities for b in args.budgets for m in args.methods]
    if args.long_budget:
        planned += [(s, "full-KD", args.long_budget) for s in args.sparsities]
    return planned


def render(rows: list[dict[str, Any]], args, name: str) -> str:
    lines = [f"# Recovery after the cut — {args.model}\n",
             f"Cut: `{RECIPE.relative_to(EVAL_DIR.parent)}` (search + least squares) on {args.calibration_samples} x 256 "
             f"tokens of the corpus train split without `{args.off_domain}`; recovery on that text, streamed and "
             f"packed into rows of 256, {args.batch_size} rows per step, peak lr {args.full_lr:g} (full) / "
             f"{args.lora_lr:g} (LoRA), 5% warm-up, cosine to a tenth. Perplexity ratio recovered / dense on "
             f"{args.eval_windows} x 256 tokens of the corpus **test** split: in-domain (without `{args.off_domain}`) "
             f"and off-domain (`{args.off_domain}` only, seen by neither the cut nor the recovery).\n",
             f"    {args.command}\n",
             "| sparsity | method | tokens | in-domain | off-domain | held-out KL to the teacher | tokens/s | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for row in sorted(rows, key=lambda r: (r["sparsity"], r["method"] != "cut", r["tokens"], r["method"])):
        kl = f"{row['kl_after']:.4f}" if row.get("kl_after") is not None else "—"
        rate = f"{row['tokens_per_second']:.0f}" if row.get("tokens_per_second") else "—"
        lines.append(f"| {row['sparsity']:.0%} | {row['method']} | {row['tokens']:,} | {row['in-domain']:.3f} | "
                     f"{row['off-domain']:.3f} | {kl} | {rate} | {row.get('seconds', 0):.0f} |")
    lines.append(f"\nMachine: {args.machine}. Figure: `{name}.png` (ratio against tokens per method).\n")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sparsities = sorted({row["sparsity"] for row in rows})
    figure, axes = plt.subplots(len(sparsities), 2, figsize=(10, 3.4 * len(sparsities)), squeeze=False)
    for axes_row, sparsity in zip(axes, sparsities):
        cut = next((r for r in rows if r["sparsity"] == sparsity and r["method"] == "cut"), None)
        for axis, text in zip(axes_row, ("in-domain", "off-domain")):
            for method in METHODS:
                points = sorted((r["tokens"], r[text]) for r in rows if r["sparsity"] == sparsity and r["method"] == method)
                if points and cut is not None:
                    points = [(0, cut[text]), *points]
                if points:
                    axis.plot(*zip(*points), marker="o", label=method)
            axis.set_title(f"{sparsity:.0%} removed, {text}")
            axis.set_xlabel("tokens of recovery")
            axis.set_ylabel("perplexity ratio / dense")
            axis.grid(alpha=0.3)
        axes_row[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=list(CUT_MODELS), default="smollm2")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.35, 0.5])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--budgets", type=int, nargs="+", default=[100_000, 300_000])
    parser.add_argument("--long-budget", type=int, default=1_000_000, help="full-KD only (0: none)")
    parser.add_argument("--off-domain", default="gcide")
    parser.add_argument("--calibration-samples", type=int, default=32)
    parser.add_argument("--eval-windows", type=int, default=32)
    parser.add_argument("--eval-rows", type=int, default=8, help="held-out rows of the recovery text")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--full-lr", type=float, default=1e-4)
    parser.add_argument("--lora-lr", type=float, default=2e-4)
    parser.add_argument("--workdir", type=Path, default=Path("runs/recovery"))
    parser.add_argument("--resume", action="store_true", help="skip saved runs; continue an interrupted one")
    parser.add_argument("--name", default=None)
    args = parser.parse_args(argv)
    args.command = "python eval/bench_recovery.py " + " ".join(sys.argv[1:] if argv is None else argv)
    args.machine = f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads"
    name = args.name or f"recovery_{args.model}"
    partial = RESULTS_DIR / f"{name}.partial.json"
    rows: list[dict[str, Any]] = json.loads(partial.read_text())["rows"] if args.resume and partial.is_file() else []
    workdir = args.workdir / args.model
    workdir.mkdir(parents=True, exist_ok=True)
    files = split_by_source(args.off_domain, workdir, scored="test")
    if not Path(files["off-domain"]).read_text().strip():
        sys.exit(f"error: the corpus test split has no text of source {args.off_domain!r}; pass another --off-domain")
    dense = AutoModelForCausalLM.from_pretrained(CUT_MODELS[args.model], dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(CUT_MODELS[args.model])
    scorer = Scorer(dense, tokenizer, files, args.eval_windows, args.batch_size)
    done = {(r["sparsity"], r["method"], r["tokens_budget"]) for r in rows}
    for sparsity, method, budget in runs(args):
        if (sparsity, method, budget) in done:
            continue
        cut_dir = cut_model(CUT_MODELS[args.model], sparsity, files["calibration"], workdir, args)
        if (sparsity, "cut", 0) not in done:
            cut = AutoModelForCausalLM.from_pretrained(cut_dir, dtype=torch.float32).eval()
            rows.append({"sparsity": sparsity, "method": "cut", "tokens": 0, "tokens_budget": 0, **scorer.ratios(cut)})
            done.add((sparsity, "cut", 0))
        started = time.perf_counter()
        model, result = recover(cut_dir, dense, tokenizer, files["calibration"], method, budget,
                                workdir / f"state-{sparsity:g}-{method}-{budget}", args)
        row = {"sparsity": sparsity, "method": method, "tokens_budget": budget, "tokens": result.train_tokens,
               **scorer.ratios(model.eval()), "kl_after": result.kl_after, "seconds": time.perf_counter() - started,
               "tokens_per_second": result.train_tokens / result.seconds,
               "curve": [{k: v for k, v in h.items() if k in ("tokens", "eval_kl", "eval_perplexity", "loss")}
                         for h in result.history]}
        rows.append(row)
        done.add((sparsity, method, budget))
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps({"rows": rows}, indent=1))
        print(f"{sparsity:.0%} {method} {result.train_tokens:,} tokens: in-domain {row['in-domain']:.3f}, off-domain "
              f"{row['off-domain']:.3f} ({row['seconds']:.0f}s, {row['tokens_per_second']:.0f} tokens/s)", flush=True)
    page = render(rows, args, name)
    write_results(name, rows, page, {"command": args.command, "machine": args.machine})
    plot(rows, RESULTS_DIR / f"{name}.png")
    partial.unlink(missing_ok=True)
    print(page)
    return rows


if __name__ == "__main__":
    main()
