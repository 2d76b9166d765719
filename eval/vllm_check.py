"""vLLM serves hf-prune checkpoints: prompt logprobs and greedy tokens equal PyTorch's, and tokens/s.

Runs in the vLLM venv (eval/README.md, "Serving with vLLM"), offline, on CPU:

    VLLM_CPU_KVCACHE_SPACE=1 HF_HUB_OFFLINE=1 .venv-vllm/bin/python eval/vllm_check.py

1. builds pruned checkpoints: a tiny random model of each family (Llama, Mistral with its sliding
   window, Qwen2, Qwen3) with different KV-group / neuron counts in every layer, layer 0's attention and
   layer 1's MLP removed whole, and FLAP-style compensation biases on o_proj / down_proj (kept and
   removed sublayers); and SmolLM2-135M (``scripts/fetch_smollm2.py``) pruned by the ``hf-prune``
   command with ``--target emp --units all`` at 20 / 35 / 50 % (35 % with ``--compensate bias``), which
   gives every layer its own KV-group count;
2. loads each in ``vllm.LLM(dir, dtype="float32")`` (the plugin registered through the
   ``vllm.general_plugins`` entry point; no trust_remote_code) and in transformers (fp32), and compares
   the log-probability of every prompt token (``SamplingParams(prompt_logprobs=0)``) and 20 greedy
   tokens;
3. measures generated tokens/s of dense SmolLM2 (vLLM's stock Llama class) against the pruned ones,
   same settings, a warm-up batch excluded.

Prints a table; exits 1 on a logprob difference above ``--tolerance`` or a greedy mismatch.

``--checkpoint DIR`` checks an output hf-prune already wrote, as it is (repeatable; with no ``--models`` only
those); ``--dtype bfloat16`` runs both sides in bfloat16, for a checkpoint whose float32 copy would not fit in
memory (the Llama-3.1-8B-shaped run of ``eval/bench_layerwise_memory.py``).

The embedded default model (hf_prune/default_model) cannot be used: its head_dim is 16 and vLLM's CPU
attention has no kernel for it (``Unsupported CPU attention configuration: head_dim=16``; the backend
lists 32, 64, 80, 96, 112, 128, ...). ``--models default`` tries it anyway. Hence head_dim 32 for the tiny
models here, and SmolLM2 (head_dim 64) for the real-model rows.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache; vLLM's CPU default is larger than needed

ROOT = Path(__file__).resolve().parent.parent
SMOLLM2 = ROOT / "eval" / "models" / "smollm2-135m"
DEFAULT_MODEL = ROOT / "hf_prune" / "default_model"
TINY_OVERRIDES = dict(hidden_size=128, num_attention_heads=8, num_key_value_heads=4, head_dim=32,
                      intermediate_size=96)
SMOLLM2_PRUNE = {  # name -> hf-prune flags
    "smollm2-emp20": ["--sparsity", "0.2"],
    "smollm2-emp35-bias": ["--sparsity", "0.35", "--compensate", "bias"],
    "smollm2-emp50": ["--sparsity", "0.5"],
}
GREEDY_TOKENS = 20


# --------------------------------------------------------------------------- building checkpoints

def build_tiny(family: str, output: Path) -> Path:
    """A tiny random ``family`` model cut to per-layer shapes, with a removed attention (layer 0), a
    removed MLP (layer 1) and compensation biases, saved as hf-prune saves any pruned model."""
    import torch

    from hf_prune import save_pruned
    from hf_prune.adapters import get_adapter
    from hf_prune.cut.relabel import as_pruned_model
    from hf_prune.cut.surgery import apply_plan, ensure_bias
    from hf_prune.testing import make_tiny_model, make_tiny_tokenizer, random_plan

    model = make_tiny_model(family, "sdpa", **TINY_OVERRIDES)
    scopes = {scope.name: scope for scope in get_adapter(model).scopes(model)}
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():  # what FLAP compensation leaves: a bias on the consumer (o_proj / down_proj)
        for name in ("layers.0.attention", "layers.1.mlp", "layers.2.attention", "layers.2.mlp"):
            bias = ensure_bias(model, scopes[name].consumer.path).bias
            bias.copy_(torch.randn(bias.shape, generator=generator) * 0.2)
    plan = random_plan(model, seed=7)
    plan["layers.0.attention"] = []
    plan["layers.1.mlp"] = []
    apply_plan(model, list(scopes.values()), plan, allow_empty=True)
    as_pruned_model(model, get_adapter(model).scopes(model), {"note": "eval/vllm_check.py"})
    return save_pruned(model, make_tiny_tokenizer(), output, overwrite=True)


def build_smollm2(name: str, output: Path) -> Path:
    """SmolLM2-135M pruned by the ``hf-prune`` command (reused when ``output`` already holds it)."""
    if (output / "config.json").exists():
        return output
    command = [sys.executable, "-m", "hf_prune", "--model", str(SMOLLM2), "--target", "emp", "--units", "all",
               *SMOLLM2_PRUNE[name], "--calibration", "builtin", "--calibration-samples", "8", "--seq-len", "64",
               "--output", str(output), "--overwrite"]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return output


def build_default(output: Path) -> Path:
    """The embedded default pruned with per-layer KV groups (vLLM's CPU attention refuses its head_dim 16)."""
    if not (output / "config.json").exists():
        subprocess.run([sys.executable, "-m", "hf_prune", "--target", "emp", "--units", "all", "--sparsity", "0.3",
                        "--output", str(output), "--overwrite"], check=True, stdout=subprocess.DEVNULL)
    return output


def shapes_summary(directory: Path) -> str:
    """Per-layer KV heads / MLP width, '-' for a removed sublayer (from the config, as the plugin reads it)."""
    from hf_prune.vllm_plugin.specs import RemovedSpec, layer_specs

    config = json.loads((directory / "config.json").read_text())
    if not config.get("model_type", "").startswith("hf_prune_"):
        return "dense"
    parts = []
    for spec in layer_specs(config):
        kv = "-" if isinstance(spec.attention, RemovedSpec) else str(spec.attention.num_kv_heads)
        mlp = "-" if isinstance(spec.mlp, RemovedSpec) else str(spec.mlp.intermediate_size)
        parts.append(f"{kv}/{mlp}")
    return " ".join(parts)


# --------------------------------------------------------------------------- PyTorch reference

def prompts_for(directory: Path, count: int, length: int) -> list[list[int]]:
    """``count`` fixed token-id prompts of ``length`` tokens from the shipped sample text."""
    from transformers import AutoTokenizer

    from hf_prune.testing import SAMPLE_TEXT

    tokenizer = AutoTokenizer.from_pretrained(directory)
    ids = tokenizer(SAMPLE_TEXT * 8)["input_ids"]
    vocab = json.loads((directory / "config.json").read_text())["vocab_size"]
    ids = [i for i in ids if i < vocab]
    return [ids[start * 7: start * 7 + length] for start in range(count)]


def torch_reference(directory: Path, prompts: list[list[int]],
                    dtype: str = "float32") -> tuple[list[list[float]], list[list[int]]]:
    """transformers in ``dtype``: log p(token_t | tokens_<t) for every prompt token after the first, and 20 greedy
    tokens (``min_new_tokens`` so that an end-of-sequence token does not stop it, as ``ignore_eos`` in vLLM)."""
    import torch
    from transformers import AutoModelForCausalLM

    import hf_prune  # noqa: F401  (registers the pruned classes)

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=getattr(torch, dtype),
                                                 attn_implementation="sdpa").eval()
    logprobs, greedy = [], []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([prompt])
            logits = model(ids).logits[0].float().log_softmax(-1)
            logprobs.append(logits[:-1].gather(-1, ids[0, 1:, None])[:, 0].tolist())
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=GREEDY_TOKENS, min_new_tokens=GREEDY_TOKENS, pad_token_id=0)
            greedy.append(out[0, len(prompt):].tolist())
    del model
    gc.collect()
    return logprobs, greedy


