"""``hf-prune export-gguf MODEL OUT.gguf``: a checkpoint (pruned or not) as a GGUF file for llama.cpp.

Usage::

    hf-prune export-gguf pruned/ pruned.gguf                    # f32, exact
    hf-prune export-gguf pruned/ pruned-q8.gguf --dtype q8_0
    llama-cli -m pruned.gguf -p "The"                            # or llama_cpp.Llama(model_path="pruned.gguf")

Bad input (unreadable model, existing output without ``--overwrite``, a model llama.cpp's per-layer
architectures cannot hold) prints one line and exits 2; nothing is left at ``OUT``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from ...errors import HfPruneError, first_line

DTYPE_NAMES = ["f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0"]  # == gguf.DTYPES, without importing gguf


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hf-prune export-gguf",
        description="Write a checkpoint (hf-prune's pruned ones with their per-layer shapes, or a stock one of a "
                    "supported family) and its tokenizer as one GGUF file that llama.cpp runs.",
        epilog="A model whose attention normalises Q and K per head is written as llama.cpp's 'openelm' "
               "architecture, everything else as "
               "'deci'. Exit status: 0 written, 2 bad input (one line; nothing is written).")
    p.add_argument("model", help="checkpoint directory or Hub model id (safetensors)")
    p.add_argument("output", type=Path, help="the .gguf file to write")
    p.add_argument("--dtype", choices=DTYPE_NAMES, default="f32",
                   help="type of the 2-D weights: f32 reproduces the PyTorch logits (default); quantized types "
                        "write a tensor whose rows are not whole blocks (e.g. an MLP pruned to 344 neurons) as f16")
    p.add_argument("--tokenizer", default=None,
                   help="directory with tokenizer.json / tokenizer.model (default: the model's own)")
    p.add_argument("--tokenizer-pre", default=None,
                   help="llama.cpp's name of a byte-level tokenizer's pre-tokenizer (llama-bpe, qwen2, smollm, ...); "
                        "default: recognised from the tokenizer as llama.cpp's converter does")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    p.add_argument("--verbose", action="store_true", help="show each tensor that falls back to f16")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    output: Path = args.output.expanduser()
    if output.exists() and not args.overwrite:
        return _fail(f"{output} exists; pass --overwrite to replace it")
    if not output.parent.is_dir():
        return _fail(f"the directory of {output} does not exist; create it first")
    from .gguf import export_checkpoint  # deferred: gguf, torch and transformers, so --help answers at once

    started = time.time()
    try:
        summary = export_checkpoint(args.model, output, tokenizer=args.tokenizer, dtype=args.dtype,
                                    tokenizer_pre=args.tokenizer_pre, progress=sys.stderr.isatty())
    except (HfPruneError, OSError, ValueError) as error:
        return _fail(first_line(error))
    except KeyboardInterrupt:
        print("\nhf-prune export-gguf: interrupted; nothing was written", file=sys.stderr)
        return 130
    shapes = summary.layers
    print(f"wrote {summary.path} ({summary.bytes / 2**20:.1f} MiB, {summary.dtype}, llama.cpp architecture "
          f"{summary.architecture}, tokenizer {summary.tokenizer}, context {summary.context_length}) "
          f"in {time.time() - started:.1f} s")
    print(f"  per layer: query heads {[s.heads for s in shapes]}, KV heads {[s.kv_heads for s in shapes]}, "
          f"MLP width {[s.ffn for s in shapes]}")
    if summary.unquantized:
        print(f"  {len(summary.unquantized)} tensor(s) kept at f16: rows are not whole {summary.dtype} blocks "
              "(--verbose names them)")
    print(f"  run it: llama-cli -m {summary.path} -p 'Hello'   (or llama_cpp.Llama(model_path={str(summary.path)!r}))")
    return 0


def _fail(message: str) -> int:
    print(f"hf-prune export-gguf: error: {message}", file=sys.stderr)
    return 2
