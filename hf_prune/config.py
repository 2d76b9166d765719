"""PruningConfig: every option of a pruning run in one validated, serialisable place.

The field metadata's ``help`` text is what ``hf-prune --help`` prints, so the CLI and the Python API
cannot drift apart. Options that belong together form sections — ``calibration``, ``search``,
``hyperflux``, ``recovery`` — each a small dataclass whose fields name their own flag
(``CalibrationOptions.samples`` is ``--calibration-samples``) and validate themselves; a section that
belongs to one target (search, Hyperflux) is refused as a whole with any other. Recipes
(``recipes/*.yaml``) give flag names or nested sections; unknown keys from a newer recipe are dropped
with a warning (as peft does), not an error, so old installs still read new recipes.

The defaults are the recipe the project's measurements recommend (``eval/results/defaults.md``,
``python eval/bench_defaults.py``): activation (Wanda-sp) scores, which ranked groups well on every
model measured, where fluctuation collapsed on a pretrained one; and MLP neurons only, which lost
least at 20-35% on the 5M reference model and on SmolLM2-135M, because removing a KV group costs a
whole head's share of a layer's attention. ``--units all`` and ``--target emp`` remain a flag away.
"""

from __future__ import annotations

import logging
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from .corpus import TextSource
from .errors import ConfigError, first_line

logger = logging.getLogger(__name__)

UNITS = ("all", "attention", "mlp")
COMPENSATION = ("none", "bias", "lstsq")
GATE_INIT = ("uniform", "scores")

#: top-level options that only mean something for some targets (a section's options say so as a whole)
TARGET_ONLY_OPTIONS = {"beta": ("emp",), "mlp_multiple": ("emp", "search")}


def _help(text: str, default_help: str | None = None) -> dict[str, str]:
    """Field metadata: the flag's help, and what happens by default when the value (e.g. None) says nothing."""
    return {"help": text} if default_help is None else {"help": text, "default_help": default_help}


def _flag(flag: str, text: str, default_help: str | None = None) -> dict[str, str]:
    """Metadata of a field of a nested section: its command-line flag (which is also its flat recipe key,
    with underscores) and its help."""
    return {**_help(text, default_help), "flag": flag}


def _flag_of(section: Any, name: str) -> str:
    return next(f.metadata["flag"] for f in fields(section) if f.name == name).replace("_", "-")


def _check_positive_int(section: Any, *names: str) -> None:
    for name in names:
        value = getattr(section, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"--{_flag_of(section, name)} must be a positive integer, got {value!r}")


def _check_non_negative_int(section: Any, *names: str) -> None:
    for name in names:
        value = getattr(section, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"--{_flag_of(section, name)} must be a non-negative integer, got {value!r}")


def _check_positive_number(section: Any, *names: str) -> None:
    for name in names:
        value = getattr(section, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"--{_flag_of(section, name)} must be a positive number, got {value!r}")


@dataclass
class CalibrationOptions:
    """The calibration text and how it is read (``config.calibration``; flags ``--calibration*``, ``--seq-len``,
    ``--batch-size``, ``--sequential``)."""

    source: str | None = field(default=None, metadata=_flag("calibration", (
        "calibration text: a local .txt/.jsonl file, a datasets name, 'builtin' (a small public-domain English "
        "sample shipped with hf-prune) or 'reference' (train split of the corpus scripts/prepare_corpus.py builds)"),
        default_help="'builtin' for the embedded default model; other models must be given text, unless the "
                     "run is data-free (--importance magnitude, no compensation)"))
    config: str | None = field(default=None, metadata=_flag(
        "calibration_config", "datasets config name of --calibration", default_help="the dataset's default config"))
    split: str = field(default="train", metadata=_flag("calibration_split", "datasets split of --calibration"))
    column: str = field(default="text", metadata=_flag(
        "calibration_column", "text column of --calibration (datasets or jsonl)"))
    samples: int = field(default=64, metadata=_flag("calibration_samples", "number of calibration sequences"))
    seq_len: int | None = field(default=None, metadata=_flag("seq_len", (
        "tokens per calibration sequence (a value over the model's max_position_embeddings is capped, with a "
        "warning)"), default_help="the model's context length, at most 512"))
    batch_size: int = field(default=1, metadata=_flag("batch_size", "calibration sequences per forward pass"))
    sequential: bool = field(default=False, metadata=_flag("sequential", (
        "collect activation statistics one decoder layer at a time, holding only that layer's activations, and "
        "measure the search's costs in one pass over the layers (the way a 70B model offloaded by --device-map "
        "is scored and searched on one GPU); not used by 'taylor', which needs a full backward")))

    def validate(self) -> None:
        _check_positive_int(self, "samples", "batch_size", *(("seq_len",) if self.seq_len is not None else ()))

    def text_source(self) -> TextSource:
        return TextSource(self.source, self.config, self.split, self.column)


