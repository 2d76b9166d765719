"""Peak memory of pruning a ~1B (or 8B) model in memory and with ``--layerwise``, in fresh processes.

Saves a random Llama-3.2-1B- or Llama-3.1-8B-shaped checkpoint (bf16, in 500 MB shards; random weights: memory needs
no trained ones), then runs the same ``hf-prune`` command once in memory (``--sequential``) and once with ``--layerwise``,
each in its own interpreter, and reads the process's peak resident memory (``VmHWM``) above its resident memory
once every library is imported. Both outputs are compared tensor by tensor. ``--recipe emp``: EMP 30%,
activation importance; ``--recipe search-lstsq``: the search with least squares (units all, 35%), whose
candidates and cut are refit from one layer's second moments at a time — the bound it is held to is one decoder
layer in float32 + that layer's second moments + the calibration activations + the embedding table.

    HF_HUB_OFFLINE=1 python eval/bench_layerwise_memory.py                # ~1.24B parameters, ~6 min on 2 CPU cores
    HF_HUB_OFFLINE=1 python eval/bench_layerwise_memory.py --recipe search-lstsq --name layerwise_memory_search_lstsq

``--recipe search-lstsq-recipe`` runs ``recipes/search-lstsq.yaml`` itself, as a user would. At 8B on a CPU that is a
run of many hours, longer than a working session: ``--workdir DIR`` keeps the checkpoint, the output and the search's
state in DIR, and running the same command again continues an interrupted run with ``--resume``. Every process writes
its peak memory to DIR every 30 s, so the peak of a segment that was killed is counted too; the results are written
once the run has finished (peak: the largest of its segments that ran the final code of ``hf_prune/``, earlier ones
reported beside it; seconds: the sum of all)::

    HF_HUB_OFFLINE=1 python eval/bench_layerwise_memory.py --shape llama-3.1-8b --modes layerwise --samples 4 \
        --seq-len 128 --recipe search-lstsq-recipe --workdir runs/llama-8b-recipe --name layerwise_memory_recipe_8b

``--recipe search-lstsq-recipe-probe2`` is the same with ``--search-probe-rows 2`` (about 4x fewer of the search's
layer passes at 8B; a little quality lost, README).

Writes ``eval/results/layerwise_memory.{md,json}`` (``--name``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

EVAL_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(EVAL_DIR.parent))
from bench_common import write_results  # noqa: E402

from hf_prune.cut.compensation.lstsq import OUTPUTS_PER_BLOCK, ROWS_PER_BLOCK  # noqa: E402

#: Llama-3.2-1B's shapes (tied embeddings, 128k vocabulary)
LLAMA_3_2_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                    num_attention_heads=32, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True,
                    max_position_embeddings=131072, rope_theta=500000.0)
#: Llama-3.1-8B's shapes (separate embedding and LM head)
LLAMA_3_1_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=False,
                    max_position_embeddings=131072, rope_theta=500000.0)
SHAPES = {"llama-3.2-1b": LLAMA_3_2_1B, "llama-3.1-8b": LLAMA_3_1_8B}

#: runs in a fresh interpreter: the baseline is taken once everything a run imports is imported
PROBE = """
import json, os, sys, threading, time
import datasets, torch, transformers  # noqa: F401
from hf_prune.run.cli import main

def status_mb(field):
    return int(open("/proc/self/status").read().split(field + ":")[1].split()[0]) / 1024

baseline = status_mb("VmRSS")
start = time.perf_counter()
progress = os.environ.get("HF_PRUNE_BENCH_PROGRESS")

def report():  # a segment killed with its session still leaves its peak
    while True:
        time.sleep(30)
        with open(progress + ".tmp", "w") as handle:
            json.dump({"baseline_mb": baseline, "peak_mb": status_mb("VmHWM"),
                       "seconds": time.perf_counter() - start,
                       "hf_prune_tree": os.environ.get("HF_PRUNE_BENCH_TREE")}, handle)
        os.replace(progress + ".tmp", progress)

if progress:
    threading.Thread(target=report, daemon=True).start()
code = main(sys.argv[1:])
print(json.dumps({"code": code, "baseline_mb": baseline, "peak_mb": status_mb("VmHWM"),
                  "seconds": time.perf_counter() - start, "hf_prune_tree": os.environ.get("HF_PRUNE_BENCH_TREE")}))
