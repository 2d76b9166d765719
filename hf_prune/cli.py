"""The ``hf-prune`` command: parse, build a PruningConfig, call the library. No logic of its own.

``hf-prune [prune] [options]`` prunes a model; ``hf-prune eval [options]`` scores one on held-out text;
``hf-prune export-gguf MODEL OUT.gguf`` writes one for llama.cpp (``export-NAME``: see :mod:`hf_prune.export`).
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
import types
import typing
from dataclasses import MISSING, fields
from pathlib import Path

from . import __version__
from .config import (COMPENSATION, GATE_INIT, SECTIONS, UNITS, PruningConfig,
                     load_recipe, section_aliases)
from .errors import ConfigError, HfPruneError
from .importance import IMPORTANCE_REGISTRY
from .quality.local_tasks import LOCAL_TASKS
from .recovery import RECOVERY_METHODS
from .targets import TARGETS

INTERRUPTED = 130  # the shell's status for a process ended by SIGINT
QUALITY_GATE_FAILED = 3  # --min-retention not met: saved locally, not pushed
logger = logging.getLogger("hf_prune")

USAGE_EPILOG = """\
verbs:
  hf-prune [prune] [options]   prune a model (the default verb; `prune` may be omitted)
  hf-prune eval [options]      score a model on held-out text through lm-eval (`hf-prune eval --help`)
  hf-prune export-gguf MODEL OUT.gguf [--dtype f32|f16|q8_0|q4_1...]
                               write a (pruned) checkpoint as GGUF for llama.cpp (`hf-prune export-gguf --help`)

examples:
  hf-prune --sparsity 0.3 --output pruned/                 # the embedded default, shipped calibration text
  hf-prune --model meta-llama/Llama-3.1-8B --calibration Salesforce/wikitext --calibration-config \\
      wikitext-2-raw-v1 --sparsity 0.2 --output pruned/
  hf-prune --target search --sparsity 0.35 --output pruned/   # measured costs; may remove whole sublayers
  hf-prune --recipe recipes/llama.yaml --model DIR --output pruned/
  hf-prune --target emp --sparsity 0.3 --recover lora --min-retention 0.9 --push-to-hub me/llama-pruned

exit status: 0 done; 2 bad input or a failed upload (one line names the problem and the fix; a written
  checkpoint is kept); 3 below --min-retention (saved locally, not pushed); 130 interrupted (Ctrl-C).
"""


def _choices() -> dict[str, list[str]]:
    return {"target": sorted(TARGETS), "importance": sorted(IMPORTANCE_REGISTRY),
            "units": list(UNITS), "compensate": list(COMPENSATION), "gate_init": list(GATE_INIT),
            "recover": ["none", *RECOVERY_METHODS]}


def _help_text(metadata: typing.Mapping[str, str], default: object) -> str:
    """The field's help plus what happens by default; argparse %-formats help, so '%' is escaped."""
    shown = metadata.get("default_help", default)
    return f"{metadata['help']} (default: {shown})".replace("%", "%%")


def _config_options() -> list[tuple[str | None, str, typing.Any, type]]:
    """(section or None, flat name, field, its type) of every PruningConfig option: top-level fields, then
    each section's fields under their own flag names (``recovery.rank`` is ``--lora-rank``)."""
    options = []
    for owner, section in ((PruningConfig, None), *((cls, name) for name, cls in SECTIONS.items())):
        hints = typing.get_type_hints(owner)
        for f in fields(owner):
            if section is None and f.name in SECTIONS:
                continue
            options.append((section, f.metadata.get("flag", f.name), f, hints[f.name]))
    return options


def _section_title(section: str) -> str:
    """A --help heading per section, naming the targets a section belongs to."""
    owners = [target.name for target in TARGETS.values() if target.section == section]
    return f"{section} options" + (f" (--target {' / '.join(owners)})" if owners else "")


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    choices = _choices()
    groups: dict[str | None, typing.Any] = {None: parser}
    for section, name, f, kind in _config_options():
        if section not in groups:
            groups[section] = parser.add_argument_group(_section_title(section))
        group = groups[section]
        flag = "--" + name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        help_text = _help_text(f.metadata, default)
        if isinstance(kind, types.UnionType):
            kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
        if kind is bool:
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                               help=help_text)
        else:
            group.add_argument(flag, dest=name, type=kind, choices=choices.get(name), default=argparse.SUPPRESS,
                               help=help_text)


