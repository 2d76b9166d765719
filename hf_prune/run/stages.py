"""The stages of a pruning run, each a small function over one :class:`Run`.

:mod:`.pipeline` orders them; each stage does one thing and delegates the work (io, calibration, plan, cut,
recovery, quality). What happens when one says no: options are checked and the output directory probed before
the model loads; gates learned on a 4/8-bit base are applied to a full-precision reload, and a model offloaded by
``device_map`` is reloaded into CPU memory for the cut; below ``--min-retention`` the checkpoint is written but not
pushed; a failed upload keeps the local checkpoint.
"""

from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

import torch
from rich.console import Console

from ..adapters import get_adapter
from ..calibration.rows import RecoveryText, recovery_rows
from ..calibration.statistics import CalibrationStatistics
from ..config import PruningConfig, RunOptions
from ..cut.apply import PruningPlan, apply_pruning
from ..data import BUILTIN
from ..errors import ConfigError, first_line
from ..io.artifacts import write_run_artifacts
from ..io.checkpoint import (
    check_quantization_available,
    device_map_for,
    empty_model,
    load_config,
    load_model,
    load_tokenizer,
    prepare_output_dir,
    resolve_dtypes,
    save_pruned,
    staged_output,
    write_checkpoint_extras,
)
from ..io.hub import HubError, push_folder
from ..io.layerwise import LayerByLayer, ShardWriter, dense_layer_bytes, finish_meta_model, load_offloaded
from ..plan.planner import calibration_ids, check_budget, make_plan
from ..quality import headline_scores, paired_perplexity, retention_table, run_lm_eval
from ..registry import EXPORTS, RECOVERIES
from ..report import PruningReport
from ..runtime.distributed import process_state
from ..runtime.offload import has_offloaded_weights
from ..runtime.saved_state import check_saved_state, discard_saved_state
from .console import print_results, say_written


class DenseMeasures(NamedTuple):
    perplexity: float | None  # on the held-out recovery rows (None without recovery)
    scores: list | None  # lm-eval headline scores (None without quality)


@dataclass
class Run:
    """What one run carries from stage to stage."""

    config: PruningConfig  # as this run uses it (:func:`hf_prune.config.effective_config`)
    options: RunOptions
    console: Console
    source: str | None  # the model's id or directory; None when a loaded model was passed
    base_name: str
    model: Any = None
    tokenizer: Any = None
    input_ids: torch.Tensor | None = None
    statistics: CalibrationStatistics | None = None
    recovery_text: RecoveryText | None = None
    teacher: Any = None  # distillation of a model passed loaded: its dense copy, taken before the cut
    dense: DenseMeasures = DenseMeasures(None, None)
    plan: PruningPlan | None = None
    report: PruningReport | None = None
    stored: dict[str, Any] = field(default_factory=dict)  # layer-wise: where each weight of the source lies
    started: float = field(default_factory=time.perf_counter)

    @property
    def main(self) -> bool:
        return process_state().is_main_process

    @cached_property
    def dtypes(self) -> tuple[torch.dtype | str, torch.dtype | None]:
        """(compute, stored) dtypes: see :func:`hf_prune.io.checkpoint.resolve_dtypes`."""
        source_dtype = getattr(load_config(self.source), "dtype", None) if self.source is not None else None
        return resolve_dtypes(self.options.dtype, source_dtype)


# -- before anything is loaded ------------------------------------------------------------------------------
def check_before_loading(run: Run) -> None:
    """Everything that can be refused without the model: refused before minutes of loading, not after."""
    config, options = run.config, run.options
    options.check_with(config, loaded=run.source is None, processes=process_state().num_processes)
    if options.quantize_bits is not None:
        check_quantization_available(options.quantize_bits)
    if config.recovery.teacher_bits is not None:  # found now, not after the cut
        check_quantization_available(config.recovery.teacher_bits, f"--teacher-bits {config.recovery.teacher_bits}",
                                     "drop it to keep the teacher in the compute dtype")
    check_budget(run.model if run.source is None else empty_model(run.source), config)
    if options.output_dir is not None:
        prepare_output_dir(options.output_dir, options.overwrite)
    if config.resumable:
        check_saved_state(config.state.dir, resume=config.state.resume, restart=config.state.restart)


# -- in memory -------------------------------------------------------------------------------------------------
def load(run: Run) -> None:
    if run.source is None:
        if run.tokenizer is None:
            raise ConfigError("pass the tokenizer with an already loaded model (prune_pretrained(model, config, "
                              "tokenizer=...))")
        return
    run.console.print(f"loading {run.source}")
    run.model, run.tokenizer = load_model(run.source, dtype=run.options.dtype,
                                          device_map=device_map_for(run.options.device_map),
                                          quantize_bits=run.options.quantize_bits)


