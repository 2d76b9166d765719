"""PruningConfig: every option that decides the pruned weights, in one validated, serialisable place.

The field metadata's ``help`` text is what ``hf-prune --help`` prints, so the CLI and the Python API cannot drift
apart. Names of targets, criteria, compensations and recoveries are checked against :mod:`hf_prune.registry`,
and what a target reads (its section, its options, its default units) is that target's traits there, never a
name written here: a new target is one file plus one registration.

The defaults are the recipe the project's measurements recommend (``eval/results/defaults.md``,
``python eval/bench_defaults.py``): activation (Wanda-sp) scores, which ranked groups well on every model
measured, where fluctuation collapsed on a pretrained one; and MLP neurons only, which lost least at 20-35% on
the 5M reference model and on SmolLM2-135M, because removing a KV group costs a whole head's share of a layer's
attention. ``--units all`` and ``--target emp`` remain a flag away.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from typing import Any

from ..errors import ConfigError
from ..registry import COMPENSATIONS, IMPORTANCES, TARGETS
from .fields import check_choice, default_of, flag_name, option, refuse_unknown
from .sections import SECTIONS, CalibrationOptions, HyperfluxOptions, RecoveryOptions, RunStateOptions, SearchOptions

UNITS = ("all", "attention", "mlp")
#: what --refit-on accepts: the inputs compensation refits the consumers on
REFIT_INPUTS = ("pruned", "dense", "asymmetric")


def compensation_choices() -> tuple[str, ...]:
    return ("none", *COMPENSATIONS)


def section_owners(section: str) -> list[str]:
    """The targets that read ``section`` (its flags are refused with any other); none for a shared section. The
    ``state`` section is read by the targets whose trait says ``resumable``."""
    return [name for name in TARGETS if TARGETS.traits(name).get("section") == section
            or (section == "state" and TARGETS.traits(name).get("resumable"))]


def option_owners(name: str) -> list[str] | None:
    """The targets that read the top-level option ``name``, or None when every target reads it."""
    owners = [target for target in TARGETS if name in TARGETS.traits(target).get("options", ())]
    return owners or None


@dataclass
class PruningConfig:
    """What to prune and how: the options that decide the pruned weights, recorded in the checkpoint's
    ``config.hf_prune`` (:meth:`to_dict`). Validated when built; nothing changes it afterwards."""

    target: str = field(default="uniform", metadata=option(
        "how many groups each layer keeps: 'uniform' removes the same fraction of KV groups and MLP neurons "
        "in every layer; 'emp' keeps a number proportional to each layer's effective number of groups "
        "N_eff = (sum s)^2 / sum s^2 of its importance scores, scaled to meet --sparsity; 'hyperflux' learns "
        "gates under a scheduled pressure on calibration text, then keeps exactly the budget; 'search' measures "
        "what cutting each attention / MLP to each width costs (KL on held-out calibration rows; width 0 "
        "removes the whole sublayer) and solves for the budget"))
    sparsity: float | None = field(default=0.3, metadata=option(
        "fraction of the prunable parameters (attention + MLP weights of all decoder layers) to remove, in "
        "(0, 1); the achieved figure differs only by rounding to whole groups"))
    importance: str = field(default="activation", metadata=option(
        "per-group importance that picks which groups go: 'magnitude' (weight norms, data-free), 'activation' "
        "(Wanda-sp: ||X_j|| * ||W_:,j||), 'fluctuation' (FLAP: Var(X_j) * ||W_:,j||^2), 'taylor' (LLM-Pruner: "
        "|sum w * dL/dw|); all but magnitude read calibration text"))
    units: str | None = field(default=None, metadata=option(
        "which groups may be removed: 'all' (KV groups and MLP neurons), 'attention' (KV groups only) or "
        "'mlp' (neurons only, the measured best fixed rule at 20-35%: eval/results/defaults.md); the budget is "
        "always a share of all prunable parameters",
        default_help="'all' with --target search (it decides between kinds itself), 'mlp' otherwise"))
    beta: float | None = field(default=None, metadata=option(
        "EMP only: use the paper's raw rule, keep floor(beta * N_eff) groups per layer, instead of solving "
        "beta for --sparsity (give one of the two)", default_help="none: beta is solved for --sparsity"))
    mlp_multiple: int = field(default=1, metadata=option(
        "EMP and search: round each layer's MLP width to a multiple of this (e.g. 64 or 128 for fast GPU kernels)"))
    compensate: str = field(default="none", metadata=option(
        "'bias' folds the calibration mean of every removed channel into the bias of o_proj / down_proj "
        "(FLAP's compensation); 'lstsq' refits the kept columns and a bias of o_proj / down_proj by least squares "
        "to the dense output on calibration text (holds a d x d matrix per layer while calibrating); 'obs' is lstsq "
        "that also chooses which groups go (within each layer's count) by their Optimal Brain Surgeon error, "
        "greedily, on the inputs of the cut (SlimGPT's selection); 'none' just removes. All read --calibration"))
    refit_on: str = field(default="pruned", metadata=option(
        "with --compensate: the inputs o_proj / down_proj are refit on. 'pruned': the activations the already-cut "
        "earlier layers produce (the cut walks the layers in order; SlimGPT, Tyr-the-Pruner), reproducing what the "
        "dense weights compute from those inputs; 'asymmetric': the same inputs, reproducing the dense model's own "
        "output there (a second, dense stream is walked along, so each layer also undoes its prefix's drift; "
        "GPTAQ); 'dense': the dense model's activations, all gathered before the cut"))
    seed: int = field(default=0, metadata=option("random seed of the calibration sample (and of Hyperflux gates)"))
    uniform_shapes: bool = field(default=False, metadata=option(
        "save the result as the family's stock class and config (e.g. LlamaForCausalLM; equal counts in every layer, "
        "so --target uniform; no compensation bias): any tool loads it without hf-prune or remote code"))
    calibration: CalibrationOptions = field(default_factory=CalibrationOptions, metadata=option(
        "the calibration text and how it is read (a section; a string is taken as its source)"))
    search: SearchOptions = field(default_factory=SearchOptions, metadata=option("--target search (a section)"))
    hyperflux: HyperfluxOptions = field(default_factory=HyperfluxOptions, metadata=option(
        "--target hyperflux (a section)"))
    state: RunStateOptions = field(default_factory=RunStateOptions, metadata=option(
        "where --target hyperflux / search keep the state an interrupted run resumes from (a section)"))
    recovery: RecoveryOptions = field(default_factory=RecoveryOptions, metadata=option(
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
        check_choice("target", self.target, TARGETS)
        if self.units is None:  # the target's own default: the search decides between kinds itself
            self.units = TARGETS.traits(self.target).get("default_units", "mlp")
        if isinstance(self.sparsity, int) and not isinstance(self.sparsity, bool):
            self.sparsity = float(self.sparsity)
        self.validate()

    def validate(self) -> None:
        """Check every option and their combinations; one line names the first problem and its fix."""
        check_choice("importance", self.importance, IMPORTANCES)
        check_choice("units", self.units, UNITS)
        check_choice("compensate", self.compensate, compensation_choices())
        check_choice("refit_on", self.refit_on, REFIT_INPUTS)
        if self.compensate == "none" and self.refit_on != REFIT_INPUTS[0]:
            raise ConfigError(f"--refit-on applies with --compensate {' / '.join(compensation_choices()[1:])} only")
        for f in fields(self):
            owners = option_owners(f.name)
            if owners and self.target not in owners and getattr(self, f.name) != default_of(f):
                raise ConfigError(f"{f.name} applies to --target {' / '.join(owners)} only")
        for name in SECTIONS:
            self._check_section(name)
        self._check_budget()
        if isinstance(self.mlp_multiple, bool) or not isinstance(self.mlp_multiple, int) or self.mlp_multiple < 1:
            raise ConfigError(f"mlp_multiple must be a positive integer, got {self.mlp_multiple!r}")
        if self.uniform_shapes and not TARGETS.traits(self.target).get("equal_counts"):
            equal = [name for name in TARGETS if TARGETS.traits(name).get("equal_counts")]
            raise ConfigError(f"--uniform-shapes needs the same counts in every layer: use --target "
                              f"{' / '.join(equal)}, not {self.target!r}")
        if self.uniform_shapes and self.compensate != "none":
            raise ConfigError("--uniform-shapes: the stock classes have no place for the o_proj / down_proj bias that "
                              "--compensate adds; drop one of the two")

    def _check_section(self, name: str) -> None:
        section, owners = getattr(self, name), section_owners(name)
        if name == "state" and self.resumable:
            owners = []  # a distillation keeps its checkpoints there, whatever the target
        if owners and self.target not in owners:
            changed = next((f for f in fields(section) if getattr(section, f.name) != default_of(f)), None)
            if changed is not None:
                raise ConfigError(f"--{flag_name(changed).replace('_', '-')} applies to --target "
                                  f"{' / '.join(owners)} only")
        section.validate()

    def _check_budget(self) -> None:
        if self.beta is not None:
            if self.sparsity is not None:
                raise ConfigError("give either sparsity (beta is then solved for it) or beta (the raw EMP rule), not both")
            if isinstance(self.beta, bool) or not isinstance(self.beta, (int, float)) or self.beta <= 0:
                raise ConfigError(f"beta must be a positive number, got {self.beta!r}")
            return
        if self.sparsity is None:
            raise ConfigError("give a sparsity (or, with --target emp, a beta)")
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)):
            raise ConfigError(f"sparsity must be a number in (0, 1), got {self.sparsity!r}")
        if self.sparsity == 0:
            raise ConfigError("sparsity 0 removes nothing, so there is nothing to write; pass a fraction in "
                              "(0, 1), e.g. --sparsity 0.3")
        if not 0.0 < float(self.sparsity) < 1.0:
            raise ConfigError(
                f"sparsity must be in (0, 1), got {self.sparsity}: it is the fraction of parameters to remove")

    @property
    def learned(self) -> bool:
        """Whether the target trains gates (a 4/8-bit base, no --layerwise)."""
        return bool(TARGETS.traits(self.target).get("learned"))

    @property
    def resumable(self) -> bool:
        """Whether the run keeps a state in ``--state-dir`` that an interrupted run continues from (Ctrl-C saves it):
        its target's (a search's cost tables, Hyperflux's gates) or its recovery's (distillation's checkpoints)."""
        return bool(TARGETS.traits(self.target).get("resumable")) or self.recovery.method == "distill"

    @property
    def held_out_rows(self) -> int:
        """Calibration rows read beyond --calibration-samples and kept out of the scores (the search's cost rows):
        what the section of the target asks for."""
        section = TARGETS.traits(self.target).get("section")
        return getattr(getattr(self, section), "held_out_rows", 0) if section else 0

    def selects(self, kind: str) -> bool:
        """Whether groups of this scope kind ("attention" / "mlp") may be removed."""
        return self.units in ("all", kind)

    def with_changes(self, **changes: Any) -> "PruningConfig":
        """A validated copy with top-level fields or section fields changed (``calibration={"source": ...}``);
        this config is left as it is."""
        for name, value in list(changes.items()):
            if name in SECTIONS and isinstance(value, dict):
                changes[name] = replace(getattr(self, name), **value)
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Every option that shaped the weights, as nested sections. Not ``state`` (where an interrupted run keeps
        its resumable state): that is a local path of one run, not part of what the checkpoint records."""
        values = asdict(self)
        values.pop("state")
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "PruningConfig":
        """From nested sections (``{"recovery": {"rank": 8}}``, as ``to_dict`` writes them) or flat flag names
        (``{"lora_rank": 8, "calibration": "c.jsonl"}``, as recipes and the command line give them); flat names
        win. ``calibration`` may be the section (a mapping) or its source (a string). An unknown key is an error
        that names the nearest known one."""
        aliases = section_aliases()
        refuse_unknown(values, [*(f.name for f in fields(cls)), *aliases], "in the pruning config")
        kwargs = {key: value for key, value in values.items() if key not in SECTIONS and key not in aliases}
        for name in SECTIONS:
            section = values.get(name)
            if is_dataclass(section):
                section = asdict(section)
            kwargs[name] = dict(section) if isinstance(section, dict) else {}
        for alias, (section, name) in aliases.items():
            if alias in values and not isinstance(values[alias], dict):
                kwargs[section][name] = values[alias]
        return cls(**kwargs)


def _section_from_dict(cls: type, values: dict[str, Any], section: str) -> Any:
    refuse_unknown(values, [f.name for f in fields(cls)], f"in section {section!r}")
    return cls(**values)


def section_aliases() -> dict[str, tuple[str, str]]:
    """Flat name (a flag with underscores, e.g. ``lora_rank``) -> (section, field) for every section field."""
    return {flag_name(f): (section, f.name) for section, cls in SECTIONS.items() for f in fields(cls)}


def flat_options(values: dict[str, Any]) -> dict[str, Any]:
    """A config dictionary (``to_dict()``) by flag name, keeping only what means something for its target:
    no search or Hyperflux settings in an EMP model card, no recovery settings without recovery."""
    target = values.get("target")
    flat: dict[str, Any] = {}
    for f in fields(PruningConfig):  # in the order of the fields, whatever order the dictionary was saved in
        name = f.name
        if name not in values:
            continue
        value = values[name]
        if name in SECTIONS and isinstance(value, dict):
            if not _section_unused(name, value, target):
                flat.update({flag_name(g): value[g.name] for g in fields(SECTIONS[name]) if g.name in value})
        elif name == "refit_on" and values.get("compensate", "none") == "none":
            continue  # nothing was refit
        elif target not in TARGETS or target in (option_owners(name) or [target]):
            flat[name] = value
    return flat


def _section_unused(name: str, value: dict[str, Any], target: str | None) -> bool:
    if name == "recovery":
        return value.get("method", "none") == "none"
    owners = section_owners(name)
    return bool(owners) and target not in owners