# --------------------------------------------------------------------------- vLLM

def vllm_llm(directory: Path, max_model_len: int, compile: bool, max_num_seqs: int = 16, dtype: str = "float32"):
    """An engine on ``directory``; eager unless ``compile`` (vLLM's default on CPU: torch.compile with
    inductor, which costs a compilation per model at start)."""
    from vllm import LLM

    return LLM(str(directory), dtype=dtype, max_model_len=max_model_len, max_num_seqs=max_num_seqs,
               enforce_eager=not compile, seed=0, disable_log_stats=True)


def vllm_reference(llm, prompts: list[list[int]]) -> tuple[list[list[float]], list[list[int]]]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(temperature=0.0, max_tokens=GREEDY_TOKENS, ignore_eos=True, prompt_logprobs=0)
    outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    logprobs, greedy = [], []
    for prompt, output in zip(prompts, outputs):
        logprobs.append([entry[token].logprob for token, entry in zip(prompt[1:], output.prompt_logprobs[1:])])
        greedy.append(list(output.outputs[0].token_ids))
    return logprobs, greedy


def throughput(llm, prompts: list[list[int]], new_tokens: int, repeats: int) -> float:
    """Generated tokens per second for the whole batch (best of ``repeats``), after one warm-up batch."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    batch = [TokensPrompt(prompt_token_ids=p) for p in prompts]
    llm.generate(batch, params, use_tqdm=False)  # warm-up
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        outputs = llm.generate(batch, params, use_tqdm=False)
        elapsed = time.perf_counter() - start
        best = max(best, sum(len(o.outputs[0].token_ids) for o in outputs) / elapsed)
    return best


def release(llm) -> None:
    """Stop the engine's processes before the next model starts (2 cores, one engine at a time)."""
    try:
        llm.llm_engine.engine_core.shutdown()
    except Exception:  # noqa: BLE001 - older/newer engines: garbage collection then does it
        pass
    del llm
    gc.collect()


