"""The whole user path, once: load → calibrate → plan → cut → recover → evaluate → save → push.

:func:`prune_pretrained` is the one place that orders these steps; the ``hf-prune`` command, prune-on-load
(:class:`hf_prune.AutoPrunedModelForCausalLM`) and the Python API all call it, so a flag and the keyword
argument it maps to cannot mean different things. Each step is delegated (checkpoint, pruner, recovery,
quality, card, hub); this module decides only their order and what happens when one of them says no:

- options are checked, and the output directory probed, before the model is loaded;
- gates learned on a 4/8-bit base are applied to a full-precision reload, and a model offloaded by
  ``device_map`` is reloaded into CPU memory for the cut;
- the dense model is scored before the cut, the pruned one after it and again after recovery;
- below ``--min-retention`` the checkpoint is still written locally but not pushed
  (:attr:`PruningReport.quality` ``["passed"]`` is False; the command exits 3);
- a failed upload leaves the local checkpoint in place (:class:`hf_prune.hub.HubError`).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from rich.console import Console
from transformers import PreTrainedModel

from .checkpoint import (check_quantization_available, load_config, load_model, prepare_output_dir,
                         restore_checkpoint_dtype, save_pruned)
from .config import PruningConfig
from .corpus import TextSource
from .data import BUILTIN, DEFAULT_MODEL_DIR, DEFAULT_MODEL_NAME
from .distributed import process_state
from .errors import ConfigError
from .offload import has_offloaded_weights
from .pruner import PruningReport, apply_pruning, calibration_ids, make_plan, needs_calibration, resolve_seq_len
from .quality.local_tasks import LOCAL_TASKS
from .statistics import CalibrationStatistics

logger = logging.getLogger(__name__)


@dataclass
class QualityCheck:
    """What to score with lm-eval before and after the cut, and the gate the result must pass."""

    #: lm-eval task names: the local held-out tasks and/or any task of lm-eval's (``hellaswag``, ...)
    tasks: Sequence[str] = LOCAL_TASKS
    #: held-out text of the local tasks (a file, a corpus dir, ``builtin``); default: ``builtin``
    heldout: str | None = None
    #: documents / items per task (lm-eval's ``limit``); None = all
    limit: int | float | None = None
    batch_size: int = 16
    #: next-sentence items built from the held-out text
    mc_items: int = 500
    #: lowest retention any task may have (final model vs dense); None = report only
    min_retention: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.tasks, str):
            self.tasks = [name.strip() for name in self.tasks.split(",") if name.strip()]
        if not self.tasks:
            raise ConfigError("--eval-tasks names no task; pass e.g. hfprune_perplexity or hellaswag")
        if self.min_retention is not None and not 0 < self.min_retention <= 1:
            raise ConfigError(f"--min-retention must be in (0, 1], got {self.min_retention}: the share of the dense "
                              "model's score every task must keep, e.g. 0.9")
        if self.batch_size < 1:
            raise ConfigError(f"--eval-batch-size must be a positive integer, got {self.batch_size}")


@dataclass
class HubTarget:
    """Where ``--push-to-hub`` uploads; the token defaults to huggingface_hub's (``HF_TOKEN``, ``hf auth login``)."""

    repo_id: str
    private: bool | None = None
    revision: str | None = None
    token: str | None = field(default=None, repr=False)


def _scores(model, tokenizer, quality: QualityCheck):
    from .quality import headline_scores, run_lm_eval

    results = run_lm_eval(model, tokenizer, quality.tasks, heldout=quality.heldout or BUILTIN,
                          limit=quality.limit, batch_size=quality.batch_size, mc_items=quality.mc_items)
    return headline_scores(results)


class _DenseMeasures(NamedTuple):
    perplexity: float | None  # on the held-out recovery rows (None without recovery)
    scores: list | None  # lm-eval headline scores (None without quality)


class _RecoveryText(NamedTuple):
    train: torch.Tensor
    held_out: torch.Tensor
    source: str


