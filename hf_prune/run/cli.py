"""The ``hf-prune`` command: parse, build the validated options, hand them to the verb. No logic of its own.

``hf-prune [prune] [options]`` prunes a model; ``hf-prune eval [options]`` scores one on held-out text;
``hf-prune export-gguf MODEL OUT.gguf`` writes one for llama.cpp (``export-NAME``: :data:`hf_prune.registry.FILE_FORMATS`).
Errors caused by the input print one line (``hf-prune: error: ...``) and exit with status 2; Ctrl-C
ends with one line saying what was kept (exit status 130).

Every option is a flag made from its dataclass field (:mod:`.flags`); precedence is field default < ``--recipe``
file < flags given on the command line (:mod:`hf_prune.config.recipe`). Under ``accelerate launch`` every process
computes statistics on its share of the calibration rows, the sums are reduced, and the main process alone writes
the checkpoint.

This module imports nothing heavy: ``--help``, ``--version`` and a mistyped flag answer before torch is loaded.
The verbs that run a model are looked up in :data:`hf_prune.registry.COMMANDS` once the flags are valid.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from ..config import EvalOptions, PruningConfig, RunOptions, load_recipe, merge_options, split_options
from ..errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, HfPruneError
from ..registry import COMMANDS, FILE_FORMATS
from ..version import __version__
from .flags import add_loading_flags, add_pruning_flags, add_quality_flags, add_run_flags, given

#: the --output of a run that names none
DEFAULT_OUTPUT = "pruned"

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
  hf-prune --recipe recipes/default.yaml --model DIR --output pruned/
  hf-prune --target emp --sparsity 0.3 --recover lora --min-retention 0.9 --push-to-hub me/llama-pruned

exit status: 0 done; 2 bad input or a failed upload (one line names the problem and the fix; a written
  checkpoint is kept); 3 below --min-retention (saved locally, not pushed); 130 interrupted (Ctrl-C).
"""


def build_prune_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-prune",
        usage="hf-prune [prune] [options]  |  hf-prune eval [options]  |  hf-prune export-gguf MODEL OUT.gguf",
        description="Structurally prune a causal LM of a supported family (Llama, Mistral, Qwen2, Qwen3): remove "
                    "whole KV groups and MLP neurons, then write a checkpoint that reloads with "
                    "AutoModelForCausalLM.from_pretrained.",
        epilog=USAGE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hf-prune {__version__}")
    parser.add_argument("--recipe", default=None,
                        help="YAML file of options by flag name, e.g. recipes/default.yaml (it may name model and "
                             "output too); flags given here override it")
    add_loading_flags(parser)
    add_pruning_flags(parser)
    add_run_flags(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="log every step")
    return parser


def build_eval_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-prune eval",
        description="Quality of a causal LM through lm-eval (simple_evaluate): the local held-out tasks, or any "
                    "lm-eval task by name.",
        epilog="local tasks: hfprune_perplexity (token, word and byte perplexity of the held-out documents), "
               "hfprune_next_sentence (which of 4 sentences follows a 3-sentence context; chance = 0.25). Any other "
               "name is an lm-eval task (`lm-eval ls tasks`), which downloads its data. Without --eval-data the "
               "local tasks read the corpus's test split ($HF_PRUNE_CORPUS or data/corpus, from "
               "scripts/prepare_corpus.py) when it is there, else the held-out sample shipped with hf-prune. "
               "Exit status: 0 done, 2 bad input.")
    add_loading_flags(parser)
    add_quality_flags(parser, gate=False)
    parser.add_argument("--json-out", dest="json_out", default=argparse.SUPPRESS,
                        help="also write the metrics here as JSON")
    parser.add_argument("-v", "--verbose", action="store_true", help="show lm-eval's own logging")
    return parser


def prune_settings(args: argparse.Namespace) -> tuple[PruningConfig, RunOptions, str | None]:
    """(pruning config, run options, model) from the flags and the recipe they name."""
    explicit = {key: value for key, value in given(args).items() if key not in ("recipe", "verbose")}
    values = merge_options(load_recipe(args.recipe) if args.recipe else {}, explicit)
    values.setdefault("output", DEFAULT_OUTPUT)
    pruning, run = split_options(values)
    return PruningConfig.from_dict(pruning), RunOptions.from_flags(run), run.get("model")


def _quiet_libraries(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        # lm-eval warns per over-long item (it truncates them, as it should); bitsandbytes, imported by peft for
        # --recover, warns that an optional CPU kernel package is missing; datasets and transformers chat about
        # caches. -v shows them all.
        for name in ("lm_eval", "lm-eval", "bitsandbytes", "datasets", "transformers"):
            logging.getLogger(name).setLevel(logging.ERROR)


def _verb(argv: list[str]) -> tuple[str, list[str]]:
    if argv[:1] == ["eval"]:
        return "eval", argv[1:]
    if argv[:1] and argv[0].startswith("export-"):
        return argv[0], argv[1:]
    return "prune", argv[1:] if argv[:1] == ["prune"] else argv


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verb, rest = _verb(argv)
    if verb.startswith("export-"):
        return _export(verb.removeprefix("export-"), rest)
    parser = build_eval_parser() if verb == "eval" else build_prune_parser()
    args = parser.parse_args(rest)
    _quiet_libraries(args.verbose)
    try:
        if verb == "eval":
            return COMMANDS["eval"](EvalOptions.from_flags(_without(given(args), "verbose")))
        config, options, model = prune_settings(args)
        return COMMANDS["prune"](model, config, options, argv)
    except HfPruneError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"\n{parser.prog}: interrupted; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED


def _without(values: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {key: value for key, value in values.items() if key not in keys}


def _export(format_name: str, argv: list[str]) -> int:
    """``hf-prune export-NAME ...``: the file format's own command."""
    if format_name not in FILE_FORMATS:
        print(f"hf-prune: error: unknown export format {format_name!r}; available: "
              f"{', '.join('export-' + name for name in FILE_FORMATS)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return FILE_FORMATS[format_name](argv)


if __name__ == "__main__":
    sys.exit(main())