def read_recovery_text(run: Run) -> None:
    """The recovery's text (its held-out rows also score the dense model); for a distillation of a model that was
    passed loaded, a copy of it as the teacher, taken before the cut (there is no source to load it from again)."""
    recovery = run.config.recovery
    if (recovery.method != "none" and run.main) or recovery.method == "distill":  # distillation: every process
        run.recovery_text = recovery_rows(run.model, run.tokenizer, run.config)
    if recovery.method == "distill" and run.source is None and (recovery.kl_weight or recovery.hidden_weight):
        if recovery.teacher_bits is not None:
            raise ConfigError("--teacher-bits loads the teacher again from the model's source; pass the model by "
                              "name or path, or drop --teacher-bits")
        run.teacher = copy.deepcopy(run.model)


def score_dense(run: Run) -> None:
    """The dense model's measures, before the cut: a task whose data cannot load fails early. (On a quantized
    base they are taken on the full-precision reload instead: :func:`reload_for_cut`.)"""
    if run.options.quantize_bits is None:
        run.dense = _dense_measures(run)


def calibrate(run: Run) -> None:
    if run.input_ids is None:
        run.input_ids = calibration_ids(run.model, run.tokenizer, run.config)


def plan(run: Run) -> None:
    run.plan = make_plan(run.model, run.config, run.input_ids, run.statistics)


def reload_for_cut(run: Run) -> None:
    """Gates learned on a quantized base cut the real weights; offloaded weights live in accelerate's store, so
    a copy in CPU memory is cut."""
    if run.options.quantize_bits is not None:
        run.model = None
        run.model, _ = load_model(run.source, dtype=run.options.dtype, device_map=device_map_for(run.options.device_map))
        run.dense = _dense_measures(run)
    elif has_offloaded_weights(run.model):
        if run.source is None:
            raise ConfigError("a model offloaded by device_map is cut from a CPU copy: pass its id or directory")
        run.model = None
        run.console.print(f"reloading {run.source} into CPU memory for the cut (--device-map offloaded its weights)")
        run.model, _ = load_model(run.source, dtype=run.options.dtype, device_map=None)


def cut(run: Run) -> None:
    run.report = apply_pruning(run.model, run.config, run.plan)
    run.report.base_model = run.base_name
    if run.config.uniform_shapes:
        run.model = EXPORTS["stock"](run.model)


def recover_and_score(run: Run) -> None:
    """Scores of the cut model, recovery, scores of the recovered one, and the retention table (main process; a
    distillation trains in every process, data-parallel under ``accelerate launch``)."""
    distributed = run.config.recovery.method == "distill"
    if not run.main:
        if distributed:
            _recover(run)
        return
    quality = run.options.quality
    pruned_scores = _scores(run) if quality else None
    recovered_scores = None
    if run.recovery_text is not None:
        _recover(run)
        recovered_scores = _scores(run) if quality else None
    if quality is not None:
        run.report.quality = retention_table(run.dense.scores, pruned_scores, recovered_scores,
                                             min_retention=quality.min_retention, heldout=quality.heldout or BUILTIN)


def save_and_push(run: Run) -> None:
    """Record the report in the config, print it, write the checkpoint (a temporary one when only pushing) and
    upload it unless the quality gate failed (main process)."""
    run.model.config.hf_prune = run.report.to_info()
    if not run.main:
        return
    print_results(run.report, run.console)
    options, hub = run.options, run.options.hub
    if options.output_dir is None and hub is None:
        return
    _, stored = run.dtypes
    if stored is not None and run.model.dtype != stored:  # computed in float32 on a CPU, stored as the source was
        run.model.to(stored)
    with tempfile.TemporaryDirectory(prefix="hf-prune-push-") as scratch:
        target = options.output_dir if options.output_dir is not None else Path(scratch) / "model"
        written = save_pruned(run.model, run.tokenizer, target, overwrite=options.overwrite or options.output_dir is None,
                              write_extras=lambda directory: write_run_artifacts(run.report, directory, _repo(run)))
        if options.output_dir is not None:
            say_written(run.console, written, time.perf_counter() - run.started,
                        stock=bool(run.config.uniform_shapes))
        if hub is not None and run.report.quality.get("passed") is False:
            run.console.print(f"not pushed to {hub.repo_id}: the quality gate failed"
                              + (f"; the model is in {written}" if options.output_dir is not None else ""))
        elif hub is not None:
            push(run, written, kept_locally=options.output_dir is not None)


def wait_for_everyone(run: Run) -> None:
    process_state().wait_for_everyone()


def discard_finished_state(run: Run) -> None:
    """The run is written: the state an interruption would have resumed from has nothing left to do (main process).
    Kept until now, not dropped when planning ends, so a run killed while cutting or saving resumes without planning
    again."""
    if run.main and run.config.resumable:
        discard_saved_state(run.config.state.dir)


# -- layer by layer --------------------------------------------------------------------------------------------
def load_layer_by_layer(run: Run) -> None:
    compute, _ = run.dtypes
    run.console.print(f"loading {run.source} layer by layer (its weights stay in the safetensors shards until used)")
    run.model, run.stored = load_offloaded(run.source, compute if isinstance(compute, torch.dtype) else torch.float32)
    run.tokenizer = load_tokenizer(run.source)


