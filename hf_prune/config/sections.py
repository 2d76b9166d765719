"""The sections of :class:`~hf_prune.config.PruningConfig`: options that belong together, each a dataclass whose
fields name their own flag and validate themselves.

``calibration`` is read by every data-driven run; ``search`` and ``hyperflux`` by one target each (which target
owns a section is that target's trait in :data:`hf_prune.registry.TARGETS`: its flags are refused with any
other); ``state`` by the targets whose trait says ``resumable``; ``recovery`` by ``--recover``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from ..corpus import TextSource
from ..errors import ConfigError
from ..registry import RECOVERIES
from .fields import (
    check_choice,
    check_non_negative_int,
    check_positive_int,
    check_positive_number,
    flag_of,
    section_option,
)

GATE_INIT = ("uniform", "scores")
SEARCH_COSTS = ("global", "local")


@dataclass
class CalibrationOptions:
    """The calibration text and how it is read (``config.calibration``; flags ``--calibration*``, ``--seq-len``,
    ``--batch-size``, ``--sequential``)."""

    source: str | None = field(default=None, metadata=section_option("calibration", (
        "calibration text: a local .txt/.jsonl file, a datasets name, 'builtin' (a small public-domain English "
        "sample shipped with hf-prune) or 'reference' (train split of the corpus scripts/prepare_corpus.py builds)"),
        default_help="'builtin' for the embedded default model; other models must be given text, unless the "
                     "run is data-free (--importance magnitude, no compensation)"))
    config: str | None = field(default=None, metadata=section_option(
        "calibration_config", "datasets config name of --calibration", default_help="the dataset's default config"))
    split: str = field(default="train", metadata=section_option("calibration_split", "datasets split of --calibration"))
    column: str = field(default="text", metadata=section_option(
        "calibration_column", "text column of --calibration (datasets or jsonl)"))
    samples: int = field(default=64, metadata=section_option("calibration_samples", "number of calibration sequences"))
    seq_len: int | None = field(default=None, metadata=section_option("seq_len", (
        "tokens per calibration sequence (a value over the model's max_position_embeddings is capped, with a "
        "warning)"), default_help="the model's context length, at most 512"))
    batch_size: int = field(default=1, metadata=section_option("batch_size", "calibration sequences per forward pass"))
    sequential: bool = field(default=False, metadata=section_option("sequential", (
        "collect activation statistics one decoder layer at a time, holding only that layer's activations, and "
        "measure the search's costs in one pass over the layers (the way a 70B model offloaded by --device-map "
        "is scored and searched on one GPU); not used by 'taylor', which needs a full backward")))

    def validate(self) -> None:
        check_positive_int(self, "samples", "batch_size", *(("seq_len",) if self.seq_len is not None else ()))

    def text_source(self) -> TextSource:
        return TextSource(self.source, self.config, self.split, self.column)


@dataclass
class SearchOptions:
    """``--target search`` (``config.search``)."""

    rows: int = field(default=4, metadata=section_option("search_rows", (
        "search: calibration rows held out from scoring, on which the KL cost of every candidate is measured "
        "(read in addition to --calibration-samples)")))
    mlp_levels: int = field(default=8, metadata=section_option("mlp_levels", (
        "search: first grid of MLP widths, in steps of 1/mlp_levels of the neurons (refinement halves the step)")))
    refine_rounds: int = field(default=2, metadata=section_option("refine_rounds", (
        "search: rounds of re-measuring costs around the current solution on a finer grid; a round that does "
        "not lower the held-out KL is discarded and ends the search")))
    costs: str = field(default="global", metadata=section_option("search_costs", (
        "search: 'global' measures every candidate's KL through the rest of the model (a layer pass per candidate "
        "per later layer); 'local' measures that way one probe per scope and direction and every whole-sublayer "
        "removal, and every other candidate by the change of its own layer's output, scaled by its probe")))
    probe_rows: int | None = field(default=None, metadata=section_option("search_probe_rows", (
        "search, local costs: how many of the --search-rows (the first ones) the probes are carried on through the "
        "rest of the model; every candidate's own change is still measured on all of them. The probes are the "
        "search's O(layers^2) part: on Llama-3.1-8B, 1 row of 8 makes that part 8x cheaper"),
        default_help="all --search-rows"))

    def validate(self) -> None:
        check_positive_int(self, "rows", "mlp_levels")
        check_choice("--search-costs", self.costs, SEARCH_COSTS)
        check_non_negative_int(self, "refine_rounds")
        if self.probe_rows is not None:
            check_positive_int(self, "probe_rows")
            if self.costs != "local":
                raise ConfigError("--search-probe-rows sets the rows the probes of local costs run on; add "
                                  "--search-costs local, or drop it (global costs carry every candidate on every row)")
            if self.probe_rows > self.rows:
                raise ConfigError(f"--search-probe-rows ({self.probe_rows}) is more than --search-rows ({self.rows}): "
                                  "the probes run on the first of the search's rows; lower it or raise --search-rows")

    @property
    def held_out_rows(self) -> int:
        """Calibration rows read beyond --calibration-samples and kept out of the scores: the costs' rows."""
        return self.rows