def _dense_measures(model, tokenizer, quality: QualityCheck | None, recovery: _RecoveryText | None,
                    config: PruningConfig, main: bool) -> _DenseMeasures:
    """The dense model's perplexity on the held-out recovery rows and its lm-eval scores (main process only)."""
    if not main:
        return _DenseMeasures(None, None)
    perplexity = None
    if recovery is not None:
        from .quality.paired import paired_perplexity

        perplexity = paired_perplexity(model, token_set=recovery.held_out, batch_size=config.recovery.batch_size)
    return _DenseMeasures(perplexity, _scores(model, tokenizer, quality) if quality else None)


def _recovery_rows(model, tokenizer, config: PruningConfig) -> _RecoveryText:
    """Training rows, held-out rows and the source name of the recovery text."""
    from .calibration import load_calibration

    options = config.recovery
    calibration = config.calibration
    name = options.data or calibration.source
    if name is None:
        raise ConfigError("--recover lora needs text to train on: pass --recover-data (or --calibration) "
                          f"FILE.txt|FILE.jsonl|DATASET, or '{BUILTIN}'")
    source = calibration.text_source() if options.data is None else TextSource(name)
    rows = load_calibration(source, tokenizer, samples=options.samples + options.eval_rows,
                            seq_len=resolve_seq_len(model, calibration.seq_len), seed=config.seed)
    return _RecoveryText(rows[: options.samples], rows[options.samples:], name)


def _print_quality(console: Console, quality: dict[str, Any]) -> None:
    from .quality.retention import retention_markdown

    console.print("quality (lm-eval); retention = pruned / dense, inverted where lower is better:")
    console.print(retention_markdown(quality), markup=False, highlight=False, soft_wrap=True)
    if quality["min_retention"] is not None:
        verdict = "passed" if quality["passed"] else "FAILED"
        console.print(f"quality gate {verdict}: lowest retention {quality['lowest']:.3f}, required "
                      f"{quality['min_retention']:.3f}")