@dataclass
class SearchOptions:
    """``--target search`` (``config.search``)."""

    rows: int = field(default=4, metadata=_flag("search_rows", (
        "search: calibration rows held out from scoring, on which the KL cost of every candidate is measured "
        "(read in addition to --calibration-samples)")))
    mlp_levels: int = field(default=8, metadata=_flag("mlp_levels", (
        "search: first grid of MLP widths, in steps of 1/mlp_levels of the neurons (refinement halves the step)")))
    refine_rounds: int = field(default=2, metadata=_flag("refine_rounds", (
        "search: rounds of re-measuring costs around the current solution on a finer grid; a round that does "
        "not lower the held-out KL is discarded and ends the search")))

    def validate(self) -> None:
        _check_positive_int(self, "rows", "mlp_levels")
        _check_non_negative_int(self, "refine_rounds")


@dataclass
class HyperfluxOptions:
    """``--target hyperflux``: gate training and its resumable state (``config.hyperflux``); the trainer reads
    exactly this object."""

    steps: int = field(default=200, metadata=_flag("steps", (
        "Hyperflux: optimizer steps under pressure; the density follows the target curve to the budget at the end")))
    regrowth_steps: int = field(default=20, metadata=_flag("regrowth_steps", (
        "Hyperflux: steps at zero pressure with a decaying learning rate, letting useful groups reopen")))
    tick_every: int = field(default=10, metadata=_flag(
        "tick_every", "Hyperflux: optimizer steps between pressure updates"))
    gate_lr: float = field(default=1e-2, metadata=_flag("gate_lr", (
        "Hyperflux: Adam learning rate of the gate logits (the paper's 1e-3 needs hundreds of steps before the "
        "first gate closes)")))
    gate_init: str = field(default="uniform", metadata=_flag("gate_init", (
        "Hyperflux: 'uniform' = the paper's U(0.2, 0.5); 'scores' = ordered by --importance within each layer, "
        "so Hyperflux refines a one-shot ranking")))
    pressure_step: float = field(default=0.15, metadata=_flag(
        "pressure_step", "Hyperflux: pressure step s of the scheduler"))
    pressure_exponent: float = field(default=3.0, metadata=_flag(
        "pressure_exponent", "Hyperflux: the loss uses gamma**k as pressure multiplier (k = this)"))
    grad_accum: int = field(default=1, metadata=_flag("grad_accum", "Hyperflux: micro-batches per optimizer step"))
    checkpoint_every: int = field(default=50, metadata=_flag(
        "checkpoint_every", "Hyperflux: steps between resumable state snapshots in --state-dir"))
    state_dir: str | None = field(default=None, metadata=_flag(
        "state_dir", "Hyperflux: directory of the resumable state",
        default_help="<output>.hyperflux-state; none in the Python API"))
    resume: bool = field(default=False, metadata=_flag(
        "resume", "Hyperflux: continue an interrupted run from the state in --state-dir"))
    restart: bool = field(default=False, metadata=_flag(
        "restart", "Hyperflux: discard the state an interrupted run left in --state-dir and start from step 0"))
    gradient_checkpointing: bool = field(default=False, metadata=_flag(
        "gradient_checkpointing", "Hyperflux: recompute activations in the backward pass (less memory, ~30% more time)"))

    def validate(self) -> None:
        if self.gate_init not in GATE_INIT:
            raise ConfigError(f"unknown gate_init {self.gate_init!r}; choose one of: {', '.join(GATE_INIT)}")
        _check_positive_number(self, "gate_lr", "pressure_step", "pressure_exponent")
        _check_positive_int(self, "steps", "tick_every", "grad_accum", "checkpoint_every")
        _check_non_negative_int(self, "regrowth_steps")
        if self.resume and self.restart:
            raise ConfigError("give --resume (continue the saved Hyperflux state) or --restart (discard it), not both")
        if self.steps < self.tick_every:
            raise ConfigError(f"steps ({self.steps}) must be at least tick_every ({self.tick_every}): the pressure "
                              "is updated every tick_every steps")


