"""Peak memory of pruning a ~1B model in memory and with ``--layerwise``, in fresh processes.

Saves a random Llama-3.2-1B-shaped checkpoint (bf16, in 500 MB shards; random weights: memory needs no trained
ones), then runs the same ``hf-prune`` command once in memory (``--sequential``) and once with ``--layerwise``,
each in its own interpreter, and reads the process's peak resident memory (``VmHWM``) above its resident memory
once every library is imported. Both outputs are compared tensor by tensor. ``--recipe emp``: EMP 30%,
activation importance; ``--recipe search-lstsq``: the search with least squares (units all, 35%), whose
candidates and cut are refit from one layer's second moments at a time — the bound it is held to is one decoder
layer in float32 + that layer's second moments + the calibration activations + the embedding table.

    HF_HUB_OFFLINE=1 python eval/bench_layerwise_memory.py                # ~1.24B parameters, ~6 min on 2 CPU cores
    HF_HUB_OFFLINE=1 python eval/bench_layerwise_memory.py --recipe search-lstsq --name layerwise_memory_search_lstsq

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

#: Llama-3.2-1B's shapes (tied embeddings, 128k vocabulary)
LLAMA_3_2_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                    num_attention_heads=32, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True,
                    max_position_embeddings=131072, rope_theta=500000.0)

#: runs in a fresh interpreter: the baseline is taken once everything a run imports is imported
PROBE = """
import json, sys, time
import datasets, torch, transformers  # noqa: F401
from hf_prune.run.cli import main

def status_mb(field):
    return int(open("/proc/self/status").read().split(field + ":")[1].split()[0]) / 1024

baseline = status_mb("VmRSS")
start = time.perf_counter()
code = main(sys.argv[1:])
print(json.dumps({"code": code, "baseline_mb": baseline, "peak_mb": status_mb("VmHWM"),
                  "seconds": time.perf_counter() - start}))
"""


def make_checkpoint(directory: Path, layers: int | None) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_prune.testing import make_tiny_tokenizer

    config = LlamaConfig(**{**LLAMA_3_2_1B, **({"num_hidden_layers": layers} if layers else {})})
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(directory, max_shard_size="500MB")
    make_tiny_tokenizer(vocab_size=2000).save_pretrained(directory)


#: the hf-prune flags of each recipe the bench runs
RECIPES = {
    "emp": ["--target", "emp", "--sparsity", "0.3"],
    "search-lstsq": ["--target", "search", "--units", "all", "--compensate", "lstsq", "--sparsity", "0.35",
                     "--search-rows", "2", "--mlp-levels", "4", "--refine-rounds", "1"],
}


def run(source: Path, output: Path, layerwise: bool, samples: int, seq_len: int, recipe: str) -> dict:
    argv = ["--model", str(source), "--output", str(output), *RECIPES[recipe],
            "--calibration", "builtin", "--calibration-samples", str(samples), "--seq-len", str(seq_len)]
    argv += ["--layerwise"] if layerwise else ["--sequential"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    result = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"hf-prune failed ({'layerwise' if layerwise else 'in memory'}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


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
    parser.add_argument("--layers", type=int, default=None, help="fewer decoder layers (default: 16, as Llama-3.2-1B)")
    parser.add_argument("--samples", type=int, default=8, help="calibration rows")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per calibration row")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="emp")
    parser.add_argument("--name", default="layerwise_memory")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="hf-prune-layerwise-") as scratch:
        scratch = Path(scratch)
        make_checkpoint(scratch / "dense", args.layers)
        files = sorted((scratch / "dense").glob("*.safetensors"))
        checkpoint_mb = sum(p.stat().st_size for p in files) / 2**20
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(scratch / "dense")
        hidden, inner, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
        kv = config.num_key_value_heads * config.head_dim
        layer_params = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * inner + 2 * hidden
        rows = {}
        for layerwise in (False, True):
            mode = "layerwise" if layerwise else "in memory"
            rows[mode] = run(scratch / "dense", scratch / mode.replace(" ", "_"), layerwise, args.samples, args.seq_len,
                             args.recipe)
            rows[mode]["added_mb"] = rows[mode]["peak_mb"] - rows[mode]["baseline_mb"]
            print(f"{mode}: peak {rows[mode]['peak_mb']:.0f} MB, {rows[mode]['added_mb']:.0f} MB above the "
                  f"imports, {rows[mode]['seconds']:.0f} s", flush=True)
        equal = same_tensors(scratch / "layerwise", scratch / "in_memory")

    second_moments = hidden * hidden + inner * inner  # o_proj's and down_proj's input, float64
    meta = {"shapes": {**LLAMA_3_2_1B, "num_hidden_layers": config.num_hidden_layers}, "checkpoint_mb": checkpoint_mb,
            "shards": len(files), "fp32_layer_mb": layer_params * 4 / 2**20,
            "fp32_embedding_mb": vocab * hidden * 4 / 2**20, "recipe": args.recipe, "flags": RECIPES[args.recipe],
            "layer_second_moments_mb": second_moments * 8 / 2**20 if args.recipe == "search-lstsq" else 0.0,
            "activations_mb": args.samples * args.seq_len * hidden * 4 / 2**20,
            "samples": args.samples, "seq_len": args.seq_len, "same_tensors": equal, "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d")}
    lines = [f"# Peak memory of pruning a Llama-3.2-1B-shaped model ({config.num_hidden_layers} layers, random bf16 "
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
    bound = (meta["fp32_layer_mb"] + meta["layer_second_moments_mb"] + meta["activations_mb"]
             + meta["fp32_embedding_mb"])
    meta["bound_mb"] = bound
    lines += ["", f"One decoder layer in float32: {meta['fp32_layer_mb']:.0f} MB; its consumers' second moments "
              f"(float64, read by least squares only): {meta['layer_second_moments_mb']:.0f} MB; the calibration "
              f"activations in float32: {meta['activations_mb']:.0f} MB; the (tied) embedding table in float32: "
              f"{meta['fp32_embedding_mb']:.0f} MB. Their sum, the bound for the layer-wise run: {bound:.0f} MB "
              f"(measured: {rows['layerwise']['added_mb']:.0f} MB added, "
              f"{'within' if rows['layerwise']['added_mb'] <= bound else 'ABOVE'} it). Layer-wise and in-memory "
              f"checkpoints hold the same tensors: {equal}."]
    markdown = "\n".join(lines) + "\n"
    print(markdown)
    write_results(args.name, rows, markdown, meta)


if __name__ == "__main__":
    main()