@dataclass
class HyperfluxOptions:
    """``--target hyperflux``: gate training (``config.hyperflux``); the trainer reads exactly this object (and
    ``config.state``, where its resumable state is kept)."""

    steps: int = field(default=200, metadata=section_option("steps", (
        "Hyperflux: optimizer steps under pressure; the density follows the target curve to the budget at the end")))
    regrowth_steps: int = field(default=20, metadata=section_option("regrowth_steps", (
        "Hyperflux: steps at zero pressure with a decaying learning rate, letting useful groups reopen")))
    tick_every: int = field(default=10, metadata=section_option(
        "tick_every", "Hyperflux: optimizer steps between pressure updates"))
    gate_lr: float = field(default=1e-2, metadata=section_option("gate_lr", (
        "Hyperflux: Adam learning rate of the gate logits (the paper's 1e-3 needs hundreds of steps before the "
        "first gate closes)")))
    gate_init: str = field(default="uniform", metadata=section_option("gate_init", (
        "Hyperflux: 'uniform' = the paper's U(0.2, 0.5); 'scores' = ordered by --importance within each layer, "
        "so Hyperflux refines a one-shot ranking")))
    pressure_step: float = field(default=0.15, metadata=section_option(
        "pressure_step", "Hyperflux: pressure step s of the scheduler"))
    pressure_exponent: float = field(default=3.0, metadata=section_option(
        "pressure_exponent", "Hyperflux: the loss uses gamma**k as pressure multiplier (k = this)"))
    grad_accum: int = field(default=1, metadata=section_option("grad_accum", "Hyperflux: micro-batches per optimizer step"))
    checkpoint_every: int = field(default=50, metadata=section_option(
        "checkpoint_every", "Hyperflux: steps between resumable state snapshots in --state-dir"))
    gradient_checkpointing: bool = field(default=False, metadata=section_option(
        "gradient_checkpointing", "Hyperflux: recompute activations in the backward pass (less memory, ~30% more time)"))

    def validate(self) -> None:
        check_choice("gate_init", self.gate_init, GATE_INIT)
        check_positive_number(self, "gate_lr", "pressure_step", "pressure_exponent")
        check_positive_int(self, "steps", "tick_every", "grad_accum", "checkpoint_every")
        check_non_negative_int(self, "regrowth_steps")
        if self.steps < self.tick_every:
            raise ConfigError(f"steps ({self.steps}) must be at least tick_every ({self.tick_every}): the pressure "
                              "is updated every tick_every steps")


@dataclass
class RunStateOptions:
    """Where a long planning stage keeps the state that lets an interrupted run continue (``config.state``): the
    gates of ``--target hyperflux``, the cost tables and the sweep of ``--target search``. Read by the targets with
    the ``resumable`` trait only; what is written there is theirs (:mod:`hf_prune.runtime.saved_state`)."""

    dir: str | None = field(default=None, metadata=section_option(
        "state_dir", "Hyperflux and search: directory of the resumable state of an interrupted run",
        default_help="<output>.<target>-state when the run writes an output directory, else none"))
    resume: bool = field(default=False, metadata=section_option(
        "resume", "Hyperflux and search: continue an interrupted run from the state in --state-dir"))
    restart: bool = field(default=False, metadata=section_option(
        "restart", "Hyperflux and search: discard the state an interrupted run left in --state-dir and start over"))

    def validate(self) -> None:
        if self.resume and self.restart:
            raise ConfigError("give --resume (continue the saved state) or --restart (discard it), not both")