@dataclass
class RecoveryOptions:
    """``--recover lora``: after the cut, train a peft LoRA on text, merge it into the weights, save a plain model
    (``config.recovery``; flags ``--recover``, ``--recover-*``, ``--lora-*``)."""

    method: str = field(default="none", metadata=_flag("recover", (
        "recover quality after the cut: 'lora' trains a LoRA adapter (peft) on --recover-data, merges it into "
        "the weights and saves a plain model; 'none' saves the cut model as it is")))
    data: str | None = field(default=None, metadata=_flag("recover_data", (
        "text to train the LoRA on, read like --calibration (a .txt/.jsonl file, a datasets name, 'builtin', "
        "'reference'); its last --recover-eval-rows rows are held out and report perplexity before and after"),
        default_help="the calibration text"))
    rank: int = field(default=8, metadata=_flag("lora_rank", "LoRA rank r of every adapted Linear"))
    alpha: float | None = field(default=None, metadata=_flag(
        "lora_alpha", "LoRA scaling numerator alpha (the update is scaled by alpha / r)", default_help="2 x rank"))
    steps: int = field(default=100, metadata=_flag("lora_steps", "optimizer steps of LoRA training"))
    lr: float = field(default=2e-4, metadata=_flag("lora_lr", "AdamW learning rate of the LoRA weights"))
    target_modules: str = field(default="all-linear", metadata=_flag("lora_targets", (
        "comma-separated Linear names to adapt (e.g. q_proj,v_proj,down_proj), or 'all-linear' (every Linear of "
        "the decoder layers, peft's shorthand)")))
    samples: int = field(default=64, metadata=_flag("recover_samples", "training sequences of --recover-data"))
    eval_rows: int = field(default=8, metadata=_flag(
        "recover_eval_rows", "rows of --recover-data held out of training, on which perplexity is reported"))
    batch_size: int = field(default=4, metadata=_flag("recover_batch_size", "sequences per LoRA optimizer step"))

    def validate(self) -> None:
        from .recovery import RECOVERY_METHODS

        if self.method != "none" and self.method not in RECOVERY_METHODS:
            raise ConfigError(f"unknown recovery {self.method!r}; choose one of: none, {', '.join(RECOVERY_METHODS)}")
        _check_positive_int(self, "rank", "steps", "samples", "eval_rows", "batch_size")
        _check_positive_number(self, "lr", *(("alpha",) if self.alpha is not None else ()))
        if self.method == "none":
            for f in fields(self):
                if f.name != "method" and getattr(self, f.name) != f.default:
                    raise ConfigError(f"--{_flag_of(self, f.name)} applies with --recover lora only; add "
                                      "--recover lora or drop the flag")
        if not self.target_modules or not self.target_modules.strip(", "):
            raise ConfigError("--lora-targets names no module; pass e.g. 'all-linear' or 'q_proj,v_proj'")

    @property
    def target_module_names(self) -> str | list[str]:
        """What peft's ``LoraConfig(target_modules=...)`` takes: 'all-linear' or a list of names."""
        names = [name.strip() for name in self.target_modules.split(",") if name.strip()]
        return names[0] if names == ["all-linear"] else names