def prune_pretrained(
    model: str | os.PathLike | PreTrainedModel | None = None,
    config: PruningConfig | None = None,
    *,
    tokenizer: Any = None,
    dtype: str = "auto",
    device_map: Any = None,
    quantize_bits: int | None = None,
    quality: QualityCheck | None = None,
    output_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    push_to_hub: HubTarget | str | None = None,
    base_model_name: str | None = None,
    input_ids: torch.Tensor | None = None,
    statistics: CalibrationStatistics | None = None,
    console: Console | None = None,
    layerwise: bool = False,
) -> tuple[PreTrainedModel | None, PruningReport]:
    """Prune a model end to end; returns the pruned model (in memory) and the report of what was done.

    ``model`` is a Hub id, a local directory, a loaded model (then pass its ``tokenizer``), or None for the
    embedded default. ``quantize_bits`` (4/8) holds the base in bitsandbytes while Hyperflux gates train.
    ``quality`` scores dense / pruned / recovered with lm-eval and may gate the push. ``output_dir`` writes
    the checkpoint (atomically, with card, report and plot); ``push_to_hub`` uploads it (to a temporary
    directory first when no ``output_dir`` is given) unless the quality gate failed.

    ``input_ids`` (calibration rows) and ``statistics`` (collected on this dense model by
    :func:`hf_prune.pruner.collect_statistics`) may be given to score once and prune copies at several
    budgets, as the benchmarks do.

    On a CPU with ``dtype="auto"`` the work is done in float32 and a written checkpoint is stored in the
    base checkpoint's dtype, so pruning never makes the files larger.

    ``layerwise=True`` prunes a model that never is whole in memory (:mod:`hf_prune.layerwise`): weights are
    read from the checkpoint's shards one layer at a time, calibration runs layer by layer, and the pruned
    checkpoint is written shard by shard into ``output_dir``. The pruned model is then not in memory either:
    the first item returned is None (load it from ``output_dir``).
    """
    config = config if config is not None else PruningConfig()
    hub = HubTarget(push_to_hub) if isinstance(push_to_hub, str) else push_to_hub
    state = process_state()
    main = state.is_main_process
    console = console or Console(quiet=not main)
    loaded = isinstance(model, PreTrainedModel)
    model_id = None if loaded else str(model if model is not None else DEFAULT_MODEL_DIR)
    embedded = model_id is not None and Path(model_id).expanduser().resolve() == DEFAULT_MODEL_DIR
    if embedded and config.calibration.source is None and (needs_calibration(config) or config.recovery.method != "none"):
        config.calibration.source = BUILTIN  # the embedded default calibrates on the text shipped with it
    base_name = base_model_name or (DEFAULT_MODEL_NAME if embedded else model_id or model.name_or_path)
    if layerwise:
        _check_layerwise(config, loaded, quantize_bits, device_map, quality, output_dir, hub, state.num_processes)
    _check_before_loading(config, loaded, quantize_bits, output_dir, overwrite)
    if layerwise:
        report = _prune_layerwise(model_id, config, dtype, input_ids, statistics, output_dir, overwrite, hub,
                                  base_name, console)
        return None, report

    started = time.perf_counter()
    source_dtype = None
    if loaded:
        if tokenizer is None:
            raise ConfigError("pass the tokenizer with an already loaded model (prune_pretrained(model, config, "
                              "tokenizer=...))")
    else:
        source_dtype = getattr(load_config(model_id), "dtype", None)
        console.print(f"loading {model_id}")
        if device_map is None and state.num_processes > 1:
            device_map = {"": state.device}
        model, tokenizer = load_model(model_id, dtype=dtype, device_map=device_map, quantize_bits=quantize_bits)
    recovery = _recovery_rows(model, tokenizer, config) if config.recovery.method != "none" and main else None
    if quantize_bits is None:  # score the dense model first: a task whose data cannot load fails early
        dense = _dense_measures(model, tokenizer, quality, recovery, config, main)

    if input_ids is None:
        input_ids = calibration_ids(model, tokenizer, config)
    plan = make_plan(model, config, input_ids, statistics)
    if quantize_bits is not None:  # gates were learned on the quantized base: cut the real weights
        del model
        model, _ = load_model(model_id, dtype=dtype, device_map=device_map)
        dense = _dense_measures(model, tokenizer, quality, recovery, config, main)
    elif has_offloaded_weights(model):  # offloaded weights live in accelerate's store: cut a copy in CPU memory
        if loaded:
            raise ConfigError("a model offloaded by device_map is cut from a CPU copy: pass its id or directory")
        del model
        console.print(f"reloading {model_id} into CPU memory for the cut (--device-map offloaded its weights)")
        model, _ = load_model(model_id, dtype=dtype, device_map=None)

    report = apply_pruning(model, config, plan)
    report.base_model = base_name
    if config.uniform_shapes:
        from .export import EXPORTERS

        model = EXPORTERS["stock"](model)
    if main:
        pruned_scores = _scores(model, tokenizer, quality) if quality else None
        recovered_scores = _recover(model, tokenizer, config, quality, recovery, dense, report, console)
        if quality is not None:
            from .quality import retention_table

            report.quality = retention_table(dense.scores, pruned_scores, recovered_scores,
                                             min_retention=quality.min_retention, heldout=quality.heldout or BUILTIN)
    model.config.hf_prune = report.to_info()

    if main:
        _print_results(report, console)
        if output_dir is not None or hub is not None:
            if dtype == "auto" and source_dtype is not None:
                restore_checkpoint_dtype(model, source_dtype)
            _save_and_push(model, tokenizer, report, output_dir, overwrite, hub, console, started)
    state.wait_for_everyone()
    return model, report


def _check_before_loading(config: PruningConfig, loaded: bool, quantize_bits: int | None, output_dir: Any,
                          overwrite: bool) -> None:
    """Everything that can be refused without the model: refused before minutes of loading, not after."""
    if quantize_bits is not None:
        if not config.learned:
            raise ConfigError(f"--load-in-{quantize_bits}bit applies to --target hyperflux only: the other targets "
                              "read full-precision weights")
        if loaded:
            raise ConfigError("quantize_bits needs a model id or directory: the full-precision weights are reloaded "
                              "for the cut")
        check_quantization_available(quantize_bits)
    if output_dir is not None:
        prepare_output_dir(output_dir, overwrite)
    if config.learned:
        from .hyperflux.trainer import check_saved_state

        check_saved_state(config.hyperflux.state_dir, resume=config.hyperflux.resume, restart=config.hyperflux.restart)


