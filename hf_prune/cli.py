"""The ``hf-prune`` command: parse, build a PruningConfig, call the library. No logic of its own.

``hf-prune [prune] [options]`` prunes a model; ``hf-prune eval [options]`` scores one on held-out text.
Errors caused by the input print one line (``hf-prune: error: ...``) and exit with status 2; Ctrl-C
ends with one line saying what was kept (exit status 130).

Every PruningConfig field is a flag (``calibration_samples`` -> ``--calibration-samples``) whose help is
the field's own; precedence is field default < ``--recipe`` file < flags given on the command line.
Under ``accelerate launch`` every process computes statistics on its share of the calibration rows,
the sums are reduced, and the main process alone writes the checkpoint.

This module imports nothing heavy at the top: ``--help``, ``--version`` and a mistyped flag answer
before torch is loaded.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
import types
import typing
from dataclasses import MISSING, fields
from pathlib import Path

from . import __version__
from .allocation import ALLOCATORS, PLANNERS
from .config import COMPENSATION, GATE_INIT, LEARNED_TARGETS, UNITS, PruningConfig, load_recipe
from .data import BUILTIN
from .errors import HfPruneError
from .importance import IMPORTANCE_REGISTRY

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"
DEFAULT_MODEL_NAME = "hf-prune embedded default (tiny trained Llama)"
INTERRUPTED = 130  # the shell's status for a process ended by SIGINT
logger = logging.getLogger("hf_prune")

USAGE_EPILOG = """\
verbs:
  hf-prune [prune] [options]   prune a model (the default verb; `prune` may be omitted)
  hf-prune eval [options]      score a model on held-out text through lm-eval (`hf-prune eval --help`)

examples:
  hf-prune --sparsity 0.3 --output pruned/                 # the embedded default, shipped calibration text
  hf-prune --model meta-llama/Llama-3.1-8B --calibration Salesforce/wikitext --calibration-config \\
      wikitext-2-raw-v1 --sparsity 0.2 --output pruned/
  hf-prune --target search --sparsity 0.35 --output pruned/   # measured costs; may remove whole sublayers
  hf-prune --recipe recipes/llama.yaml --model DIR --output pruned/

exit status: 0 done, 2 bad input (one line names the problem and the fix), 130 interrupted (Ctrl-C).
"""


def _choices() -> dict[str, list[str]]:
    return {"target": sorted([*ALLOCATORS, *PLANNERS]), "importance": sorted(IMPORTANCE_REGISTRY),
            "units": list(UNITS), "compensate": list(COMPENSATION), "gate_init": list(GATE_INIT)}


def _help_text(metadata: typing.Mapping[str, str], default: object) -> str:
    """The field's help plus what happens by default; argparse %-formats help, so '%' is escaped."""
    shown = metadata.get("default_help", default)
    return f"{metadata['help']} (default: {shown})".replace("%", "%%")


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    hints = typing.get_type_hints(PruningConfig)
    choices = _choices()
    for f in fields(PruningConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        help_text = _help_text(f.metadata, default)
        kind = hints[f.name]
        if isinstance(kind, types.UnionType):
            kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, type=kind, choices=choices.get(f.name), default=argparse.SUPPRESS,
                                help=help_text)


def build_prune_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-prune",
        usage="hf-prune [prune] [options]  |  hf-prune eval [options]",
        description="Structurally prune a Llama / Mistral / Qwen2 / Qwen3 causal LM: remove whole KV groups "
                    "and MLP neurons, then write a checkpoint that reloads with "
                    "AutoModelForCausalLM.from_pretrained.",
        epilog=USAGE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hf-prune {__version__}")
    parser.add_argument("--model", default=None,
                        help="Hub model id or local checkpoint directory (safetensors). Default: the tiny "
                             "trained Llama shipped inside hf-prune, which needs no download.")
    parser.add_argument("--output", default="pruned",
                        help="directory to write the pruned checkpoint to; written atomically (default: pruned)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --output if it exists and is not empty (otherwise that is an error)")
    parser.add_argument("--recipe", default=None,
                        help="YAML file of option defaults, e.g. recipes/llama.yaml; flags given here override it")
    _add_config_flags(parser)
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                        help="dtype to load and save in; 'auto' keeps the checkpoint's dtype on a GPU and uses "
                             "float32 on a CPU, where half precision is many times slower (default: auto)")
    parser.add_argument("--device-map", default=None,
                        help="passed to from_pretrained, e.g. 'auto' to spread a large model over GPUs and CPU "
                             "(default: everything on one device; one device per process under accelerate)")
    quantized = parser.add_mutually_exclusive_group()
    quantized.add_argument("--load-in-4bit", action="store_true",
                           help="Hyperflux: hold the frozen base in 4-bit (bitsandbytes NF4) while gates train; the "
                                "plan is then applied to the full-precision weights. Needs bitsandbytes (GPU, or its CPU backend)")
    quantized.add_argument("--load-in-8bit", action="store_true",
                           help="Hyperflux: like --load-in-4bit, with an 8-bit (LLM.int8) base")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every step")
    return parser


