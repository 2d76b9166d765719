"""The options of one run beside what to prune: which model, where the result goes, how the model is loaded,
scored and published — validated here, in one place, as :class:`PruningConfig` validates what to prune.

``hf-prune`` and ``hf-prune eval`` take these options under the same flags (each field names its flag), and a
recipe may give them too. :func:`effective_config` derives the pruning config a run really uses (the shipped text
for the embedded default, layer-by-layer calibration for ``--layerwise``, the Hyperflux state beside the output)
as a new object: the caller's config is never changed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..data import BUILTIN, DEFAULT_MODEL_DIR
from ..errors import ConfigError
from ..registry import IMPORTANCES, TARGETS
from ..tasks import LOCAL_TASKS
from .fields import check_choice, flag_name, section_option
from .pruning import PruningConfig

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
DTYPE_OPTION = section_option("dtype", (
    "dtype to compute in; 'auto' keeps the checkpoint's dtype on a GPU and uses float32 on a CPU, where half "
    "precision is many times slower (a pruned checkpoint is saved in the base checkpoint's dtype)"))
DEVICE_MAP_OPTION = section_option("device_map", (
    "where the model runs: a device (cpu, cuda, cuda:1) or 'auto' to spread a large model over the GPUs and CPU "
    "(accelerate's device_map); under accelerate launch each process takes its own device"),
    default_help="the first GPU when there is one, else the CPU")


@dataclass
class QualityCheck:
    """What to score with lm-eval before and after the cut, and the gate the result must pass."""

    tasks: Sequence[str] = field(default=LOCAL_TASKS, metadata=section_option("eval_tasks", (
        "comma-separated lm-eval tasks: the local held-out tasks (" + ", ".join(LOCAL_TASKS) + ") or any lm-eval "
        "task (hellaswag, arc_easy, ...; those download their data)")))
    heldout: str | None = field(default=None, metadata=section_option("eval_data", (
        "held-out text of the local tasks: a .jsonl/.txt file, a corpus directory holding test.jsonl, or "
        f"'{BUILTIN}' (the held-out sample shipped with hf-prune)"), default_help=BUILTIN))
    limit: int | float | None = field(default=None, metadata=section_option(
        "eval_limit", "at most this many documents / items per task", default_help="all"))
    batch_size: int = field(default=16, metadata=section_option("eval_batch_size", "lm-eval batch size"))
    mc_items: int = field(default=500, metadata=section_option(
        "eval_mc_items", "next-sentence items built from the held-out text"))
    min_retention: float | None = field(default=None, metadata=section_option("min_retention", (
        "quality gate: every task must keep at least this share of the dense score (pruned / dense; dense / pruned "
        "for perplexity); below it the model is saved but not pushed and the command exits 3"),
        default_help="no gate"))

    def __post_init__(self) -> None:
        if isinstance(self.tasks, str):
            self.tasks = [name.strip() for name in self.tasks.split(",") if name.strip()]
        if not self.tasks:
            raise ConfigError("--eval-tasks names no task; pass e.g. hfprune_perplexity or hellaswag")
        if self.min_retention is not None and not 0 < self.min_retention <= 1:
            raise ConfigError(f"--min-retention must be in (0, 1], got {self.min_retention}: the share of the dense "
                              "model's score every task must keep, e.g. 0.9")
        for name, value in (("--eval-batch-size", self.batch_size), ("--eval-mc-items", self.mc_items),
                            ("--eval-limit", self.limit)):
            if value is not None and (isinstance(value, bool) or value <= 0):
                raise ConfigError(f"{name} must be a positive number, got {value}")

    @classmethod
    def from_flags(cls, values: Mapping[str, Any], *, required: bool) -> "QualityCheck | None":
        """The check the ``--eval-*`` / ``--min-retention`` flags ask for: ``required`` (``hf-prune eval``) always
        scores; otherwise there is a check only with ``--eval-tasks`` or ``--min-retention`` (which alone scores the
        local tasks), and the other flags are refused without one, since they would do nothing."""
        given = {f.name: values[flag_name(f)] for f in fields(cls) if values.get(flag_name(f)) is not None}
        if not required and "tasks" not in given and "min_retention" not in given:
            if given:
                flag = "--" + flag_name(next(f for f in fields(cls) if f.name in given)).replace("_", "-")
                raise ConfigError(f"{flag} applies when the model is scored: add --eval-tasks or --min-retention")
            return None
        return cls(**given)


@dataclass
class HubTarget:
    """Where ``--push-to-hub`` uploads; the token defaults to huggingface_hub's (``HF_TOKEN``, ``hf auth login``)."""

    repo_id: str = field(metadata=section_option("push_to_hub", (
        "upload the checkpoint, tokenizer, modeling file and model card to this Hub repo (created if missing) after "
        "it is written and the quality gate passed; the token comes from HF_TOKEN or `hf auth login`"),
        default_help="no upload"))
    private: bool | None = field(default=None, metadata=section_option(
        "private", "create the --push-to-hub repo as private", default_help="the Hub's default"))
    revision: str | None = field(default=None, metadata=section_option(
        "revision", "branch of the --push-to-hub repo to push to (created if missing)", default_help="main"))
    token: str | None = field(default=None, repr=False)

    @classmethod
    def from_flags(cls, values: Mapping[str, Any]) -> "HubTarget | None":
        if values.get("push_to_hub"):
            return cls(values["push_to_hub"], private=values.get("private") or None, revision=values.get("revision"))
        if values.get("private") or values.get("revision"):
            raise ConfigError("--private and --revision apply to --push-to-hub; add --push-to-hub REPO_ID or drop them")
        return None