def cut_and_write_layer_by_layer(run: Run) -> None:
    """Each layer loaded, cut and written to a shard in turn; then config, tokenizer, card, report and push."""
    compute, stored = run.dtypes
    stored = stored or (compute if isinstance(compute, torch.dtype) else torch.float32)
    with staged_output(run.options.output_dir, run.options.overwrite) as staging:
        layers = get_adapter(run.model).decoder_layers(run.model)
        writer = ShardWriter(staging / ".shards", max_shard_bytes=dense_layer_bytes(layers, stored))
        run.report = apply_pruning(run.model, run.config, run.plan,
                                   layer_by_layer=LayerByLayer(run.model, run.stored, writer, stored))
        run.report.base_model = run.base_name
        finish_meta_model(run.model, stored, run.report.to_info())
        run.model.save_pretrained(staging, state_dict={})  # config, generation config, modeling file: no weights
        writer.close(staging)
        write_checkpoint_extras(staging, run.tokenizer,
                                lambda directory: write_run_artifacts(run.report, directory, _repo(run)))
    written = Path(run.options.output_dir).expanduser().resolve()
    print_results(run.report, run.console)
    say_written(run.console, written, time.perf_counter() - run.started, how=" layer by layer")
    if run.options.hub is not None:
        push(run, written, kept_locally=True)
    run.model = None  # the pruned model is on disk, not in memory


# -- helpers -------------------------------------------------------------------------------------------------
def push(run: Run, written: Path, *, kept_locally: bool) -> None:
    """Upload the written directory; a failed upload says whether the local copy remains."""
    hub = run.options.hub
    try:
        url = push_folder(written, hub.repo_id, private=hub.private, revision=hub.revision, token=hub.token)
    except HubError as error:
        kept = (f"the pruned model is kept in {str(written)!r}" if kept_locally
                else "nothing was kept: pass output_dir to keep a local copy")
        raise HubError(f"{error}; {kept}") from error
    run.console.print(f"pushed to {hub.repo_id}: {url}")


def _repo(run: Run) -> str | None:
    return run.options.hub.repo_id if run.options.hub is not None else None


def _scores(run: Run) -> list:
    quality = run.options.quality
    results = run_lm_eval(run.model, run.tokenizer, quality.tasks, heldout=quality.heldout or BUILTIN,
                          limit=quality.limit, batch_size=quality.batch_size, mc_items=quality.mc_items)
    return headline_scores(results)


def _dense_measures(run: Run) -> DenseMeasures:
    """The dense model's perplexity on the held-out recovery rows and its lm-eval scores (main process only)."""
    if not run.main:
        return DenseMeasures(None, None)
    perplexity = None
    if run.recovery_text is not None:
        perplexity = paired_perplexity(run.model, token_set=run.recovery_text.held_out,
                                       batch_size=run.config.recovery.batch_size)
    return DenseMeasures(perplexity, _scores(run) if run.options.quality else None)


def _recover(run: Run) -> None:
    """Run the recovery method on the cut model; its result goes into the report."""
    options, text = run.config.recovery, run.recovery_text
    budget = f"{options.tokens:,} tokens" if options.method == "distill" else f"{options.steps} steps"
    run.console.print(f"recovering with {options.method}: {budget} on {text.source}")
    result = RECOVERIES[options.method](run.model, text, options, seed=run.config.seed, teacher=lambda: _teacher(run),
                                        state_dir=run.config.state.dir, resume=run.config.state.resume)
    run.report.recovery = {**result.to_dict(), "data": text.source, "eval_rows": int(text.held_out.shape[0]),
                           "perplexity_dense": run.dense.perplexity}
    run.report.recovery_curve = result.history


def _teacher(run: Run) -> Any:
    """The dense model for distillation: the copy taken before the cut of a model passed loaded, else the source
    loaded again (in the compute dtype, or in --teacher-bits through bitsandbytes)."""
    if run.teacher is not None:
        teacher, run.teacher = run.teacher, None
        return teacher
    bits = run.config.recovery.teacher_bits
    run.console.print(f"loading the dense teacher from {run.source}" + (f" in {bits} bits" if bits else ""))
    teacher, _ = load_model(run.source, dtype=run.options.dtype, device_map=device_map_for(run.options.device_map),
                            quantize_bits=bits)
    if bits is not None:
        _check_quantized_teacher_runs(teacher, bits)
    return teacher


def _check_quantized_teacher_runs(teacher: Any, bits: int) -> None:
    """One token through the quantized teacher, so that a kernel that cannot run this model says so in one line
    before training starts (bitsandbytes' CPU 4-bit inference packs each weight in blocks of 32 rows and fails on
    a width that is not a multiple: the embedded default's 344-wide MLP)."""
    try:
        with torch.no_grad():
            teacher(input_ids=torch.zeros(1, 1, dtype=torch.long, device=teacher.device))
    except (AssertionError, RuntimeError) as error:
        raise ConfigError(f"--teacher-bits {bits}: bitsandbytes cannot run this model quantized here "
                          f"({first_line(error)}); use --teacher-bits 8, or leave the "
                          "teacher in the compute dtype") from error