"""


def make_checkpoint(directory: Path, shape: dict, layers: int | None) -> None:
    """A random bf16 checkpoint of ``shape``, written without ever holding it whole (the 8B shape is 16 GB in bf16,
    32 GB in float32, on a 24 GB machine): the model is built on ``meta`` for its parameter names and shapes, then
    each tensor is drawn in bf16 and written in ~500 MB shards with the index transformers reads."""
    from accelerate import init_empty_weights
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_prune.testing import make_tiny_tokenizer

    config = LlamaConfig(**{**shape, **({"num_hidden_layers": layers} if layers else {})}, dtype="bfloat16")
    with init_empty_weights():
        model = LlamaForCausalLM(config)
    directory.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    std = config.initializer_range
    shards: list[dict[str, torch.Tensor]] = [{}]
    weight_map, total, shard_bytes = {}, 0, 0
    parameters = [(name, parameter) for name, parameter in model.named_parameters()
                  if not (config.tie_word_embeddings and name == "lm_head.weight")]  # tied: the embedding's table

    def flush() -> None:
        index = len(shards)
        name = f"model-{index:05d}.safetensors"
        save_file(shards[-1], str(directory / name), metadata={"format": "pt"})
        weight_map.update({key: name for key in shards[-1]})
        shards.append({})

    for name, parameter in parameters:
        if name.endswith("norm.weight"):
            value = torch.ones(parameter.shape, dtype=torch.bfloat16)
        else:
            value = torch.empty(parameter.shape, dtype=torch.bfloat16).normal_(0.0, std, generator=generator)
        if shard_bytes and shard_bytes + value.nbytes > 500 * 2**20:
            flush()
            shard_bytes = 0
        shards[-1][name] = value
        shard_bytes += value.nbytes
        total += value.nbytes
    flush()
    count = len(shards) - 1
    for index in range(1, count + 1):  # the names transformers' sharded checkpoints carry
        old = directory / f"model-{index:05d}.safetensors"
        new = f"model-{index:05d}-of-{count:05d}.safetensors"
        old.rename(directory / new)
        weight_map = {key: (new if value == old.name else value) for key, value in weight_map.items()}
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    config.save_pretrained(directory)
    make_tiny_tokenizer(vocab_size=2000).save_pretrained(directory)


#: the hf-prune flags of each recipe the bench runs
RECIPES = {
    "emp": ["--target", "emp", "--sparsity", "0.3"],
    "search-lstsq": ["--target", "search", "--units", "all", "--compensate", "lstsq", "--sparsity", "0.35",
                     "--search-rows", "2", "--mlp-levels", "4", "--refine-rounds", "1"],
    "search-lstsq-recipe": ["--recipe", "recipes/search-lstsq.yaml", "--sparsity", "0.35"],  # from the repository root
    # the recipe with its probes carried on 2 of the 8 cost rows: the probes are the search's O(layers^2) part
    # (~4x fewer layer passes); it costs some quality on SmolLM2 (README, --search-probe-rows)
    "search-lstsq-recipe-probe2": ["--recipe", "recipes/search-lstsq.yaml", "--sparsity", "0.35",
                                   "--search-probe-rows", "2"],
}


def recipe_value(recipe: str, flag: str, default: str | None = None) -> str:
    """A search option of a recipe: from its flags, or from the recipe file it names (``default`` where neither
    sets it)."""
    flags = RECIPES[recipe]
    if f"--{flag.replace('_', '-')}" in flags:
        return flags[flags.index(f"--{flag.replace('_', '-')}") + 1]
    if "--recipe" not in flags:
        return default
    import yaml

    return str(yaml.safe_load((EVAL_DIR.parent / flags[flags.index("--recipe") + 1]).read_text()).get(flag, default))


def run(source: Path, output: Path, layerwise: bool, samples: int, seq_len: int, recipe: str,
        progress: Path | None = None) -> dict:
    """One hf-prune process; with ``progress`` (a resumable run in a work directory) it continues the saved state
    of an interrupted one and reports its peak memory to that file as it goes."""
    argv = ["--model", str(source), "--output", str(output), *RECIPES[recipe],
            "--calibration", "builtin", "--calibration-samples", str(samples), "--seq-len", str(seq_len)]
    argv += ["--layerwise"] if layerwise else ["--sequential"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if progress is None:
        env["TQDM_DISABLE"] = "1"
    else:  # a run of hours: hf-prune's own progress and ETA go to this bench's stderr as they come
        env.update({"TQDM_MININTERVAL": os.environ.get("TQDM_MININTERVAL", "30"),
                    "HF_PRUNE_BENCH_PROGRESS": str(progress), "HF_PRUNE_BENCH_TREE": package_tree()})
        if (output.parent / f"{output.name}.search-state").is_dir():
            argv.append("--resume")
    if progress is None:
        result = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=env,
                                cwd=EVAL_DIR.parent)
        code, last, said = result.returncode, result.stdout.strip().splitlines()[-1:], result.stderr[-3000:]
    else:  # hf-prune's messages (stdout) and progress bars (stderr) pass through; its last line is the probe's
        with subprocess.Popen([sys.executable, "-c", PROBE, *argv], stdout=subprocess.PIPE, text=True, env=env,
                              cwd=EVAL_DIR.parent) as child:
            last = []
            for line in child.stdout:
                if last:
                    print(last[0], end="", file=sys.stderr, flush=True)
                last = [line]
        code, said = child.returncode, "(its messages are above)"
    if code != 0:
        raise SystemExit(f"hf-prune failed ({'layerwise' if layerwise else 'in memory'}), exit code {code}:\n{said}")
    return json.loads(last[0])


def package_tree() -> str:
    """Which code of ``hf_prune/`` a segment ran: git's tree hash of the package ("+changes" when the work tree
    differs from it), or "unknown" outside a git checkout."""
    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], capture_output=True, text=True, cwd=EVAL_DIR.parent).stdout.strip()

    tree = git("rev-parse", "HEAD:hf_prune") or "unknown"
    return tree + ("+changes" if git("status", "--porcelain", "--", "hf_prune") else "")


def run_segments(workdir: Path, mode: str, args: argparse.Namespace) -> dict:
    """Run (or continue) the mode's run in ``workdir``; once it has finished, its peak is the largest of its
    segments' (killed ones included: each reported its peak as it went) and its seconds their sum.

    A run of many hours may be continued by newer code (the search's state is the same; how much memory a step
    holds may not be): the peak is then that of the segments that ran the last segment's code, and the earlier
    segments' peak and seconds are reported beside it."""
    output = workdir / mode
    if (output / "config.json").is_file() and (workdir / f"{mode}.result.json").is_file():
        return json.loads((workdir / f"{mode}.result.json").read_text())  # finished before
    segments = sorted(workdir.glob(f"{mode}.segment-*.json"))
    progress = workdir / f"{mode}.segment-{len(segments):03d}.json"
    finished = run(workdir / "dense", output, mode == "layerwise", args.samples, args.seq_len, args.recipe, progress)
    progress.write_text(json.dumps(finished))
    if finished["code"] != 0:  # interrupted (Ctrl-C: 130) or refused: its state is kept, nothing is reported yet
        raise SystemExit(f"hf-prune stopped with exit code {finished['code']} before the run finished; its peak so far "
                         f"is kept in {progress.name}: run the same command again to continue it")
    reports = [json.loads(path.read_text()) for path in sorted(workdir.glob(f"{mode}.segment-*.json"))]
    result = {"code": finished["code"], **combine_segments(reports)}
    (workdir / f"{mode}.result.json").write_text(json.dumps(result))
    return result