def _check_layerwise(config: PruningConfig, loaded: bool, quantize_bits: int | None, device_map: Any,
                     quality: QualityCheck | None, output_dir: Any, hub: HubTarget | None, processes: int) -> None:
    """What --layerwise cannot do, refused in one line before anything is read."""
    from .importance import GRADIENTS, get_importance

    refusal = None
    if loaded:
        refusal = "layerwise pruning reads the weights from the checkpoint's shards: pass a model id or directory"
    elif quantize_bits is not None or config.learned:
        refusal = "--target hyperflux trains gates through the whole model: drop --layerwise (or use --device-map)"
    elif GRADIENTS in get_importance(config.importance).requires:
        refusal = (f"--importance {config.importance} needs a backward pass through the whole model; use activation, "
                   "fluctuation or magnitude with --layerwise")
    elif device_map is not None:
        refusal = "--layerwise places the weights itself (read from disk one layer at a time): drop --device-map"
    elif quality is not None or config.recovery.method != "none":
        refusal = ("--layerwise never holds the pruned model in memory, so it cannot score or recover it: drop "
                   "--eval-tasks/--min-retention/--recover, then run `hf-prune eval` on the output")
    elif config.uniform_shapes:
        refusal = "--uniform-shapes is not available with --layerwise; drop one of the two"
    elif output_dir is None:
        refusal = "--layerwise writes the pruned model as it cuts it: pass an output directory (--output)"
    elif processes > 1:
        refusal = "--layerwise runs in one process: start it without accelerate launch"
    if refusal:
        raise ConfigError(refusal)


def _prune_layerwise(model_id: str, config: PruningConfig, dtype: str, input_ids: torch.Tensor | None,
                     statistics: CalibrationStatistics | None, output_dir: Any, overwrite: bool,
                     hub: HubTarget | None, base_name: str, console: Console) -> PruningReport:
    """Load offloaded, plan layer by layer, cut and write shard by shard; then card, report and push."""
    from .adapters import get_adapter
    from .checkpoint import load_tokenizer, staged_output, write_checkpoint_extras
    from .layerwise import LayerByLayer, ShardWriter, dense_layer_bytes, finish_meta_model, load_offloaded
    from .report import write_run_artifacts

    started = time.perf_counter()
    compute_dtype, stored_dtype = _layerwise_dtypes(dtype, getattr(load_config(model_id), "dtype", None))
    console.print(f"loading {model_id} layer by layer (its weights stay in the safetensors shards until used)")
    model, stored = load_offloaded(model_id, compute_dtype)
    tokenizer = load_tokenizer(model_id)
    config.calibration.sequential = True
    if input_ids is None:
        input_ids = calibration_ids(model, tokenizer, config)
    plan = make_plan(model, config, input_ids, statistics)
    layers = get_adapter(model).decoder_layers(model)
    with staged_output(output_dir, overwrite) as staging:
        writer = ShardWriter(staging / ".shards", max_shard_bytes=dense_layer_bytes(layers, stored_dtype))
        report = apply_pruning(model, config, plan, layer_by_layer=LayerByLayer(model, stored, writer, stored_dtype))
        report.base_model = base_name
        finish_meta_model(model, stored_dtype, report.to_info())
        model.save_pretrained(staging, state_dict={})  # config, generation config, modeling file: no weights
        writer.close(staging)
        write_checkpoint_extras(staging, tokenizer, lambda directory: write_run_artifacts(
            report, directory, hub.repo_id if hub is not None else None))
    written = Path(output_dir).expanduser().resolve()
    _print_results(report, console)
    console.print(f"wrote {written} layer by layer in {time.perf_counter() - started:.1f}s; reload with "
                  f"AutoModelForCausalLM.from_pretrained({str(written)!r}) after `import hf_prune`, or with "
                  "trust_remote_code=True without it")
    if hub is not None:
        _push(written, hub, console, kept_locally=True)
    return report