#: PruningConfig fields that are nested sections, each a dataclass whose fields carry their own flag
SECTIONS: dict[str, type] = {"calibration": CalibrationOptions, "search": SearchOptions,
                             "hyperflux": HyperfluxOptions, "recovery": RecoveryOptions}


def section_aliases() -> dict[str, tuple[str, str]]:
    """Flat name (a flag with underscores, e.g. ``lora_rank``) -> (section, field) for every section field."""
    return {f.metadata["flag"]: (section, f.name) for section, cls in SECTIONS.items() for f in fields(cls)}


def flat_options(values: dict[str, Any]) -> dict[str, Any]:
    """A config dictionary (``to_dict()``) by flag name, keeping only what means something for its target:
    no search or Hyperflux settings in an EMP model card, no recovery settings without recovery."""
    from .targets import TARGETS

    target = TARGETS.get(values.get("target"))
    flat: dict[str, Any] = {}
    for f in fields(PruningConfig):  # in the order of the fields, whatever order the dictionary was saved in
        name = f.name
        if name not in values:
            continue
        value = values[name]
        if name in SECTIONS and isinstance(value, dict):
            if not _section_unused(name, value, target):
                flat.update({g.metadata["flag"]: value[g.name] for g in fields(SECTIONS[name]) if g.name in value})
        elif target is None or target.name in TARGET_ONLY_OPTIONS.get(name, (target.name,)):
            flat[name] = value
    return flat


def _section_unused(name: str, value: dict[str, Any], target: Any) -> bool:
    from .targets import TARGETS

    if name == "recovery":
        return value.get("method", "none") == "none"
    owners = [spec.name for spec in TARGETS.values() if spec.section == name]
    return bool(owners) and (target is None or target.name not in owners)