def combine_segments(reports: list[dict]) -> dict:
    """One run's memory and time from its segments' reports (the last one: the segment that finished it)."""
    final_tree = reports[-1].get("hf_prune_tree")
    final_code = [report for report in reports if report.get("hf_prune_tree") == final_tree]
    earlier = [report for report in reports if report.get("hf_prune_tree") != final_tree]
    added = lambda report: report["peak_mb"] - report["baseline_mb"]  # noqa: E731
    worst = max(final_code, key=added)
    return {"baseline_mb": worst["baseline_mb"], "peak_mb": worst["peak_mb"],
            "seconds": sum(report["seconds"] for report in reports), "segments": len(reports),
            "hf_prune_tree": final_tree, "earlier_code_segments": len(earlier),
            "earlier_code_seconds": sum(report["seconds"] for report in earlier),
            "earlier_code_added_mb": max(map(added, earlier), default=None)}


def same_tensors(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    def tensors(directory: Path) -> dict:
        out = {}
        for path in sorted(directory.glob("*.safetensors")):
            out.update(load_file(path))
        return out

    first, second = tensors(a), tensors(b)
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama-3.2-1b")
    parser.add_argument("--layers", type=int, default=None, help="fewer decoder layers (default: the shape's)")
    parser.add_argument("--modes", nargs="+", choices=["in-memory", "layerwise"], default=["in-memory", "layerwise"],
                        help="in-memory needs the whole model in float32 (the 8B shape: 32 GB): leave it out there")
    parser.add_argument("--samples", type=int, default=8, help="calibration rows")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per calibration row")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="emp")
    parser.add_argument("--name", default="layerwise_memory")
    parser.add_argument("--workdir", type=Path, default=None, help=(
        "keep the checkpoint, the outputs and the search's state here, and continue an interrupted run when the "
        "same command is run again (default: a temporary directory, removed at the end)"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="hf-prune-layerwise-") as scratch:
        scratch = args.workdir.resolve() if args.workdir is not None else Path(scratch)
        shape = SHAPES[args.shape]
        if not (scratch / "dense" / "config.json").is_file():
            make_checkpoint(scratch / "dense", shape, args.layers)
        files = sorted((scratch / "dense").glob("*.safetensors"))
        checkpoint_mb = sum(p.stat().st_size for p in files) / 2**20
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(scratch / "dense")
        rows = {}
        for mode in args.modes:
            rows[mode] = run_segments(scratch, mode, args) if args.workdir is not None else run(
                scratch / "dense", scratch / mode, mode == "layerwise", args.samples, args.seq_len, args.recipe)
            rows[mode]["added_mb"] = rows[mode]["peak_mb"] - rows[mode]["baseline_mb"]
            print(f"{mode}: peak {rows[mode]['peak_mb']:.0f} MB, {rows[mode]['added_mb']:.0f} MB above the "
                  f"imports, {rows[mode]['seconds']:.0f} s", flush=True)
        equal = same_tensors(scratch / "layerwise", scratch / "in-memory") if len(rows) == 2 else None

    meta = {"shape": args.shape, "shapes": {**shape, "num_hidden_layers": config.num_hidden_layers},
            "checkpoint_mb": checkpoint_mb, "shards": len(files), "recipe": args.recipe, "flags": RECIPES[args.recipe],
            "samples": args.samples, "seq_len": args.seq_len, "same_tensors": equal, "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"), **bound_terms(config, args)}
    name = {"llama-3.2-1b": "Llama-3.2-1B", "llama-3.1-8b": "Llama-3.1-8B"}[args.shape]
    lines = [f"# Peak memory of pruning a {name}-shaped model ({config.num_hidden_layers} layers, random bf16 "
             f"weights, {checkpoint_mb:.0f} MB in {len(files)} shards; CPU, computed in float32)", "",
             f"`{shlex.join(['HF_HUB_OFFLINE=1', 'python', 'eval/bench_layerwise_memory.py', *sys.argv[1:]])}` — "
             f"`{' '.join(RECIPES[args.recipe])}`, activation importance, "
             f"{args.samples} x {args.seq_len} builtin calibration tokens; peak = `VmHWM` of a fresh process, "
             "'added' = above its memory once torch, transformers, datasets and hf_prune are imported.", "",
             "| mode | peak MB | added MB | added / fp32 model | seconds |", "|---|---|---|---|---|"]
    fp32_model_mb = checkpoint_mb * 2
    for mode, row in rows.items():
        lines.append(f"| {mode} | {row['peak_mb']:.0f} | {row['added_mb']:.0f} | "
                     f"{row['added_mb'] / fp32_model_mb:.2f} | {row['seconds']:.0f} |")
    for mode, row in rows.items():
        if row.get("earlier_code_segments"):
            lines += ["", f"{mode}: a run of {row['segments']} segments (interrupted and continued with --resume); "
                      f"the peak is that of the segments run by the final code of hf_prune/ (tree "
                      f"{row['hf_prune_tree']}); {row['earlier_code_segments']} earlier segments ran older code "
                      f"({row['earlier_code_seconds']:.0f} s, counted in the seconds; their peak: "
                      f"{row['earlier_code_added_mb']:.0f} MB added)."]
    lines += ["", *describe_bound(meta, rows.get("layerwise"))]
    if equal is not None:
        lines.append(f"Layer-wise and in-memory checkpoints hold the same tensors: {equal}.")
    markdown = "\n".join(lines) + "\n"
    print(markdown)
    write_results(args.name, rows, markdown, meta)


def bound_terms(config, args: argparse.Namespace) -> dict[str, float]:
    """The terms of the issue's bound for a layer-wise run, and the search's own terms beside them (MB)."""
    hidden, inner, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
    kv = config.num_key_value_heads * config.head_dim
    layer_params = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * inner + 2 * hidden
    search = args.recipe.startswith("search-lstsq")
    search_tokens = int(recipe_value(args.recipe, "search_rows")) * args.seq_len if search else 0
    levels = int(recipe_value(args.recipe, "mlp_levels")) if search else 0
    if recipe_value(args.recipe, "search_costs", "global") == "local":
        # only the probes are carried to the end: per attention and MLP, one that narrows it, one that removes it
        candidates = config.num_hidden_layers * 4
    else:
        candidates = config.num_hidden_layers * (config.num_key_value_heads + levels)  # the first table's
    terms = {"fp32_layer_mb": layer_params * 4 / 2**20,
             "layer_second_moments_mb": (hidden * hidden + inner * inner) * 8 / 2**20 if search else 0.0,
             "activations_mb": args.samples * args.seq_len * hidden * 4 / 2**20,
             "fp32_embedding_mb": vocab * hidden * 4 / 2**20}
    terms["bound_mb"] = sum(terms.values())
    terms["search_reference_mb"] = search_tokens * vocab * 4 / 2**20  # the dense log-probabilities of the cost rows
    terms["search_candidates"] = candidates if search else 0
    stream_tokens = search_tokens
    if search and recipe_value(args.recipe, "search_costs", "global") == "local":  # the probes' rows only
        stream_tokens = int(recipe_value(args.recipe, "search_probe_rows", recipe_value(args.recipe, "search_rows")))
        stream_tokens *= args.seq_len
    terms["search_streams_mb"] = candidates * stream_tokens * hidden * 4 / 2**20  # one activation per candidate
    # an untied LM head is a second vocabulary table, resident while the search scores its cost rows
    terms["untied_head_mb"] = 0.0 if config.tie_word_embeddings else vocab * hidden * 4 / 2**20
    # least squares of the widest consumer (down_proj), at most every column kept: the (k+1)² system factored in
    # place, the (k+1) x out right-hand side the solution is written over, and one block of the moments' rows and
    # one of the weight's output rows in float64 (hf_prune/cut/compensation/lstsq.py)
    # (the search's moments @ Wᵀ of every input row, formed once per consumer for all its widths, goes to a file
    # beside the moments it is formed from, and each refit reads its kept rows back)
    blocks = (ROWS_PER_BLOCK + OUTPUTS_PER_BLOCK) * inner
    terms["lstsq_working_mb"] = ((inner + 1) ** 2 + (inner + 1) * hidden + blocks) * 8 / 2**20 if search else 0.0
    # OBS (compensate: obs), in the search's removal order of each MLP and at the cut, one consumer at a time and never
    # beside least squares' system: a copy of the moments written over by their inverse, the weight in float64
    obs = recipe_value(args.recipe, "compensate", "lstsq") == "obs"
    terms["obs_working_mb"] = (inner * inner + inner * hidden) * 8 / 2**20 if obs else 0.0
    return terms


def describe_bound(meta: dict, layerwise: dict | None) -> list[str]:
    lines = [f"One decoder layer in float32: {meta['fp32_layer_mb']:.0f} MB; its consumers' second moments "
             f"(float64, read by least squares only): {meta['layer_second_moments_mb']:.0f} MB; the calibration "
             f"activations in float32: {meta['activations_mb']:.0f} MB; one embedding table in float32: "
             f"{meta['fp32_embedding_mb']:.0f} MB. Their sum, the bound for the layer-wise run: {meta['bound_mb']:.0f} MB"
             + (f" (measured: {layerwise['added_mb']:.0f} MB added, "
                f"{'within' if layerwise['added_mb'] <= meta['bound_mb'] else 'ABOVE'} it)." if layerwise else ".")]
    if meta["search_candidates"]:
        held = [f"the least-squares system of the widest consumer at its widest, its right-hand side and blocks "
                f"({meta.get('lstsq_working_mb', 0):.0f} MB)"]
        if meta.get("obs_working_mb"):
            held.append(f"OBS's copy of the moments that its inverse is written over, and the weight in float64 "
                        f"({meta['obs_working_mb']:.0f} MB)")
        lines.append("Held beside the layer while its moments are in a file (--layerwise spills them once gathered, "
                     "so this memory takes the moments' place): " + "; ".join(held) + ".")
        lines.append(f"Held while a KL is measured, when no layer, moments or embedding table is: "
                     + (f"the untied LM head in float32 ({meta['untied_head_mb']:.0f} MB), " if meta.get("untied_head_mb")
                        else "") + f"one activation of the cost rows per probe carried to the end "
                     f"({meta['search_candidates']} probes: {meta['search_streams_mb']:.0f} MB). The dense "
                     f"log-probabilities of the cost rows ({meta['search_reference_mb']:.0f} MB) are kept in a file "
                     "with --layerwise, read a block of tokens at a time.")
    return lines

if __name__ == "__main__":
    main()
