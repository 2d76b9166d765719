"""Is a pruned model as much faster as it is smaller? Dense vs pruned speed against the FLOP limit.

For each model shape, one random-weight model (speed needs no trained weights; SmolLM2-135M's real
weights when ``eval/models/smollm2-135m`` exists) is scored once on random tokens and cut at every
(target, sparsity, ``--mlp-multiple``); then every copy, dense included, is timed in interleaved rounds
(dense, uniform 20%, emp 20%, ..., dense, ...) so that a change in machine load hits all alike:

* prefill tokens/s: ``generate`` of one token after ``batch x prompt`` tokens (the prompt's forward pass);
* decode tokens/s: ``generate`` (greedy, KV cache) of ``--new-tokens`` after that prompt, the one-token
  time subtracted;
* peak memory of the decode (CUDA only: the model's weights + what ``generate`` allocates on top) and
  the weights' size;
* the limit: dense FLOPs per token / pruned FLOPs per token (every matmul — decoder linears, attention
  scores and values at the mean context, LM head), the speed-up a perfect kernel would give.
  ``speed-up / limit`` is printed per row.

    HF_HUB_OFFLINE=1 python eval/bench_speed.py --models smollm2 --batch-sizes 1 8     # CPU here
    HF_HUB_OFFLINE=1 python eval/bench_speed.py --device cuda --dtype bfloat16         # same script on a GPU
    HF_HUB_OFFLINE=1 python eval/bench_speed.py --models smollm2 --targets search      # the measured search's cuts

Writes ``eval/results/speed_<device>.{md,json}`` (``--name``); every round is kept in the JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runs from a checkout without installing
import hf_prune  # noqa: E402,F401
from hf_prune.adapters import (
    count_parameters,  # noqa: E402
    get_adapter,  # noqa: E402
)
from hf_prune.config import PruningConfig  # noqa: E402
from hf_prune.cut.apply import apply_pruning  # noqa: E402
from hf_prune.plan.planner import collect_statistics, make_plan  # noqa: E402

EVAL_DIR = Path(__file__).resolve().parent
SMOLLM2 = EVAL_DIR / "models" / "smollm2-135m"

#: random-weight shapes of real 1B-class models (their published configs)
SHAPES = {
    "llama-3.2-1b": (LlamaConfig, dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                       num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                                       vocab_size=128256, tie_word_embeddings=True, max_position_embeddings=8192,
                                       rope_parameters={"rope_type": "default", "rope_theta": 500000.0})),
    "qwen3-1.7b": (Qwen3Config, dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                                     num_attention_heads=16, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                                     tie_word_embeddings=True, max_position_embeddings=8192)),
}


def build_model(name: str, layers: int | None, dtype: torch.dtype, device: str):
    if name == "smollm2":
        model = AutoModelForCausalLM.from_pretrained(SMOLLM2, dtype=dtype)
    else:
        config_cls, values = SHAPES[name]
        config = config_cls(**{**values, **({"num_hidden_layers": layers} if layers else {})})
        torch.manual_seed(0)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.to(device).eval()


def flops_per_token(model, context: float) -> float:
    """Multiply-adds x 2 of one token's forward pass: every Linear, the LM head, and attention's two
    matmuls (scores and values) over ``context`` cached positions."""
    linear = sum(module.in_features * module.out_features for module in model.modules()
                 if isinstance(module, torch.nn.Linear))
    attention = 0
    for scope in get_adapter(model).scopes(model):
        if scope.kind == "attention":
            q_proj = model.get_submodule(scope.producers[0].path)
            attention += 2 * q_proj.out_features * context  # q.k over the context, then p.v
    return 2.0 * (linear + attention)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def time_once(model, prompt: torch.Tensor, new_tokens: int, device: str, cache: str = "dynamic") -> dict:
    """Prefill = ``generate`` of one token (the prompt's forward pass with the KV cache); decode = the
    further ``new_tokens - 1`` tokens of a second ``generate``, its prefill subtracted."""

    def generate(tokens: int) -> float:
        sync(device)
        start = time.perf_counter()
        model.generate(prompt, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=0,
                       eos_token_id=None, cache_implementation=cache)
        sync(device)
        return time.perf_counter() - start

    prefill = generate(1)
    cuda = device.startswith("cuda")
    if cuda:  # every copy's weights stay resident: the peak of this model = its weights + what generate adds
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    total = generate(new_tokens)
    batch, length = prompt.shape
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"prefill_tokens_per_s": batch * length / prefill,
            "decode_tokens_per_s": batch * (new_tokens - 1) / max(total - prefill, 1e-9),
            "peak_mib": (weights + torch.cuda.max_memory_allocated() - before) / 2**20 if cuda else None}


def variants(args) -> list[tuple[str, dict]]:
    """(label, config values) of every pruned model: uniform once per budget; EMP and the search once per
    MLP-width rounding."""
    rows = []
    for sparsity in args.sparsities:
        for target in args.targets:
            if target == "uniform":
                rows.append((f"uniform {sparsity:.0%}", dict(target="uniform", sparsity=sparsity)))
                continue
            for multiple in args.mlp_multiples:
                suffix = f", MLP x{multiple}" if multiple > 1 else ""
                rows.append((f"{target} {sparsity:.0%}{suffix}",
                             dict(target=target, sparsity=sparsity, mlp_multiple=multiple)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["smollm2", "llama-3.2-1b", "qwen3-1.7b"],
                        choices=["smollm2", *SHAPES])
    parser.add_argument("--layers", type=int, default=None, help="keep only this many decoder layers (random shapes)")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.2, 0.35, 0.5])
    parser.add_argument("--targets", nargs="+", choices=["uniform", "emp", "search"], default=["uniform", "emp"],
                        help="allocations to time ('search' measures KL costs on the calibration rows first: minutes)")
    parser.add_argument("--mlp-multiples", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache", choices=["dynamic", "static"], default="dynamic",
                        help="generate's KV cache; 'static' lets transformers compile the decode step (CUDA)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    if args.device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    results, started = [], time.time()
    for model_name in args.models:
        if model_name == "smollm2" and not (SMOLLM2 / "config.json").exists():
            print("skip smollm2: run scripts/fetch_smollm2.py first")
            continue
        dense = build_model(model_name, args.layers, dtype, args.device)
        generator = torch.Generator().manual_seed(0)
        calibration = torch.randint(0, dense.config.vocab_size, (8, 128), generator=generator).to(args.device)
        base = PruningConfig.from_dict(dict(importance="activation", units="all"))
        stats = collect_statistics(dense, get_adapter(dense).scopes(dense), base, calibration)
        models = {"dense": dense}
        for label, values in variants(args):
            config = PruningConfig.from_dict(dict(importance="activation", units="all", **values))
            plan = make_plan(dense, config, calibration, statistics=stats)
            pruned = copy.deepcopy(dense)
            apply_pruning(pruned, config, plan)
            models[label] = pruned
        context = args.prompt_len + args.new_tokens / 2
        dense_flops = flops_per_token(dense, context)
        for batch in args.batch_sizes:
            prompt = torch.randint(0, dense.config.vocab_size, (batch, args.prompt_len), generator=generator)
            prompt = prompt.to(args.device)
            for model in models.values():  # warm-up with the timed shapes: allocations, kernel choice, compilation
                time_once(model, prompt, args.new_tokens, args.device, args.cache)
            rounds: dict[str, list[dict]] = {label: [] for label in models}
            for _ in range(args.rounds):
                for label, model in models.items():
                    rounds[label].append(time_once(model, prompt, args.new_tokens, args.device, args.cache))
            for label, model in models.items():
                row = {"model": model_name, "variant": label, "batch": batch, "parameters": count_parameters(model),
                       "weights_mib": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20,
                       "limit": dense_flops / flops_per_token(model, context), "rounds": rounds[label]}
                for key in ("prefill_tokens_per_s", "decode_tokens_per_s"):
                    values = [r[key] for r in rounds[label]]
                    row[key] = statistics.median(values)
                    row[key + "_spread"] = (max(values) - min(values)) / row[key]
                peaks = [r["peak_mib"] for r in rounds[label] if r["peak_mib"] is not None]
                row["peak_mib"] = max(peaks) if peaks else None
                results.append(row)
            dense_row = next(r for r in results if r["model"] == model_name and r["batch"] == batch
                             and r["variant"] == "dense")
            for row in results:
                if row["model"] == model_name and row["batch"] == batch:
                    for key in ("prefill", "decode"):
                        row[f"{key}_speedup"] = row[f"{key}_tokens_per_s"] / dense_row[f"{key}_tokens_per_s"]
                    print(f"{model_name:13s} b={batch} {row['variant']:22s} decode {row['decode_tokens_per_s']:8.1f} tok/s "
                          f"x{row['decode_speedup']:.2f} (limit x{row['limit']:.2f}, {row['decode_speedup'] / row['limit']:.2f}"
                          f" of it)  prefill x{row['prefill_speedup']:.2f}", flush=True)
        del models, dense
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    name = args.name or f"speed_{'gpu' if args.device.startswith('cuda') else 'cpu'}"
    meta = {**{k: str(v) for k, v in vars(args).items()}, "device_name": device_name, "dtype": str(dtype),
            "torch": torch.__version__, "minutes": (time.time() - started) / 60,
            "command": " ".join(["python", "eval/bench_speed.py", *sys.argv[1:]])}
    markdown = render(results, meta)
    out = EVAL_DIR / "results"
    out.mkdir(exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": results}, indent=2))
    (out / f"{name}.md").write_text(markdown)
    print(markdown)


def render(results: list[dict], meta: dict) -> str:
    lines = [f"Command: `{meta['command']}` — {meta['minutes']:.1f} min on {meta['device_name']} ({meta['device']}, "
             f"{meta['dtype']}, torch {meta['torch']}). Prompt {meta['prompt_len']} random tokens, "
             f"{meta['new_tokens']} greedy new tokens ({meta['cache']} KV cache); median of {meta['rounds']} interleaved rounds "
             "(spread = (max − min) / median). Limit = dense FLOPs per token / pruned FLOPs per token.", "",
             "| model | batch | variant | parameters | weights MiB | peak MiB | prefill tok/s | decode tok/s | "
             "prefill speed-up | decode speed-up | limit | decode speed-up / limit | spread (decode) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in results:
        peak = f"{row['peak_mib']:.0f}" if row["peak_mib"] is not None else "–"
        lines.append(f"| {row['model']} | {row['batch']} | {row['variant']} | {row['parameters'] / 1e6:.1f} M | "
                     f"{row['weights_mib']:.0f} | {peak} | {row['prefill_tokens_per_s']:.0f} | "
                     f"{row['decode_tokens_per_s']:.1f} | {row['prefill_speedup']:.2f}x | {row['decode_speedup']:.2f}x | "
                     f"{row['limit']:.2f}x | {row['decode_speedup'] / row['limit']:.2f} | "
                     f"{row['decode_tokens_per_s_spread']:.0%} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