def _layerwise_dtypes(dtype: str, checkpoint_dtype: Any) -> tuple[torch.dtype, torch.dtype]:
    """(compute, stored) dtypes of a layer-wise run, as the in-memory path chooses them: 'auto' computes in
    float32 on a CPU and in the checkpoint's dtype on a GPU, and stores the checkpoint's dtype."""
    from .checkpoint import DTYPES

    source = checkpoint_dtype if isinstance(checkpoint_dtype, torch.dtype) else DTYPES.get(str(checkpoint_dtype),
                                                                                            torch.float32)
    if dtype != "auto":
        return DTYPES[dtype], DTYPES[dtype]
    return (source if torch.cuda.is_available() else torch.float32), source


def _recover(model, tokenizer, config: PruningConfig, quality: QualityCheck | None, recovery: _RecoveryText | None,
             dense: _DenseMeasures, report: PruningReport, console: Console) -> list | None:
    """Run the recovery method on the cut model; its result goes into the report. Returns the recovered
    model's lm-eval scores (None without recovery or without quality)."""
    if recovery is None:
        return None
    from .recovery import RECOVERY_METHODS

    console.print(f"recovering with {config.recovery.method}: {config.recovery.steps} steps on {recovery.source}")
    result = RECOVERY_METHODS[config.recovery.method](model, recovery.train, recovery.held_out, config.recovery,
                                                      seed=config.seed)
    report.recovery = {**result.to_dict(), "data": recovery.source, "eval_rows": int(recovery.held_out.shape[0]),
                       "perplexity_dense": dense.perplexity}
    return _scores(model, tokenizer, quality) if quality else None


def _print_results(report: PruningReport, console: Console) -> None:
    from .report import print_summary

    print_summary(report, console)
    if report.recovery:
        r = report.recovery
        console.print(f"recovery ({r['method']}): held-out perplexity {r['perplexity_dense']:.3f} dense, "
                      f"{r['perplexity_before']:.3f} after the cut, {r['perplexity_after']:.3f} after recovery "
                      f"({r['seconds']:.1f}s)" + ("" if r["kept"] else "; the adapter did not help and was discarded"))
    if report.quality:
        _print_quality(console, report.quality)


def _save_and_push(model, tokenizer, report: PruningReport, output_dir, overwrite: bool, hub: HubTarget | None,
                   console: Console, started: float) -> None:
    from .report import write_run_artifacts

    gate_failed = report.quality.get("passed") is False
    with tempfile.TemporaryDirectory(prefix="hf-prune-push-") as scratch:
        target = output_dir if output_dir is not None else Path(scratch) / "model"
        written = save_pruned(model, tokenizer, target, overwrite=overwrite or output_dir is None,
                              write_extras=lambda directory: write_run_artifacts(
                                  report, directory, hub.repo_id if hub is not None else None))
        if output_dir is not None:
            how = ("anywhere: it is a stock checkpoint" if report.config.get("uniform_shapes") else
                   "after `import hf_prune`, or with trust_remote_code=True without it")
            console.print(f"wrote {written} in {time.perf_counter() - started:.1f}s; reload with "
                          f"AutoModelForCausalLM.from_pretrained({str(written)!r}) {how}")
        if hub is None:
            return
        if gate_failed:
            console.print(f"not pushed to {hub.repo_id}: the quality gate failed"
                          + (f"; the model is in {written}" if output_dir is not None else ""))
            return
        _push(written, hub, console, kept_locally=output_dir is not None)


def _push(written: Path, hub: HubTarget, console: Console, *, kept_locally: bool) -> None:
    """Upload the written directory; a failed upload says whether the local copy remains."""
    from .hub import HubError, push_folder

    try:
        url = push_folder(written, hub.repo_id, private=hub.private, revision=hub.revision, token=hub.token)
    except HubError as error:
        kept = (f"the pruned model is kept in {str(written)!r}" if kept_locally
                else "nothing was kept: pass output_dir to keep a local copy")
        raise HubError(f"{error}; {kept}") from error
    console.print(f"pushed to {hub.repo_id}: {url}")
