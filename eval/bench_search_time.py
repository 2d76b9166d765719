"""Wall time of the recipe (``recipes/search-lstsq.yaml``: the search with least squares) against one-shot EMP on the
same model and calibration tokens, in memory and with ``--layerwise``, each run a fresh ``hf-prune`` process.

The commands run in turn (EMP, the recipe, the recipe with ``--search-probe-rows 2``; again) and each ratio is taken
to the EMP run of its own round, so a machine whose speed drifts (another job starting) moves both sides; the load
average before each run is recorded, and the page says whether the machine was idle. Models: SmolLM2-135M (``scripts/fetch_smollm2.py``, calibrated on the corpus
train split) and a random Llama-3.2-1B-shaped checkpoint written by the bench (builtin calibration text). "In memory"
is ``--sequential`` (the weights in memory, statistics and costs in one pass over the layers, as the 1B shape needs:
the dense second moments of every layer at once would be ~9 GB); ``--layerwise`` reads each layer from the shards.

    HF_HUB_OFFLINE=1 python eval/bench_search_time.py                      # both models, both modes, 2 rounds each
    HF_HUB_OFFLINE=1 python eval/bench_search_time.py --models smollm2 --pairs 3

Writes ``eval/results/search_time.{md,json}`` (``--name``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EVAL_DIR = Path(__file__).resolve().parent
REPO = EVAL_DIR.parent
sys.path.insert(0, str(REPO))
from bench_common import write_results  # noqa: E402
from bench_layerwise_memory import LLAMA_3_2_1B, PROBE, make_checkpoint  # noqa: E402

SMOLLM2 = EVAL_DIR / "models" / "smollm2-135m"
RECIPE = REPO / "recipes" / "search-lstsq.yaml"
COMMANDS = {
    "EMP": ["--target", "emp", "--importance", "activation"],
    "search + least squares (recipe)": ["--recipe", str(RECIPE)],
    # the probes (the search's O(layers^2) part) on 2 of the recipe's 8 cost rows: faster, some quality lost (README)
    "the recipe, --search-probe-rows 2": ["--recipe", str(RECIPE), "--search-probe-rows", "2"],
}


def run(model: Path, output: Path, flags: list[str], calibration: str, args: argparse.Namespace,
        layerwise: bool) -> dict:
    """One ``hf-prune`` run in a fresh interpreter; its own timer (from ``main`` to its return) and the load before."""
    argv = ["--model", str(model), "--output", str(output), *flags, "--sparsity", str(args.sparsity),
            "--calibration", calibration, "--calibration-samples", str(args.samples), "--seq-len", str(args.seq_len),
            "--layerwise" if layerwise else "--sequential"]
    load = os.getloadavg()[0]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    result = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=env, cwd=REPO)
    if result.returncode != 0:
        raise SystemExit(f"hf-prune {shlex.join(argv)} failed:\n{result.stderr[-3000:]}")
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    return {"seconds": measured["seconds"], "load_before": load, "argv": argv}


def rounds(model: Path, calibration: str, mode: str, args: argparse.Namespace, scratch: Path) -> list[dict]:
    """``args.pairs`` rounds of every command in turn; each row is one command's run with its ratio to that round's
    EMP run."""
    rows = []
    for index in range(args.pairs):
        emp_seconds = None
        for number, (label, flags) in enumerate(COMMANDS.items()):
            measured = run(model, scratch / f"{mode}-{index}-{number}", flags, calibration, args, mode == "layerwise")
            emp_seconds = emp_seconds or measured["seconds"]
            rows.append({"mode": mode, "round": index, "command": label, "seconds": measured["seconds"],
                         "ratio_to_emp": measured["seconds"] / emp_seconds, "load_before": measured["load_before"],
                         "argv": measured["argv"]})
            print(f"  {mode} round {index}: {label} {measured['seconds']:.1f}s, {rows[-1]['ratio_to_emp']:.1f} x EMP "
                  f"(load before {measured['load_before']:.2f})", flush=True)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=["smollm2", "llama-3.2-1b"], default=["smollm2", "llama-3.2-1b"])
    parser.add_argument("--modes", nargs="+", choices=["in-memory", "layerwise"], default=["in-memory", "layerwise"])
    parser.add_argument("--pairs", type=int, default=2, help="rounds of all commands per model and mode")
    parser.add_argument("--samples", type=int, default=16,
                        help="calibration rows (the search reads its own after them)")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--sparsity", type=float, default=0.35)
    parser.add_argument("--name", default="search_time")
    args = parser.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory(prefix="hf-prune-search-time-") as scratch:
        scratch = Path(scratch)
        for name in args.models:
            if name == "smollm2":
                model, calibration = SMOLLM2, "reference"
            else:
                model, calibration = scratch / "llama-3.2-1b", "builtin"
                make_checkpoint(model, LLAMA_3_2_1B, None)
            print(f"[{name}]", flush=True)
            for mode in args.modes:
                rows += [{"model": name, **row} for row in rounds(model, calibration, mode, args, scratch / name)]
    markdown = render(rows, args)
    print(markdown)
    write_results(args.name, rows, markdown, {"settings": vars(args), "cores": os.cpu_count(),
                                              "date": time.strftime("%Y-%m-%d")})
    return rows


def render(rows: list[dict], args: argparse.Namespace) -> str:
    command = shlex.join(["HF_HUB_OFFLINE=1", "python", "eval/bench_search_time.py", *sys.argv[1:]])
    outside = rows[0]["load_before"]  # later runs' load averages count this bench's own previous run
    lines = [f"# Time of the search with least squares against one-shot EMP ({os.cpu_count()} CPU cores, float32)", "",
             f"`{command}` — sparsity {args.sparsity:g}, {args.samples} x {args.seq_len} calibration tokens "
             f"(the recipe reads its held-out search rows after them); the recipe is `recipes/search-lstsq.yaml` as a "
             f"user runs it. Ratio = the command's time / EMP's in the same round, median over rounds. 1-minute load "
             f"average before the first run: {outside:.2f} "
             f"({'idle' if outside < 0.5 else 'NOT idle: another job was running'}; each later run's counts this "
             f"bench's own previous run).", "",
             "| model | mode | command | seconds (median) | x EMP (median) | x EMP per round |",
             "|---|---|---|---|---|---|"]
    for model in dict.fromkeys(row["model"] for row in rows):
        for mode in dict.fromkeys(row["mode"] for row in rows if row["model"] == model):
            for label in COMMANDS:
                these = [r for r in rows if r["model"] == model and r["mode"] == mode and r["command"] == label]
                lines.append(f"| {model} | {mode} | {label} | {statistics.median(r['seconds'] for r in these):.1f} | "
                             f"{statistics.median(r['ratio_to_emp'] for r in these):.1f} | "
                             f"{', '.join(format(r['ratio_to_emp'], '.1f') for r in these)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
