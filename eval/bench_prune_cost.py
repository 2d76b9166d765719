"""What one-shot pruning costs, stage by stage, against its floor: one plain forward pass over the same tokens.

Scoring with calibration data cannot cost less than running the model over the calibration tokens once,
so every stage is printed as a multiple of that forward pass (same rows, same batch size, ``no_grad``):
reading and tokenizing the text, collecting statistics (the hooked forward), scoring, allocating, cutting
and saving. One row per importance criterion (magnitude needs no data: its floor is still shown).

    HF_HUB_OFFLINE=1 python eval/bench_prune_cost.py                         # embedded default (+ SmolLM2 if fetched)
    HF_HUB_OFFLINE=1 python eval/bench_prune_cost.py --batch-size 8          # the statistics' batch size

Then one Hyperflux gate step (frozen base, gates trained: forward + backward + Adam on the gates) against one
full fine-tuning step (every weight trained: forward + backward + AdamW on all weights), same rows and batch size,
median of ``--train-steps`` steps after one warm-up step each.

Writes ``eval/results/prune_cost.{md,json}`` (``--name``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hf_prune.adapters import get_adapter  # noqa: E402
from hf_prune.config import PruningConfig  # noqa: E402
from hf_prune.cut.apply import apply_pruning  # noqa: E402
from hf_prune.data import DEFAULT_MODEL_DIR  # noqa: E402
from hf_prune.io.checkpoint import load_model, save_pruned  # noqa: E402
from hf_prune.plan.hyperflux.trainer import HyperfluxTrainer  # noqa: E402
from hf_prune.plan.planner import calibration_ids, collect_statistics, make_plan  # noqa: E402

EVAL_DIR = Path(__file__).resolve().parent
MODELS = {"embedded default": DEFAULT_MODEL_DIR, "smollm2-135m": EVAL_DIR / "models" / "smollm2-135m"}
CRITERIA = ["magnitude", "activation", "fluctuation", "taylor"]


@contextmanager
def timed(into: dict, stage: str):
    start = time.perf_counter()
    yield
    into[stage] = into.get(stage, 0.0) + time.perf_counter() - start


@torch.no_grad()
def forward_seconds(model, rows: torch.Tensor, batch_size: int) -> float:
    """The floor: one plain forward pass over ``rows`` in batches of ``batch_size``."""
    start = time.perf_counter()
    for batch in rows.split(batch_size):
        model(batch, use_cache=False)
    return time.perf_counter() - start


def one_run(dense, tokenizer, criterion: str, args) -> dict:
    config = PruningConfig.from_dict(dict(target="emp", units="all", importance=criterion, sparsity=0.3,
                                          calibration=args.calibration, calibration_samples=args.samples,
                                          seq_len=args.seq_len, batch_size=args.batch_size))
    model, stages = copy.deepcopy(dense), {}
    with timed(stages, "text"):
        rows = calibration_ids(model, tokenizer, config)
    with timed(stages, "statistics"):
        stats = collect_statistics(model, get_adapter(model).scopes(model), config, rows) if rows is not None else None
    with timed(stages, "scoring + allocation"):
        plan = make_plan(model, config, rows, statistics=stats)
    with timed(stages, "surgery"):
        apply_pruning(model, config, plan)
    with tempfile.TemporaryDirectory() as tmp, timed(stages, "save"):
        save_pruned(model, tokenizer, Path(tmp) / "out")
    return stages


def gate_step_seconds(dense, rows: torch.Tensor, steps: int, batch_size: int) -> float:
    """Median seconds of one Hyperflux optimizer step (budget 30%, hf-prune's default options; the pressure
    update every ``tick_every`` = 10 steps falls among the timed steps, as it does in a run)."""
    model = copy.deepcopy(dense)
    config = PruningConfig.from_dict(dict(target="hyperflux", sparsity=0.3, steps=max(steps + 1, 10),
                                          regrowth_steps=0, batch_size=batch_size))
    scopes = get_adapter(model).scopes(model)
    params_per_group = {scope.name: scope.params_per_group(model) for scope in scopes}
    budget = 0.7 * sum(scope.num_groups * params_per_group[scope.name] for scope in scopes)
    trainer = HyperfluxTrainer(model, scopes, params_per_group, budget, rows, config.hyperflux, batch_size=batch_size)
    ends = [time.perf_counter()]
    trainer.run(on_step_end=lambda step: ends.append(time.perf_counter()))
    return statistics.median([b - a for a, b in zip(ends[1:], ends[2:])][:steps])  # the first step is the warm-up


def fine_tune_step_seconds(dense, rows: torch.Tensor, steps: int, batch_size: int) -> float:
    """Median seconds of one full fine-tuning step: every weight trainable, AdamW (what recovery without LoRA,
    or gates trained jointly with the weights, would cost)."""
    model = copy.deepcopy(dense).train()
    model.requires_grad_(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    durations = []
    for step in range(steps + 1):
        batch = rows[(step * batch_size) % len(rows):][:batch_size]
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        model(batch, labels=batch, use_cache=False).loss.backward()
        optimizer.step()
        durations.append(time.perf_counter() - start)
    return statistics.median(durations[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS),
                        default=[name for name, path in MODELS.items() if (path / "config.json").exists()])
    parser.add_argument("--criteria", nargs="+", choices=CRITERIA, default=CRITERIA)
    parser.add_argument("--calibration", default="builtin", help="as hf-prune --calibration (e.g. 'reference': "
                        "the corpus's train split, python scripts/prepare_corpus.py)")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=1, help="calibration rows per forward (hf-prune's default: 1)")
    parser.add_argument("--train-steps", type=int, default=9, help="timed steps of gate and of full fine-tuning "
                        "training (0: skip the comparison)")
    parser.add_argument("--name", default="prune_cost")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    rows_out, training = [], []
    for model_name in args.models:
        dense, tokenizer = load_model(str(MODELS[model_name]), dtype="float32")
        reference_rows = calibration_ids(dense, tokenizer, PruningConfig.from_dict(dict(
            importance="activation", calibration=args.calibration, calibration_samples=args.samples,
            seq_len=args.seq_len)))
        forward_seconds(dense, reference_rows[: args.batch_size], args.batch_size)  # warm-up
        floor = forward_seconds(dense, reference_rows, args.batch_size)
        for criterion in args.criteria:
            stages = one_run(dense, tokenizer, criterion, args)
            total = sum(stages.values())
            row = {"model": model_name, "criterion": criterion, "forward_seconds": floor, "stages": stages,
                   "total_seconds": total, "total_over_forward": total / floor}
            rows_out.append(row)
            print(f"{model_name:16s} {criterion:12s} total {total:6.2f} s = {total / floor:5.1f} x forward "
                  f"({floor:.2f} s); " + ", ".join(f"{k} {v / floor:.1f}x" for k, v in stages.items()), flush=True)
        if args.train_steps:
            gate = gate_step_seconds(dense, reference_rows, args.train_steps, args.batch_size)
            full = fine_tune_step_seconds(dense, reference_rows, args.train_steps, args.batch_size)
            training.append({"model": model_name, "gate_step_seconds": gate, "fine_tune_step_seconds": full,
                             "ratio": gate / full})
            print(f"{model_name:16s} Hyperflux gate step {gate:.3f} s, full fine-tune step {full:.3f} s: "
                  f"{gate / full:.2f}x", flush=True)
    stages = list(rows_out[0]["stages"]) if rows_out else []
    lines = [f"Command: `python eval/bench_prune_cost.py {' '.join(sys.argv[1:])}`. One-shot EMP 30% (units all), "
             f"{args.samples} x {args.seq_len} calibration tokens of `{args.calibration}`, batch size {args.batch_size}, "
             f"{torch.get_num_threads()} CPU threads. Each stage as a multiple of one plain forward pass over the same "
             "tokens (the floor); seconds in the JSON.", "",
             "| model | criterion | forward s | " + " | ".join(stages) + " | total | total / forward |",
             "|---|---|---|" + "---|" * (len(stages) + 2)]
    for row in rows_out:
        cells = " | ".join(f"{row['stages'][s] / row['forward_seconds']:.1f}x" for s in stages)
        lines.append(f"| {row['model']} | {row['criterion']} | {row['forward_seconds']:.2f} | {cells} | "
                     f"{row['total_seconds']:.2f} s | **{row['total_over_forward']:.1f}x** |")
    if training:
        lines += ["", f"Training step, batch {args.batch_size} x {args.seq_len} tokens, median of {args.train_steps} "
                  "steps after a warm-up step:", "",
                  "| model | Hyperflux gate step s | full fine-tune step s | gate / full |", "|---|---|---|---|"]
        lines += [f"| {t['model']} | {t['gate_step_seconds']:.3f} | {t['fine_tune_step_seconds']:.3f} | "
                  f"**{t['ratio']:.2f}x** |" for t in training]
    markdown = "\n".join(lines) + "\n"
    out = EVAL_DIR / "results"
    (out / f"{args.name}.json").write_text(json.dumps({"meta": vars(args), "rows": rows_out, "training": training},
                                                      indent=2, default=str))
    (out / f"{args.name}.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