@dataclass
class LoadOptions:
    """How a model is loaded to be pruned or scored (``--model``, ``--dtype``, ``--device-map``)."""

    model: str | None = field(default=None, metadata=section_option("model", (
        "Hub model id or local checkpoint directory (safetensors)"),
        default_help="the tiny trained Llama shipped inside hf-prune, which needs no download"))
    dtype: str = field(default="auto", metadata=DTYPE_OPTION)
    device_map: Any = field(default=None, metadata=DEVICE_MAP_OPTION)

    def __post_init__(self) -> None:
        check_choice("dtype", self.dtype, DTYPE_CHOICES)

    @property
    def model_id(self) -> str:
        return str(self.model if self.model is not None else DEFAULT_MODEL_DIR)

    @property
    def is_embedded_default(self) -> bool:
        return is_embedded_default(self.model_id)


def is_embedded_default(model_id: str | os.PathLike) -> bool:
    return Path(model_id).expanduser().resolve() == DEFAULT_MODEL_DIR


@dataclass
class RunOptions:
    """Everything about one pruning run that does not decide the weights (what does is :class:`PruningConfig`)."""

    output_dir: str | os.PathLike | None = field(default=None, metadata=section_option("output", (
        "directory to write the pruned checkpoint to; checked before the model loads, written atomically")))
    overwrite: bool = field(default=False, metadata=section_option(
        "overwrite", "replace --output if it exists and is not empty (otherwise that is an error)"))
    dtype: str = field(default="auto", metadata=DTYPE_OPTION)
    device_map: Any = field(default=None, metadata=DEVICE_MAP_OPTION)
    layerwise: bool = field(default=False, metadata=section_option("layerwise", (
        "prune a model larger than this machine's memory: weights are read from the checkpoint's safetensors shards "
        "one decoder layer at a time and freed after, calibration runs layer by layer, and the pruned checkpoint is "
        "written shard by shard (not with --target hyperflux, --importance taylor, --eval-tasks or --recover)")))
    #: hold the base in bitsandbytes 4 or 8 bits while Hyperflux gates train (flags --load-in-4bit / --load-in-8bit)
    quantize_bits: int | None = None
    quality: QualityCheck | None = None
    push_to_hub: HubTarget | str | None = None
    #: the name the card gives the base model (default: the model id, or the embedded default's name)
    base_model_name: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.push_to_hub, str):
            self.push_to_hub = HubTarget(self.push_to_hub)
        check_choice("dtype", self.dtype, DTYPE_CHOICES)
        if self.quantize_bits not in (None, 4, 8):
            raise ConfigError(f"quantize_bits must be 4 or 8, got {self.quantize_bits!r}")

    @property
    def hub(self) -> HubTarget | None:
        return self.push_to_hub  # a HubTarget after __post_init__

    @classmethod
    def from_flags(cls, values: Mapping[str, Any]) -> "RunOptions":
        """From the flag words of the command line or a recipe (``output``, ``load_in_4bit``, ``eval_tasks``, ...)."""
        if values.get("load_in_4bit") and values.get("load_in_8bit"):
            raise ConfigError("give --load-in-4bit or --load-in-8bit, not both")
        bits = 4 if values.get("load_in_4bit") else 8 if values.get("load_in_8bit") else None
        plain = {f.name: values[flag_name(f)] for f in fields(cls) if f.metadata and flag_name(f) in values}
        return cls(**plain, quantize_bits=bits, quality=QualityCheck.from_flags(values, required=False),
                   push_to_hub=HubTarget.from_flags(values))

    def check_with(self, config: PruningConfig, *, loaded: bool, processes: int) -> None:
        """What this run cannot do with this config, refused in one line before anything is read."""
        if self.quantize_bits is not None:
            if not config.learned:
                raise ConfigError(f"--load-in-{self.quantize_bits}bit applies to --target hyperflux only: the other "
                                  "targets read full-precision weights")
            if loaded:
                raise ConfigError("quantize_bits needs a model id or directory: the full-precision weights are "
                                  "reloaded for the cut")
        if self.layerwise:
            refusal = self._layerwise_refusal(config, loaded, processes)
            if refusal:
                raise ConfigError(refusal)

    def _layerwise_refusal(self, config: PruningConfig, loaded: bool, processes: int) -> str | None:
        if loaded:
            return "layerwise pruning reads the weights from the checkpoint's shards: pass a model id or directory"
        if self.quantize_bits is not None or config.learned:
            return "--target hyperflux trains gates through the whole model: drop --layerwise (or use --device-map)"
        if IMPORTANCES.traits(config.importance).get("backward"):
            return (f"--importance {config.importance} needs a backward pass through the whole model; use activation, "
                    "fluctuation or magnitude with --layerwise")
        if self.device_map is not None:
            return "--layerwise places the weights itself (read from disk one layer at a time): drop --device-map"
        if self.quality is not None or config.recovery.method != "none":
            return ("--layerwise never holds the pruned model in memory, so it cannot score or recover it: drop "
                    "--eval-tasks/--min-retention/--recover, then run `hf-prune eval` on the output")
        if config.uniform_shapes:
            return "--uniform-shapes is not available with --layerwise; drop one of the two"
        if self.output_dir is None:
            return "--layerwise writes the pruned model as it cuts it: pass an output directory (--output)"
        if processes > 1:
            return "--layerwise runs in one process: start it without accelerate launch"
        return None


