"""The whole user path, once: check → load → calibrate → plan → cut → recover → evaluate → save → push.

:func:`prune_pretrained` is the one place that orders these steps; the ``hf-prune`` command, prune-on-load
(:class:`hf_prune.AutoPrunedModelForCausalLM`) and the Python API all call it, so a flag and the keyword argument
it maps to cannot mean different things. Each stage is a function of :mod:`.stages` over one :class:`~.stages.Run`.
"""

from __future__ import annotations

import os
import shlex
import sys
from typing import Any

import torch
from rich.console import Console
from transformers import PreTrainedModel

from ..calibration.statistics import CalibrationStatistics
from ..config import PruningConfig, RunOptions, effective_config, is_embedded_default
from ..data import DEFAULT_MODEL_DIR, DEFAULT_MODEL_NAME
from ..errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_QUALITY_GATE_FAILED, ConfigError
from ..plan.planner import needs_calibration
from ..report import PruningReport
from ..runtime.saved_state import saved_progress
from . import stages
from .console import make_console

#: the stages of a run whose model is in memory, in order
IN_MEMORY = (stages.check_before_loading, stages.load, stages.read_recovery_text, stages.score_dense,
             stages.calibrate, stages.plan, stages.reload_for_cut, stages.cut, stages.recover_and_score,
             stages.save_and_push, stages.wait_for_everyone, stages.discard_finished_state)
#: ``--layerwise``: the model is never whole in memory; it is read, cut and written one layer at a time
LAYER_BY_LAYER = (stages.check_before_loading, stages.load_layer_by_layer, stages.calibrate, stages.plan,
                  stages.cut_and_write_layer_by_layer, stages.discard_finished_state)



def prune_pretrained(
    model: str | os.PathLike | PreTrainedModel | None = None,
    config: PruningConfig | None = None,
    *,
    tokenizer: Any = None,
    input_ids: torch.Tensor | None = None,
    statistics: CalibrationStatistics | None = None,
    console: Console | None = None,
    **options: Any,
) -> tuple[PreTrainedModel | None, PruningReport]:
    """Prune a model end to end; returns the pruned model (in memory) and the report of what was done.

    ``model`` is a Hub id, a local directory, a loaded model (then pass its ``tokenizer``), or None for the
    embedded default. ``options`` are the fields of :class:`~hf_prune.config.RunOptions`: ``output_dir`` writes the
    checkpoint (atomically, with card, report and plot), ``overwrite``, ``dtype``, ``device_map``,
    ``quantize_bits`` (4/8: the base held in bitsandbytes while Hyperflux gates train), ``quality`` (a
    :class:`~hf_prune.config.QualityCheck`: dense / pruned / recovered scored with lm-eval, which may gate the push),
    ``push_to_hub`` (a repo id or a :class:`~hf_prune.config.HubTarget`; to a temporary directory first when no
    ``output_dir`` is given; not when the gate failed), ``layerwise`` and ``base_model_name``.

    ``input_ids`` (calibration rows) and ``statistics`` (collected on this dense model by
    :func:`hf_prune.plan.planner.collect_statistics`) may be given to score once and prune copies at several
    budgets, as the benchmarks do. ``config`` is not changed: what the run derives from it (the shipped text for
    the embedded default, ...) is in ``report.config``.

    On a CPU with ``dtype="auto"`` the work is done in float32 and a written checkpoint is stored in the
    base checkpoint's dtype, so pruning never makes the files larger. ``layerwise=True`` prunes a model that never
    is whole in memory (:mod:`hf_prune.io.layerwise`): the first item returned is then None (load the model from
    ``output_dir``).
    """
    try:
        run_options = RunOptions(**options)
    except TypeError as error:
        raise ConfigError(f"prune_pretrained: {error}; the run options are the fields of RunOptions") from error
    run = start(model, config if config is not None else PruningConfig(), run_options, console)
    run.tokenizer, run.input_ids, run.statistics = tokenizer, input_ids, statistics
    for stage in LAYER_BY_LAYER if run_options.layerwise else IN_MEMORY:
        stage(run)
    return run.model, run.report


def start(model: Any, config: PruningConfig, options: RunOptions, console: Console | None) -> stages.Run:
    """The run's state before any stage: the config this run uses, where the model comes from, its name."""
    loaded = isinstance(model, PreTrainedModel)
    source = None if loaded else str(model if model is not None else DEFAULT_MODEL_DIR)
    needs_text = needs_calibration(config) or config.recovery.method != "none"
    config = effective_config(config, options, source, needs_text)
    embedded = source is not None and is_embedded_default(source)
    base_name = options.base_model_name or (DEFAULT_MODEL_NAME if embedded else source or model.name_or_path)
    run = stages.Run(config, options, console or make_console(quiet=not stages.process_state().is_main_process),
                     source, base_name)
    run.model = model if loaded else None
    return run


def run_prune(model: str | None, config: PruningConfig, options: RunOptions, argv: list[str]) -> int:
    """``hf-prune [prune]`` once its flags are valid: the exit status, and after Ctrl-C the command that resumes."""
    try:
        _, report = prune_pretrained(model, config, **vars(options))
    except KeyboardInterrupt:
        print(f"\nhf-prune: {interrupted_message(argv, start(model, config, options, None).config)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_QUALITY_GATE_FAILED if report.quality.get("passed") is False else EXIT_OK


def interrupted_message(argv: list[str], config: PruningConfig | None) -> str:
    """One line after Ctrl-C: what is on disk, and the exact command that continues from it."""
    if config is not None and config.resumable and config.state.dir:
        progress = saved_progress(config.state.dir)
        if progress is not None:
            resume = [arg for arg in argv if arg not in ("--resume", "--restart")] + ["--resume"]
            return (f"interrupted at {progress}; the state is saved in {config.state.dir}; "
                    f"resume with: {shlex.join(['hf-prune', *resume])}")
    return "interrupted; nothing was written"