#: what the student of ``--recover distill`` trains: every remaining weight, or a LoRA merged afterwards
RECOVER_PARAMS = ("full", "lora")
#: the fields each recovery method reads besides the shared ones (the others' flags are refused with it)
_METHOD_FIELDS = {
    "lora": ("steps", "samples"),
    "distill": ("tokens", "params", "distill_lr", "grad_accum", "temperature", "kl_weight", "lm_weight",
                "hidden_weight", "teacher_bits", "eval_every", "save_minutes", "gradient_checkpointing"),
}


@dataclass
class RecoveryOptions:
    """``--recover``: after the cut, train it back towards the dense model (``config.recovery``; flags
    ``--recover``, ``--recover-*``, ``--lora-*``, ``--distill-*``, ``--teacher-bits``). ``lora`` trains a peft
    LoRA on the language-modelling loss for ``--lora-steps``; ``distill`` trains the student (all weights, or a
    LoRA) on the dense teacher's distributions for a budget of ``--recover-tokens``
    (:mod:`hf_prune.recovery.distill`)."""

    method: str = field(default="none", metadata=section_option("recover", (
        "recover quality after the cut: 'distill' trains the cut model to match the dense teacher's next-token "
        "distributions on --recover-data for --recover-tokens tokens; 'lora' trains a LoRA adapter (peft) on the "
        "language-modelling loss; both save a plain model; 'none' saves the cut model as it is")))
    data: str | None = field(default=None, metadata=section_option("recover_data", (
        "text to train on, read like --calibration (a .txt/.jsonl file, a datasets name — streamed by 'distill', "
        "never downloaded whole —, 'builtin', 'reference'); --recover-eval-rows of its rows are held out (never "
        "trained on) and report perplexity (and, distilling, KL to the teacher) before and after"),
        default_help="the calibration text"))
    rank: int = field(default=8, metadata=section_option("lora_rank", "LoRA rank r of every adapted Linear"))
    alpha: float | None = field(default=None, metadata=section_option(
        "lora_alpha", "LoRA scaling numerator alpha (the update is scaled by alpha / r)", default_help="2 x rank"))
    steps: int = field(default=100, metadata=section_option("lora_steps", "optimizer steps of --recover lora"))
    lr: float = field(default=2e-4, metadata=section_option("lora_lr", "AdamW learning rate of the LoRA weights"))
    target_modules: str = field(default="all-linear", metadata=section_option("lora_targets", (
        "comma-separated Linear names to adapt (e.g. q_proj,v_proj,down_proj), or 'all-linear' (every Linear of "
        "the decoder layers, peft's shorthand)")))
    samples: int = field(default=64, metadata=section_option("recover_samples",
                                                             "training sequences of --recover lora"))
    eval_rows: int = field(default=8, metadata=section_option(
        "recover_eval_rows", "rows of --recover-data held out of training, on which perplexity is reported"))
    batch_size: int = field(default=4, metadata=section_option("recover_batch_size",
                                                               "sequences per optimizer step (per process)"))
    tokens: int = field(default=1_000_000, metadata=section_option("recover_tokens", (
        "--recover distill: tokens to train on; the steps, a 5% warm-up and the cosine schedule follow from it")))
    params: str = field(default="full", metadata=section_option("recover_params", (
        "--recover distill: 'full' trains every remaining weight; 'lora' a LoRA (--lora-rank/--lora-alpha/"
        "--lora-targets, merged afterwards)")))
    distill_lr: float | None = field(default=None, metadata=section_option(
        "distill_lr", "--recover distill: peak AdamW learning rate (the cosine ends at a tenth of it)",
        default_help="1e-4 with --recover-params full, --lora-lr with lora"))
    grad_accum: int = field(default=1, metadata=section_option(
        "recover_grad_accum", "--recover distill: micro-batches of --recover-batch-size per optimizer step"))
    temperature: float = field(default=1.0, metadata=section_option(
        "distill_temperature", "--recover distill: softmax temperature of teacher and student (the KL is x T^2)"))
    kl_weight: float = field(default=1.0, metadata=section_option(
        "distill_kl_weight", "--recover distill: weight of KL(teacher || student) in the loss"))
    lm_weight: float = field(default=0.0, metadata=section_option(
        "distill_lm_weight", "--recover distill: weight of the language-modelling loss on the text itself"))
    hidden_weight: float = field(default=0.0, metadata=section_option(
        "distill_hidden_weight", "--recover distill: weight of the last hidden states' relative squared error"))
    teacher_bits: int | None = field(default=None, metadata=section_option("teacher_bits", (
        "--recover distill: hold the dense teacher in 8 or 4 bits through bitsandbytes (reloaded from the model's "
        "source) when memory is short"), default_help="the compute dtype"))
    eval_every: int = field(default=0, metadata=section_option("recover_eval_every", (
        "--recover distill: optimizer steps between held-out measures (KL and perplexity); 0: ten over the run")))
    save_minutes: float = field(default=30.0, metadata=section_option("recover_save_minutes", (
        "--recover distill: minutes between checkpoints in --state-dir (Ctrl-C also saves one; --resume continues)")))
    gradient_checkpointing: bool = field(default=False, metadata=section_option("recover_gradient_checkpointing", (
        "--recover distill: recompute activations in the backward pass (less memory, about a third more time)")))

    def validate(self) -> None:
        check_choice("recovery", self.method, ("none", *RECOVERIES))
        check_choice("--recover-params", self.params, RECOVER_PARAMS)
        check_positive_int(self, "rank", "steps", "samples", "eval_rows", "batch_size", "tokens", "grad_accum")
        check_non_negative_int(self, "eval_every")
        check_positive_number(self, "lr", "temperature", "save_minutes", *(("alpha",) if self.alpha is not None else ()),
                              *(("distill_lr",) if self.distill_lr is not None else ()))
        for name in ("kl_weight", "lm_weight", "hidden_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"{flag_of(self, name)} must be a number >= 0, got {value!r}")
        if self.kl_weight + self.lm_weight + self.hidden_weight <= 0:
            raise ConfigError("--recover distill needs a loss: give --distill-kl-weight, --distill-lm-weight or "
                              "--distill-hidden-weight a positive value")
        if self.teacher_bits not in (None, 4, 8):
            raise ConfigError(f"--teacher-bits must be 4 or 8, got {self.teacher_bits!r}")
        self._refuse_other_methods_flags()
        if not self.target_modules or not self.target_modules.strip(", "):
            raise ConfigError("--lora-targets names no module; pass e.g. 'all-linear' or 'q_proj,v_proj'")

    def _refuse_other_methods_flags(self) -> None:
        """A flag changed from its default that the chosen method does not read is an error naming its method."""
        lora_used = self.method == "lora" or (self.method == "distill" and self.params == "lora")
        for f in fields(self):
            if f.name == "method" or getattr(self, f.name) == f.default:
                continue
            owners = [method for method, names in _METHOD_FIELDS.items() if f.name in names]
            if self.method == "none":
                raise ConfigError(f"{flag_of(self, f.name)} applies with --recover {owners[0] if owners else 'lora'} "
                                  f"only; add --recover {owners[0] if owners else 'lora'} or drop the flag")
            if owners and self.method not in owners:
                raise ConfigError(f"{flag_of(self, f.name)} applies with --recover {owners[0]} only; drop it "
                                  f"or use --recover {owners[0]}")
            if f.name in ("rank", "alpha", "target_modules", "lr") and not lora_used:
                raise ConfigError(f"{flag_of(self, f.name)} applies to a LoRA only; add --recover-params lora")

    @property
    def peak_lr(self) -> float:
        """The learning rate distillation peaks at."""
        if self.distill_lr is not None:
            return self.distill_lr
        return self.lr if self.params == "lora" else 1e-4

    @property
    def target_module_names(self) -> str | list[str]:
        """What peft's ``LoraConfig(target_modules=...)`` takes: 'all-linear' or a list of names."""
        names = [name.strip() for name in self.target_modules.split(",") if name.strip()]
        return names[0] if names == ["all-linear"] else names


#: PruningConfig fields that are nested sections, each a dataclass whose fields carry their own flag
SECTIONS: dict[str, type] = {"calibration": CalibrationOptions, "search": SearchOptions,
                             "hyperflux": HyperfluxOptions, "state": RunStateOptions, "recovery": RecoveryOptions}
