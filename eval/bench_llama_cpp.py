"""Pruned models in llama.cpp: exactness of `hf-prune export-gguf` and tokens/s of dense vs pruned.

The model is scored once (EMP, activation importance, KV groups and MLP neurons: different shapes in
every layer) and cut at every budget; each cut, and the dense model, is written as GGUF by the same
exporter (llama.cpp architecture ``deci``) and run through ``llama-cpp-python`` on this machine's CPU.
For each file: max |logit difference| against PyTorch on a held-out prompt (f32 files: same weights;
quantized files: against PyTorch with the file's dequantized weights, plus argmax agreement), then prompt
processing and generation speed, measured in interleaved rounds (dense, 20%, 35%, 50%, dense, ...) so that
a change in machine load hits every model alike; the median round is reported.

    python scripts/fetch_smollm2.py                     # eval/models/smollm2-135m (else the embedded default)
    pip install llama-cpp-python==0.3.36                # compiles llama.cpp (~5-8 min on 2 cores)
    HF_HUB_OFFLINE=1 python eval/bench_llama_cpp.py     # eval/results/llama_cpp.{md,json}
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_common import QUIET, Timer, write_results
from bench_speed import flops_per_token
from llama_cpp import Llama

from hf_prune import PruningConfig, prune_pretrained
from hf_prune.adapters import count_parameters, get_adapter
from hf_prune.data import DEFAULT_MODEL_DIR
from hf_prune.io.checkpoint import load_model
from hf_prune.io.export.gguf import with_stored_weights, write_gguf
from hf_prune.plan.planner import calibration_ids, collect_statistics

SMOLLM2 = Path(__file__).resolve().parent / "models" / "smollm2-135m"
GGML_F32 = 0
#: the cut: per-layer shapes in both kinds of scope, calibrated on the shipped sample of the train split
RECIPE = dict(target="emp", units="all", importance="activation", calibration="builtin", calibration_samples=32,
              seq_len=256)


def heldout_prompt(tokenizer, length: int) -> list[int]:
    """The first ``length`` tokens of the package's held-out sample (never calibrated on)."""
    text = " ".join(json.loads(line)["text"] for line in
                    (DEFAULT_MODEL_DIR.parent / "data" / "heldout.jsonl").read_text().splitlines()[:4])
    ids = tokenizer.encode(text, add_special_tokens=False)[:length]
    assert len(ids) == length, "held-out sample too short"
    return ids


def exactness(model, path: str, dtype: str, ids: list[int]) -> dict:
    """llama.cpp's logits against PyTorch's on the same weights (the file's, dequantized)."""
    reference = model if dtype == "f32" else with_stored_weights(model, dtype)
    with torch.no_grad():
        expected = reference(torch.tensor([ids])).logits[0].numpy()
    llm = Llama(model_path=path, n_ctx=len(ids), logits_all=True, verbose=False, n_threads=2,
                type_k=GGML_F32, type_v=GGML_F32)
    llm.eval(ids)
    actual = np.array(llm.scores[: len(ids)], dtype=np.float32)
    llm.close()
    log_p, log_q = torch.log_softmax(torch.tensor(expected), -1), torch.log_softmax(torch.tensor(actual), -1)
    return {"max_abs_logit_diff": float(np.abs(actual - expected).max()),
            "max_abs_logit": float(np.abs(expected).max()),
            "argmax_agreement": float((actual.argmax(-1) == expected.argmax(-1)).mean()),
            "mean_kl": float((log_p.exp() * (log_p - log_q)).sum(-1).mean())}


def tokenization_agreement(path: str, tokenizer, documents: int = 50) -> tuple[int, int]:
    """(held-out documents that llama.cpp tokenizes to exactly the transformers ids, documents compared)."""
    lines = (DEFAULT_MODEL_DIR.parent / "data" / "heldout.jsonl").read_text().splitlines()[:documents]
    llm = Llama(model_path=path, vocab_only=True, verbose=False)
    try:
        texts = [json.loads(line)["text"] for line in lines]
        same = sum(llm.tokenize(text.encode(), add_bos=False) == tokenizer.encode(text, add_special_tokens=False)
                   for text in texts)
    finally:
        llm.close()
    return same, len(texts)