def resolve_config(args: argparse.Namespace) -> PruningConfig:
    """Field defaults < recipe < explicit flags; an explicit --beta drops a recipe's sparsity and vice versa."""
    names = {f.name for f in fields(PruningConfig)}
    explicit = {name: value for name, value in vars(args).items() if name in names}
    values = load_recipe(args.recipe) if args.recipe else {}
    values.update(explicit)
    if "beta" in explicit and "sparsity" not in explicit:
        values["sparsity"] = None
    elif "sparsity" in explicit and "beta" not in explicit:
        values.pop("beta", None)
    elif values.get("beta") is not None and "sparsity" not in values:
        values["sparsity"] = None
    if values.get("target") in LEARNED_TARGETS and not values.get("state_dir"):
        values["state_dir"] = str(Path(args.output).expanduser().resolve()) + ".hyperflux-state"
    return PruningConfig.from_dict(values)


def restore_checkpoint_dtype(model, source_dtype) -> None:
    """On a CPU, 'auto' computes in float32; the pruned checkpoint is still written in the dtype the
    base checkpoint was stored in, so pruning never makes the files larger."""
    import torch

    if isinstance(source_dtype, str):
        source_dtype = getattr(torch, source_dtype, None)
    if isinstance(source_dtype, torch.dtype) and source_dtype.is_floating_point and model.dtype != source_dtype:
        model.to(source_dtype)


def run_prune(args: argparse.Namespace, config: PruningConfig) -> int:
    from rich.console import Console

    from .checkpoint import check_quantization_available, load_config, load_model, prepare_output_dir, save_pruned
    from .distributed import process_state
    from .errors import ConfigError
    from .hyperflux.trainer import check_saved_state
    from .offload import has_offloaded_weights
    from .pruner import apply_pruning, calibration_ids, make_plan, needs_calibration
    from .report import print_summary, write_run_artifacts

    state = process_state()
    console = Console(quiet=not state.is_main_process)
    if args.model is None and config.calibration is None and needs_calibration(config):
        # the embedded default calibrates on the text shipped with it, so every target works right after
        # install; any other model must be given text of its own domain
        config.calibration = BUILTIN
    model_id = args.model or str(DEFAULT_MODEL_DIR)
    base_name = args.model or DEFAULT_MODEL_NAME
    quantize_bits = 4 if args.load_in_4bit else 8 if args.load_in_8bit else None
    if quantize_bits is not None:
        if config.target not in LEARNED_TARGETS:
            raise ConfigError(f"--load-in-{quantize_bits}bit applies to --target hyperflux only: the other targets "
                              "read full-precision weights")
        check_quantization_available(quantize_bits)
    prepare_output_dir(args.output, args.overwrite)  # fail before the slow part, not after it
    if config.target in LEARNED_TARGETS:
        check_saved_state(config.state_dir, resume=config.resume, restart=config.restart)
    source_dtype = getattr(load_config(model_id), "dtype", None)

    started = time.perf_counter()
    console.print(f"loading {model_id}")
    device_map = args.device_map
    if device_map is None and state.num_processes > 1:
        device_map = {"": state.device}
    model, tokenizer = load_model(model_id, dtype=args.dtype, device_map=device_map, quantize_bits=quantize_bits)
    input_ids = calibration_ids(model, tokenizer, config)
    plan = make_plan(model, config, input_ids)
    if quantize_bits is not None:  # gates were learned on the quantized base: cut the real weights
        del model
        model, _ = load_model(model_id, dtype=args.dtype, device_map=device_map)
    elif has_offloaded_weights(model):  # offloaded weights live in accelerate's store: cut a copy in CPU memory
        del model
        console.print(f"reloading {model_id} into CPU memory for the cut (--device-map offloaded its weights)")
        model, _ = load_model(model_id, dtype=args.dtype, device_map=None)
    report = apply_pruning(model, config, plan)
    if args.dtype == "auto":
        restore_checkpoint_dtype(model, source_dtype)
    if state.is_main_process:
        output = save_pruned(model, tokenizer, args.output, overwrite=args.overwrite,
                             write_extras=lambda directory: write_run_artifacts(report, base_name, directory))
        print_summary(report, console)
        console.print(f"wrote {output} in {time.perf_counter() - started:.1f}s; reload with "
                      f"AutoModelForCausalLM.from_pretrained({str(output)!r}) after `import hf_prune`, "
                      "or with trust_remote_code=True without it")
    state.wait_for_everyone()
    return 0


def interrupted_message(argv: list[str], config: PruningConfig | None) -> str:
    """One line after Ctrl-C: what is on disk, and the exact command that continues from it."""
    if config is not None and config.target in LEARNED_TARGETS and config.state_dir:
        from .hyperflux.trainer import saved_state_step

        step = saved_state_step(config.state_dir)
        if step is not None:
            resume = [arg for arg in argv if arg not in ("--resume", "--restart")] + ["--resume"]
            return (f"interrupted at step {step}; the Hyperflux state is saved in {config.state_dir}; "
                    f"resume with: {shlex.join(['hf-prune', *resume])}")
    return "interrupted; nothing was written"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["eval"]:
        from .eval_cli import main as eval_main

        return eval_main(argv[1:])
    parse_argv = argv[1:] if argv[:1] == ["prune"] else argv
    args = build_prune_parser().parse_args(parse_argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    config = None
    try:
        config = resolve_config(args)
        return run_prune(args, config)
    except HfPruneError as error:
        print(f"hf-prune: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nhf-prune: {interrupted_message(argv, config)}", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