@dataclass
class PruningConfig:
    target: str = field(default="uniform", metadata=_help(
        "how many groups each layer keeps: 'uniform' removes the same fraction of KV groups and MLP neurons "
        "in every layer; 'emp' keeps a number proportional to each layer's effective number of groups "
        "N_eff = (sum s)^2 / sum s^2 of its importance scores, scaled to meet --sparsity; 'hyperflux' learns "
        "gates under a scheduled pressure on calibration text, then keeps exactly the budget; 'search' measures "
        "what cutting each attention / MLP to each width costs (KL on held-out calibration rows; width 0 "
        "removes the whole sublayer) and solves for the budget"))
    sparsity: float | None = field(default=0.3, metadata=_help(
        "fraction of the prunable parameters (attention + MLP weights of all decoder layers) to remove, in "
        "[0, 1); the achieved figure differs only by rounding to whole groups"))
    importance: str = field(default="activation", metadata=_help(
        "per-group importance that picks which groups go: 'magnitude' (weight norms, data-free), 'activation' "
        "(Wanda-sp: ||X_j|| * ||W_:,j||), 'fluctuation' (FLAP: Var(X_j) * ||W_:,j||^2), 'taylor' (LLM-Pruner: "
        "|sum w * dL/dw|); all but magnitude read calibration text"))
    units: str | None = field(default=None, metadata=_help(
        "which groups may be removed: 'all' (KV groups and MLP neurons), 'attention' (KV groups only) or "
        "'mlp' (neurons only, the measured best fixed rule at 20-35%: eval/results/defaults.md); the budget is "
        "always a share of all prunable parameters",
        default_help="'all' with --target search (it decides between kinds itself), 'mlp' otherwise"))
    beta: float | None = field(default=None, metadata=_help(
        "EMP only: use the paper's raw rule, keep floor(beta * N_eff) groups per layer, instead of solving "
        "beta for --sparsity (give one of the two)", default_help="none: beta is solved for --sparsity"))
    mlp_multiple: int = field(default=1, metadata=_help(
        "EMP and search: round each layer's MLP width to a multiple of this (e.g. 64 or 128 for fast GPU kernels)"))
    compensate: str = field(default="none", metadata=_help(
        "'bias' folds the calibration mean of every removed channel into the bias of o_proj / down_proj "
        "(FLAP's compensation); 'lstsq' refits the kept columns and a bias of o_proj / down_proj by least squares "
        "to the dense output on calibration text (holds a d x d matrix per layer while calibrating); 'none' just "
        "removes. Both read --calibration"))
    seed: int = field(default=0, metadata=_help("random seed of the calibration sample (and of Hyperflux gates)"))
    uniform_shapes: bool = field(default=False, metadata=_help(
        "save the result as the family's stock Llama / Mistral / Qwen2 / Qwen3 class and config (equal counts in "
        "every layer, so --target uniform; no compensation bias): any tool loads it without hf-prune or remote code"))
    calibration: CalibrationOptions = field(default_factory=CalibrationOptions, metadata=_help(
        "the calibration text and how it is read (a section; a string is taken as its source)"))
    search: SearchOptions = field(default_factory=SearchOptions, metadata=_help("--target search (a section)"))
    hyperflux: HyperfluxOptions = field(default_factory=HyperfluxOptions, metadata=_help(
        "--target hyperflux (a section)"))
    recovery: RecoveryOptions = field(default_factory=RecoveryOptions, metadata=_help(
        "recovery after the cut (a section; flags --recover, --recover-*, --lora-*)"))

    def __post_init__(self) -> None:
        if isinstance(self.calibration, str) or self.calibration is None:
            self.calibration = CalibrationOptions(source=self.calibration)
        for name, cls in SECTIONS.items():
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, _section_from_dict(cls, value, name))
            elif not isinstance(value, cls):
                raise ConfigError(f"{name} must be a {cls.__name__} or a mapping of its fields, got {value!r}")
        self.validate()

    def validate(self) -> None:
        from .importance import IMPORTANCE_REGISTRY
        from .targets import TARGETS

        def choose(name: str, value: Any, options) -> None:
            if value not in options:
                raise ConfigError(f"unknown {name} {value!r}; choose one of: {', '.join(sorted(options))}")

        choose("target", self.target, TARGETS)
        target = TARGETS[self.target]
        if self.units is None:
            self.units = "all" if self.target == "search" else "mlp"
        choose("importance", self.importance, IMPORTANCE_REGISTRY)
        choose("units", self.units, UNITS)
        choose("compensate", self.compensate, COMPENSATION)
        defaults = {f.name: f.default for f in fields(self)}
        for name, targets in TARGET_ONLY_OPTIONS.items():
            if getattr(self, name) != defaults[name] and self.target not in targets:
                raise ConfigError(f"{name} applies to --target {' / '.join(targets)} only")
        for name, cls in SECTIONS.items():
            section = getattr(self, name)
            owners = [spec.name for spec in TARGETS.values() if spec.section == name]
            if owners and target.section != name:
                changed = next((f for f in fields(cls) if getattr(section, f.name) != _default(f)), None)
                if changed is not None:
                    raise ConfigError(f"--{changed.metadata['flag'].replace('_', '-')} applies to --target "
                                      f"{' / '.join(owners)} only")
            section.validate()
        if self.beta is not None:
            if self.sparsity is not None:
                raise ConfigError("give either sparsity (beta is then solved for it) or beta (the raw EMP rule), not both")
            if not isinstance(self.beta, (int, float)) or self.beta <= 0:
                raise ConfigError(f"beta must be a positive number, got {self.beta!r}")
        elif self.sparsity is None:
            raise ConfigError("give a sparsity (or, with --target emp, a beta)")
        if self.sparsity is not None:
            if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)):
                raise ConfigError(f"sparsity must be a number in (0, 1), got {self.sparsity!r}")
            if not 0.0 <= float(self.sparsity) < 1.0:
                raise ConfigError(
                    f"sparsity must be in (0, 1), got {self.sparsity}: it is the fraction of parameters to remove")
            if self.sparsity == 0:
                raise ConfigError("sparsity 0 removes nothing, so there is nothing to write; pass a fraction in "
                                  "(0, 1), e.g. --sparsity 0.3")
            self.sparsity = float(self.sparsity)
        if isinstance(self.mlp_multiple, bool) or not isinstance(self.mlp_multiple, int) or self.mlp_multiple < 1:
            raise ConfigError(f"mlp_multiple must be a positive integer, got {self.mlp_multiple!r}")
        if self.uniform_shapes and self.target != "uniform":
            raise ConfigError(f"--uniform-shapes needs the same counts in every layer: use --target uniform, not "
                              f"{self.target!r}")
        if self.uniform_shapes and self.compensate != "none":
            raise ConfigError("--uniform-shapes: the stock classes have no place for the o_proj / down_proj bias that "
                              "--compensate adds; drop one of the two")

    @property
    def learned(self) -> bool:
        """Whether the target trains gates (resumable state, a 4/8-bit base, Ctrl-C saves the state)."""
        from .targets import TARGETS

        return TARGETS[self.target].learned

    @property
    def held_out_rows(self) -> int:
        """Calibration rows read beyond --calibration-samples and kept out of the scores (search's cost rows)."""
        return self.search.rows if self.target == "search" else 0

    def selects(self, kind: str) -> bool:
        """Whether groups of this scope kind ("attention" / "mlp") may be removed."""
        return self.units in ("all", kind)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "PruningConfig":
        """From nested sections (``{"recovery": {"rank": 8}}``, as ``to_dict`` writes) or flat flag names
        (``{"lora_rank": 8, "calibration": "c.jsonl"}``, as recipes and the command line give them); flat names
        win. ``calibration`` may be the section (a mapping) or its source (a string)."""
        known = {f.name for f in fields(cls)}
        aliases = section_aliases()
        unknown = sorted(set(values) - known - set(aliases))
        if unknown:
            logger.warning("ignoring unknown PruningConfig keys: %s", ", ".join(unknown))
        kwargs = {key: value for key, value in values.items() if key in known and key not in SECTIONS}
        for name in SECTIONS:
            section = values.get(name)
            if is_dataclass(section):
                section = asdict(section)
            kwargs[name] = dict(section) if isinstance(section, dict) else {}
        for alias, (section, name) in aliases.items():
            if alias in values and not isinstance(values[alias], dict):
                kwargs[section][name] = values[alias]
        return cls(**kwargs)