# --------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=None,
                        help="comma list of tiny, smollm2, default (default: tiny,smollm2 unless --checkpoint is given)")
    parser.add_argument("--checkpoint", type=Path, action="append", default=[],
                        help="an hf-prune output directory to check as it is (repeatable), e.g. the 8B-shaped run's")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="both sides' dtype (bfloat16 for a checkpoint whose float32 copy does not fit in memory)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/hf_prune_vllm_check"))
    parser.add_argument("--tolerance", type=float, default=1e-3, help="max abs prompt-logprob difference")
    parser.add_argument("--prompts", type=int, default=4, help="prompts in the logprob / greedy comparison")
    parser.add_argument("--bench-prompts", type=int, default=8)
    parser.add_argument("--bench-prompt-len", type=int, default=64)
    parser.add_argument("--bench-new-tokens", type=int, default=64)
    parser.add_argument("--bench-repeats", type=int, default=2)
    parser.add_argument("--no-bench", action="store_true")
    parser.add_argument("--compile", action="store_true", help="vLLM's torch.compile mode instead of eager")
    args = parser.parse_args(argv)
    wanted = set(args.models.split(",")) if args.models else set() if args.checkpoint else {"tiny", "smollm2"}
    args.workdir.mkdir(parents=True, exist_ok=True)

    checkpoints: list[tuple[str, Path, int]] = []  # name, directory, prompt length
    if "tiny" in wanted:
        for family in ("llama", "mistral", "qwen2", "qwen3"):
            checkpoints.append((f"tiny-{family}", build_tiny(family, args.workdir / f"tiny-{family}"), 24))
    if "smollm2" in wanted:
        if not (SMOLLM2 / "config.json").exists():
            print(f"{SMOLLM2} is missing: run `HF_HUB_OFFLINE=1 python scripts/fetch_smollm2.py` first",
                  file=sys.stderr)
            return 2
        checkpoints.append(("smollm2-dense", SMOLLM2, 48))
        for name in SMOLLM2_PRUNE:
            checkpoints.append((name, build_smollm2(name, args.workdir / name), 48))
    if "default" in wanted:
        checkpoints.append(("default-emp30", build_default(args.workdir / "default-emp30"), 24))
    for directory in args.checkpoint:
        if not (directory / "config.json").is_file():
            print(f"{directory} holds no config.json: pass an hf-prune output directory", file=sys.stderr)
            return 2
        checkpoints.append((directory.name, directory, 24))

    rows, failed = [], False
    for name, directory, length in checkpoints:
        prompts = prompts_for(directory, args.prompts, length)
        ref_logprobs, ref_greedy = torch_reference(directory, prompts, args.dtype)
        start = time.perf_counter()
        llm = vllm_llm(directory, max_model_len=256, compile=args.compile, dtype=args.dtype)
        load_s = time.perf_counter() - start
        got_logprobs, got_greedy = vllm_reference(llm, prompts)
        diff = max(abs(a - b) for ref, got in zip(ref_logprobs, got_logprobs) for a, b in zip(ref, got))
        same = got_greedy == ref_greedy
        speed = None
        if name.startswith("smollm2") and not args.no_bench:
            bench = prompts_for(directory, args.bench_prompts, args.bench_prompt_len)
            speed = throughput(llm, bench, args.bench_new_tokens, args.bench_repeats)
        release(llm)
        ok = diff <= args.tolerance and same
        failed |= not ok
        rows.append((name, shapes_summary(directory), diff, same, load_s, speed, ok))
        print(f"{name}: max |dlogprob| {diff:.2e}, greedy {'equal' if same else 'DIFFERENT'}"
              + (f", {speed:.1f} tok/s" if speed else ""), flush=True)
        if not same:
            print(f"  torch {ref_greedy}\n  vllm  {got_greedy}", flush=True)

    dense = next((row[5] for row in rows if row[0] == "smollm2-dense" and row[5]), None)
    mode = "torch.compile" if args.compile else "eager"
    print(f"\nvLLM (CPU, {args.dtype}, {mode}) vs transformers ({args.dtype}); tolerance {args.tolerance:g}; "
          f"{args.bench_prompts} prompts x {args.bench_prompt_len} tokens, {args.bench_new_tokens} new tokens each")
    print("| model | max abs prompt-logprob diff | greedy 20 tokens | engine start s | gen tok/s | vs dense | ok |")
    print("|---|---|---|---|---|---|---|")
    for name, _, diff, same, load_s, speed, ok in rows:
        ratio = f"{speed / dense:.2f}x" if speed and dense else ""
        print(f"| {name} | {diff:.2e} | {'equal' if same else 'DIFFERENT'} | {load_s:.0f} | "
              f"{f'{speed:.1f}' if speed else ''} | {ratio} | {'yes' if ok else 'NO'} |")
    print("\nper-layer shapes (KV heads/MLP width, '-' = removed):")
    for name, shapes, *_ in rows:
        print(f"  {name}: {shapes}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