def speed_round(path: str, prompt: list[int], new_tokens: int, threads: int) -> tuple[float, float]:
    """(prompt tokens/s, generated tokens/s) of one load of ``path``: greedy ``Llama.generate``, timed to its
    first token (prompt processing) and from there to the last; llama.cpp's default (f16) KV cache."""
    llm = Llama(model_path=path, n_ctx=len(prompt) + new_tokens + 8, n_batch=len(prompt), verbose=False,
                n_threads=threads)
    try:
        next(llm.generate(prompt[:8], top_k=1, temp=0.0))  # warm-up: first-call allocations are not the model's speed
        start = time.perf_counter()
        tokens = llm.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True)
        next(tokens)
        first = time.perf_counter()
        for _ in range(new_tokens - 1):
            next(tokens)
        end = time.perf_counter()
    finally:
        llm.close()
    return len(prompt) / (first - start), (new_tokens - 1) / (end - first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=SMOLLM2 if (SMOLLM2 / "config.json").exists() else DEFAULT_MODEL_DIR)
    parser.add_argument("--sparsities", type=float, nargs="*", default=[0.2, 0.35, 0.5])
    parser.add_argument("--mlp-multiples", type=int, nargs="+", default=[1], help="EMP's --mlp-multiple per cut "
                        "(1: widths as EMP chose them; 64: rounded to multiples of 64, fast-kernel sizes)")
    parser.add_argument("--dtypes", nargs="+", default=["f32", "q8_0"])
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="llama_cpp")
    args = parser.parse_args()

    dense, tokenizer = load_model(str(args.model), dtype="float32")
    prompt = heldout_prompt(tokenizer, args.prompt_tokens)
    base = PruningConfig.from_dict(RECIPE)
    rows = calibration_ids(dense, tokenizer, base)
    with Timer() as timer:
        stats = collect_statistics(dense, get_adapter(dense).scopes(dense), base, rows)
    print(f"{args.model.name}: statistics of {rows.shape[0]} x {rows.shape[1]} tokens in {timer.seconds:.0f} s", flush=True)
    models = {"dense": (dense, 0.0)}
    for sparsity in args.sparsities:
        for multiple in args.mlp_multiples:
            config = PruningConfig.from_dict({**RECIPE, "sparsity": sparsity, "mlp_multiple": multiple})
            model, report = prune_pretrained(copy.deepcopy(dense), config, tokenizer=tokenizer, input_ids=rows,
                                             statistics=stats, console=QUIET)
            label = f"EMP {sparsity:.0%}" + (f" MLP x{multiple}" if multiple > 1 else "")
            models[label] = (model, report.achieved_sparsity)

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for label, (model, achieved) in models.items():
            for dtype in args.dtypes:
                summary = write_gguf(model, Path(tmp) / f"{label.replace(' ', '_')}_{dtype}.gguf",
                                     tokenizer_dir=args.model, dtype=dtype)
                row = {"model": label, "dtype": dtype, "achieved_sparsity": achieved,
                       "parameters": count_parameters(model), "file_mib": summary.bytes / 2**20,
                       "flops_per_token": flops_per_token(model, context=args.prompt_tokens + args.new_tokens / 2),
                       "query_heads": [s.heads for s in summary.layers], "mlp_width": [s.ffn for s in summary.layers],
                       **exactness(model, summary.path, dtype, prompt[:64])}
                if label == "dense" and dtype == args.dtypes[0]:
                    same, compared = tokenization_agreement(summary.path, tokenizer)
                    print(f"tokenizer {summary.tokenizer}: {same}/{compared} held-out documents tokenize to the same "
                          "ids in llama.cpp and transformers", flush=True)
                    tokenization = {"tokenizer": summary.tokenizer, "same_ids": same, "documents": compared}
                results.append(row)
                files.append((row, summary.path))
                print(f"{label:9s} {dtype:5s} {row['file_mib']:7.1f} MiB  max|Δlogit| {row['max_abs_logit_diff']:.2e}  "
                      f"(of max |logit| {row['max_abs_logit']:.1f})  argmax {row['argmax_agreement']:.3f}  KL {row['mean_kl']:.2e}",
                      flush=True)
        samples: dict[int, list[tuple[float, float]]] = {id(row): [] for row, _ in files}
        for round_index in range(args.rounds):
            for row, path in files:
                samples[id(row)].append(speed_round(path, prompt, args.new_tokens, args.threads))
            print(f"speed round {round_index + 1}/{args.rounds} done", flush=True)
    for row, _ in files:
        row["prompt_tokens_per_s"] = statistics.median(s[0] for s in samples[id(row)])
        row["generate_tokens_per_s"] = statistics.median(s[1] for s in samples[id(row)])
        row["rounds"] = samples[id(row)]
    markdown = render(results, args)
    markdown += (f"\nTokenizer written as {tokenization['tokenizer']}: {tokenization['same_ids']}/"
                 f"{tokenization['documents']} held-out documents tokenize to the same ids in llama.cpp and "
                 "transformers.\n")
    meta = {**{k: str(v) for k, v in vars(args).items()}, "tokenization": tokenization,
            "statistics_seconds": timer.seconds}
    path = write_results(args.name, results, markdown, meta)
    print(markdown)
    print(f"wrote {path}")


def render(results: list[dict], args) -> str:
    dense = {row["dtype"]: row for row in results if row["model"] == "dense"}
    lines = [f"llama.cpp (llama-cpp-python, CPU, {args.threads} threads) on `{args.model.name}` pruned by EMP "
             f"(activation, KV groups + MLP neurons; per-layer shapes, architecture `deci`). Prompt: "
             f"{args.prompt_tokens} held-out tokens; generation: {args.new_tokens} greedy tokens; median of "
             f"{args.rounds} interleaved rounds. Logit check on 64 tokens against PyTorch with the file's "
             "(dequantized) weights, f32 KV cache; speed with llama.cpp's default f16 KV cache. Limit = dense / "
             "pruned FLOPs per generated token (every matmul, the LM head, attention over the mean context; "
             "`bench_speed.flops_per_token`).", "",
             "| model | file | achieved sparsity | parameters | MiB | prompt tok/s | generate tok/s | "
             "prompt speed-up | generate speed-up | limit | generate speed-up / limit | max abs logit diff | "
             "argmax agreement | KL(PyTorch ‖ llama.cpp) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in results:
        base = dense[row["dtype"]]
        limit = base["flops_per_token"] / row["flops_per_token"]
        lines.append(
            f"| {row['model']} | {row['dtype']} | {row['achieved_sparsity']:.1%} | {row['parameters'] / 1e6:.1f} M | "
            f"{row['file_mib']:.1f} | {row['prompt_tokens_per_s']:.0f} | {row['generate_tokens_per_s']:.1f} | "
            f"{row['prompt_tokens_per_s'] / base['prompt_tokens_per_s']:.2f}x | "
            f"{row['generate_tokens_per_s'] / base['generate_tokens_per_s']:.2f}x | {limit:.2f}x | "
            f"{row['generate_tokens_per_s'] / base['generate_tokens_per_s'] / limit:.2f} | "
            f"{row['max_abs_logit_diff']:.1e} | {row['argmax_agreement']:.3f} | {row['mean_kl']:.1e} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