def _default(f: Any) -> Any:
    return f.default_factory() if f.default is MISSING else f.default


def _section_from_dict(cls: type, values: dict[str, Any], section: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        logger.warning("ignoring unknown %s keys: %s", section, ", ".join(unknown))
    return cls(**{key: value for key, value in values.items() if key in known})


def flatten_sections(values: dict[str, Any]) -> dict[str, Any]:
    """Nested sections (``{"search": {"rows": 3}}``) as flag names (``{"search_rows": 3}``), so a flag given on
    the command line overrides one field of a recipe's section, not the whole section."""
    flat = {key: value for key, value in values.items() if not (key in SECTIONS and isinstance(value, dict))}
    for name, cls in SECTIONS.items():
        section = values.get(name)
        if isinstance(section, dict):
            flags = {f.name: f.metadata["flag"] for f in fields(cls)}
            unknown = sorted(set(section) - set(flags))
            if unknown:
                logger.warning("ignoring unknown %s keys: %s", name, ", ".join(unknown))
            flat.update({flags[key]: value for key, value in section.items() if key in flags})
    return flat


def load_recipe(path: str | Path) -> dict[str, Any]:
    """The options of a YAML recipe by flag name (``calibration_samples``; nested sections are flattened),
    plus ``model`` and ``output``."""
    import yaml

    recipe = Path(path)
    if not recipe.is_file():
        raise ConfigError(f"recipe {str(recipe)!r} does not exist; pass a YAML file such as recipes/llama.yaml")
    try:
        values = yaml.safe_load(recipe.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"recipe {str(recipe)!r} is not valid YAML: {first_line(error)}") from error
    if not isinstance(values, dict):
        raise ConfigError(f"recipe {str(recipe)!r} must be a mapping of option names to values")
    return flatten_sections({key.replace("-", "_"): value for key, value in values.items()})