def build_prune_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-prune",
        usage="hf-prune [prune] [options]  |  hf-prune eval [options]  |  hf-prune export-gguf MODEL OUT.gguf",
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
    parser.add_argument("--layerwise", action="store_true",
                        help="prune a model larger than this machine's memory: weights are read from the "
                             "checkpoint's safetensors shards one decoder layer at a time and freed after, "
                             "calibration runs layer by layer, and the pruned checkpoint is written shard by shard "
                             "(not with --target hyperflux, --importance taylor, --eval-tasks or --recover)")
    quantized = parser.add_mutually_exclusive_group()
    quantized.add_argument("--load-in-4bit", action="store_true",
                           help="Hyperflux: hold the frozen base in 4-bit (bitsandbytes NF4) while gates train; the "
                                "plan is then applied to the full-precision weights. Needs bitsandbytes (GPU, or its CPU backend)")
    quantized.add_argument("--load-in-8bit", action="store_true",
                           help="Hyperflux: like --load-in-4bit, with an 8-bit (LLM.int8) base")
    evaluation = parser.add_argument_group("quality (lm-eval) and publishing")
    evaluation.add_argument("--eval-tasks", default=None,
                            help="score dense, pruned (and recovered) models with lm-eval on these comma-separated "
                                 f"tasks: the local held-out tasks ({', '.join(LOCAL_TASKS)}) or any lm-eval task "
                                 "(hellaswag, arc_easy, ...); prints retention per task and writes it into the model "
                                 "card (default: no scoring; with --min-retention: the local tasks)")
    evaluation.add_argument("--eval-data", default=None,
                            help="held-out text of the local tasks: a .jsonl/.txt file, a corpus directory holding "
                                 "test.jsonl, or 'builtin' (default: builtin, the held-out sample shipped with hf-prune)")
    evaluation.add_argument("--eval-limit", type=int, default=None,
                            help="at most this many documents / items per task (default: all)")
    evaluation.add_argument("--eval-batch-size", type=int, default=16, help="lm-eval batch size (default: 16)")
    evaluation.add_argument("--min-retention", type=float, default=None,
                            help="quality gate: every task must keep at least this share of the dense score "
                                 "(pruned / dense; dense / pruned for perplexity); below it the model is saved "
                                 "but not pushed and the command exits 3 (default: no gate)")
    evaluation.add_argument("--push-to-hub", default=None, metavar="REPO_ID",
                            help="upload the checkpoint, tokenizer, modeling file and model card to this Hub repo "
                                 "(created if missing) after it is written; the token comes from HF_TOKEN or "
                                 "`hf auth login` (default: no upload)")
    evaluation.add_argument("--private", action="store_true", help="create the --push-to-hub repo as private")
    evaluation.add_argument("--revision", default=None, help="branch of the --push-to-hub repo to push to "
                                                               "(created if missing; default: main)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every step")
    return parser


def resolve_config(args: argparse.Namespace) -> PruningConfig:
    """Field defaults < recipe < explicit flags; an explicit --beta drops a recipe's sparsity and vice versa."""
    names = {f.name for f in fields(PruningConfig)} | set(section_aliases())
    explicit = {name: value for name, value in vars(args).items() if name in names}
    values = load_recipe(args.recipe) if args.recipe else {}
    values.update(explicit)
    if "beta" in explicit and "sparsity" not in explicit:
        values["sparsity"] = None
    elif "sparsity" in explicit and "beta" not in explicit:
        values.pop("beta", None)
    elif values.get("beta") is not None and "sparsity" not in values:
        values["sparsity"] = None
    if getattr(TARGETS.get(values.get("target")), "learned", False) and not values.get("state_dir"):
        values["state_dir"] = str(Path(args.output).expanduser().resolve()) + ".hyperflux-state"
    return PruningConfig.from_dict(values)


def quality_check(args: argparse.Namespace):
    """The lm-eval scoring the flags ask for: --eval-tasks, or the local tasks when only --min-retention is given."""
    if args.eval_tasks is None and args.min_retention is None:
        return None
    from .pipeline import QualityCheck

    return QualityCheck(tasks=args.eval_tasks or ",".join(LOCAL_TASKS), heldout=args.eval_data, limit=args.eval_limit,
                        batch_size=args.eval_batch_size, min_retention=args.min_retention)


def run_prune(args: argparse.Namespace, config: PruningConfig) -> int:
    from .pipeline import HubTarget, prune_pretrained

    quality = quality_check(args)
    hub = (HubTarget(args.push_to_hub, private=args.private or None, revision=args.revision)  # None: the owner's default
           if args.push_to_hub else None)
    if hub is None and (args.private or args.revision):
        raise ConfigError("--private and --revision apply to --push-to-hub; add --push-to-hub REPO_ID or drop them")
    quantize_bits = 4 if args.load_in_4bit else 8 if args.load_in_8bit else None
    _, report = prune_pretrained(args.model, config, dtype=args.dtype, device_map=args.device_map,
                                 quantize_bits=quantize_bits, quality=quality, output_dir=args.output,
                                 overwrite=args.overwrite, push_to_hub=hub, layerwise=args.layerwise)
    return QUALITY_GATE_FAILED if report.quality.get("passed") is False else 0


def interrupted_message(argv: list[str], config: PruningConfig | None) -> str:
    """One line after Ctrl-C: what is on disk, and the exact command that continues from it."""
    if config is not None and config.learned and config.hyperflux.state_dir:
        from .hyperflux.trainer import saved_state_step

        step = saved_state_step(config.hyperflux.state_dir)
        if step is not None:
            resume = [arg for arg in argv if arg not in ("--resume", "--restart")] + ["--resume"]
            return (f"interrupted at step {step}; the Hyperflux state is saved in {config.hyperflux.state_dir}; "
                    f"resume with: {shlex.join(['hf-prune', *resume])}")
    return "interrupted; nothing was written"


def _export(format_name: str, argv: list[str]) -> int:
    """``hf-prune export-NAME ...``: the file format's own command."""
    from .export import FILE_FORMATS

    if format_name not in FILE_FORMATS:
        print(f"hf-prune: error: unknown export format {format_name!r}; available: "
              f"{', '.join('export-' + name for name in FILE_FORMATS)}", file=sys.stderr)
        return 2
    return FILE_FORMATS[format_name](argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["eval"]:
        from .eval_cli import main as eval_main

        return eval_main(argv[1:])
    if argv[:1] and argv[0].startswith("export-"):
        return _export(argv[0].removeprefix("export-"), argv[1:])
    parse_argv = argv[1:] if argv[:1] == ["prune"] else argv
    args = build_prune_parser().parse_args(parse_argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        # lm-eval warns per over-long item (it truncates them, as it should); bitsandbytes, imported by peft for
        # --recover, warns that an optional CPU kernel package is missing. -v shows both.
        for name in ("lm_eval", "bitsandbytes"):
            logging.getLogger(name).setLevel(logging.ERROR)
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
