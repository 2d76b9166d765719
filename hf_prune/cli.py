"""The ``hf-prune`` command: parse, build a PruningConfig, call the library. No logic of its own.

``hf-prune [prune] [options]`` prunes a model; ``hf-prune eval [options]`` scores one on held-out text.
Errors caused by the input print one line (``hf-prune: error: ...``) and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import MISSING, fields
from pathlib import Path

from .config import UNITS, PruningConfig
from .errors import HfPruneError

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"
logger = logging.getLogger("hf_prune")


def _config_help(name: str) -> str:
    for f in fields(PruningConfig):
        if f.name == name:
            default = f.default if f.default is not MISSING else None
            return f"{f.metadata['help']} (default: {default})"
    raise KeyError(name)


def build_prune_parser() -> argparse.ArgumentParser:
    from .allocation import ALLOCATORS
    from .importance import IMPORTANCE_REGISTRY

    parser = argparse.ArgumentParser(
        prog="hf-prune",
        description="Structurally prune a Llama / Mistral / Qwen2 / Qwen3 causal LM: remove whole KV groups "
                    "and MLP neurons, then write a checkpoint that reloads with "
                    "AutoModelForCausalLM.from_pretrained. `hf-prune eval --help` scores a model instead.",
    )
    parser.add_argument("--model", default=None,
                        help="Hub model id or local checkpoint directory (safetensors). Default: the tiny "
                             "trained Llama shipped inside hf-prune, which needs no download.")
    parser.add_argument("--output", default="pruned",
                        help="directory to write the pruned checkpoint to; written atomically (default: pruned)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --output if it exists and is not empty (otherwise that is an error)")
    parser.add_argument("--target", choices=sorted(ALLOCATORS), default="uniform", help=_config_help("target"))
    parser.add_argument("--sparsity", type=float, default=0.3, help=_config_help("sparsity"))
    parser.add_argument("--importance", choices=sorted(IMPORTANCE_REGISTRY), default="magnitude",
                        help=_config_help("importance"))
    parser.add_argument("--units", choices=UNITS, default="all", help=_config_help("units"))
    parser.add_argument("--seed", type=int, default=0, help=_config_help("seed"))
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                        help="dtype to load and save in; 'auto' keeps the checkpoint's dtype on a GPU and uses "
                             "float32 on a CPU, where half precision is many times slower (default: auto)")
    parser.add_argument("--device-map", default=None,
                        help="passed to from_pretrained, e.g. 'auto' to spread a large model over GPUs and CPU "
                             "(default: everything on one device)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every step")
    return parser


def run_prune(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .checkpoint import load_config, load_model, prepare_output_dir, save_pruned
    from .pruner import prune
    from .report import model_card, print_summary

    console = Console(stderr=False)
    config = PruningConfig(
        target=args.target, sparsity=args.sparsity, importance=args.importance, units=args.units, seed=args.seed
    )
    model_id = args.model or str(DEFAULT_MODEL_DIR)
    prepare_output_dir(args.output, args.overwrite)  # fail before the slow part, not after it
    load_config(model_id)

    started = time.perf_counter()
    console.print(f"loading {model_id}")
    model, tokenizer = load_model(model_id, dtype=args.dtype, device_map=args.device_map)
    report = prune(model, config)
    output = save_pruned(
        model, tokenizer, args.output, overwrite=args.overwrite,
        extra_files={"README.md": model_card(report, args.model or "hf-prune embedded default (tiny Llama)")},
    )
    print_summary(report, console)
    console.print(f"wrote {output} in {time.perf_counter() - started:.1f}s; reload with "
                  f"AutoModelForCausalLM.from_pretrained({str(output)!r}) after `import hf_prune`, "
                  "or with trust_remote_code=True without it")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["eval"]:
        from .eval_cli import main as eval_main

        return eval_main(argv[1:])
    if argv[:1] == ["prune"]:
        argv = argv[1:]
    args = build_prune_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run_prune(args)
    except HfPruneError as error:
        print(f"hf-prune: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