def effective_config(config: PruningConfig, options: RunOptions, model_id: str | None,
                     needs_text: bool) -> PruningConfig:
    """The pruning config this run really uses, derived from the run, as a new object:

    - the embedded default calibrates on the text shipped with it, when the run reads text (``needs_text``);
    - ``--layerwise`` calibrates layer by layer (``--sequential``);
    - a resumable run keeps its state beside the output (``<output>.hyperflux-state``, ``<output>.search-state``;
      ``<output>.recovery-state`` for a distillation after a target that keeps none).
    """
    changes: dict[str, Any] = {}
    calibration: dict[str, Any] = {}
    if model_id is not None and is_embedded_default(model_id) and config.calibration.source is None and needs_text:
        calibration["source"] = BUILTIN
    if options.layerwise and not config.calibration.sequential:
        calibration["sequential"] = True
    if calibration:
        changes["calibration"] = calibration
    if config.resumable and not config.state.dir and options.output_dir is not None:
        keeper = config.target if TARGETS.traits(config.target).get("resumable") else "recovery"
        state_dir = str(Path(options.output_dir).expanduser().resolve()) + f".{keeper}-state"
        changes["state"] = {"dir": state_dir}
    return config.with_changes(**changes) if changes else config


@dataclass
class EvalOptions:
    """``hf-prune eval``: which model, how it is loaded, what it is scored on, where the numbers go."""

    load: LoadOptions = field(default_factory=LoadOptions)
    quality: QualityCheck = field(default_factory=QualityCheck)
    json_out: str | None = None

    @classmethod
    def from_flags(cls, values: Mapping[str, Any]) -> "EvalOptions":
        load = LoadOptions(**{f.name: values[flag_name(f)] for f in fields(LoadOptions) if flag_name(f) in values})
        return cls(load, QualityCheck.from_flags(values, required=True), values.get("json_out"))
