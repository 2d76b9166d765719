"""Every name a user can choose, in one place: targets, importance criteria, compensations, recoveries, export
and file formats, and the verbs of the ``hf-prune`` command.

One mechanism serves them all (:class:`Registry`). Why here, at the bottom of the package: the command line lists
these names in ``--help`` and checks them while parsing, and :mod:`hf_prune.config` validates them, before anything
heavy is imported. A built-in entry is therefore an absolute ``"module:attribute"`` string, imported on first lookup
(the way transformers' Auto mappings name their classes), plus *traits*: plain data about the entry that other
parts must know without importing it (which options section a target reads, whether it trains). Code outside the
package adds an entry with :meth:`Registry.register`; a new target, criterion, compensation or format is one file
plus one line in a table below (CONTRIBUTING.md).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import import_module
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Builtin:
    """A built-in entry: where its implementation lives, and its traits."""

    implementation: str  # "package.module:attribute"
    traits: Mapping[str, Any] = field(default_factory=dict)

    def load(self) -> Any:
        module, _, attribute = self.implementation.partition(":")
        return getattr(import_module(module), attribute)


class Registry(Mapping[str, T], Generic[T]):
    """Names of one kind of plug-in -> implementations, imported on first lookup; duplicates are refused."""

    def __init__(self, kind: str, builtin: Mapping[str, Builtin] | None = None):
        self.kind = kind  # "importance", "target": used in messages
        self._builtin = dict(builtin or {})
        self._loaded: dict[str, T] = {}
        self._traits: dict[str, Mapping[str, Any]] = {name: entry.traits for name, entry in self._builtin.items()}

    def register(self, name: str, value: T, **traits: Any) -> T:
        """Add ``name``. A built-in module may register its own entry while it is imported (a decorator)."""
        if name in self._loaded or (name in self._builtin and not self._is_builtin(name, value)):
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._loaded[name] = value
        self._traits.setdefault(name, dict(traits))
        return value

    def unregister(self, name: str) -> None:
        """Remove an entry added with :meth:`register` (tests and plug-ins that clean up after themselves)."""
        if name in self._builtin:
            raise ValueError(f"{self.kind} {name!r} is built in")
        self._loaded.pop(name)
        self._traits.pop(name)

    def _is_builtin(self, name: str, value: object) -> bool:
        module = self._builtin[name].implementation.partition(":")[0]
        return getattr(value, "__module__", None) == module

    def traits(self, name: str) -> Mapping[str, Any]:
        """What is known of ``name`` without importing it."""
        return MappingProxyType(dict(self._traits.get(name, {})))

    def require(self, name: str) -> T:
        """The implementation of ``name``; an unknown name is a one-line error listing the known ones."""
        if name not in self:
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(sorted(self))}")
        return self[name]

    def __getitem__(self, name: str) -> T:
        if name not in self._loaded:
            if name not in self._builtin:
                raise KeyError(f"unknown {self.kind} {name!r}; available: {', '.join(sorted(self))}")
            self._loaded.setdefault(name, self._builtin[name].load())
        return self._loaded[name]

    def __contains__(self, name: object) -> bool:
        return name in self._builtin or name in self._loaded

    def __iter__(self) -> Iterator[str]:
        return iter({**dict.fromkeys(self._builtin), **dict.fromkeys(self._loaded)})

    def __len__(self) -> int:
        return len(set(self._builtin) | set(self._loaded))


#: how many groups each layer keeps (:class:`hf_prune.plan.allocation.Target`). Traits: ``section`` the options
#: section only this target reads; ``learned`` trains gates (4/8-bit base); ``resumable`` keeps a state in
#: ``--state-dir`` that an interrupted run continues from (``--resume``; Ctrl-C saves it; the ``state`` section);
#: ``options`` top-level options only some targets read; ``default_units`` when --units is not given;
#: ``equal_counts`` every layer keeps the same count (what --uniform-shapes needs)
TARGETS: Registry[Any] = Registry("target", {
    "uniform": Builtin("hf_prune.plan.allocation.uniform:UNIFORM", {"equal_counts": True}),
    "emp": Builtin("hf_prune.plan.allocation.emp:EMP", {"options": ("beta", "mlp_multiple")}),
    "hyperflux": Builtin("hf_prune.plan.hyperflux.planner:HYPERFLUX", {"section": "hyperflux", "learned": True,
                                                                         "resumable": True}),
    "search": Builtin("hf_prune.plan.search.planner:SEARCH",
                      {"section": "search", "options": ("mlp_multiple",), "default_units": "all",
                       "resumable": True}),
})

#: per-group importance scores (:class:`hf_prune.plan.importance.Importance` subclasses). Trait: ``backward`` the
#: criterion needs a backward pass through the whole model (refused layer by layer)
IMPORTANCES: Registry[Any] = Registry("importance", {
    "magnitude": Builtin("hf_prune.plan.importance.magnitude:MagnitudeImportance"),
    "activation": Builtin("hf_prune.plan.importance.activation:ActivationImportance"),
    "fluctuation": Builtin("hf_prune.plan.importance.fluctuation:FluctuationImportance"),
    "taylor": Builtin("hf_prune.plan.importance.taylor:TaylorImportance", {"backward": True}),
})

#: how the consumer of removed groups is refit (:class:`hf_prune.cut.compensation.Compensation`); "none" is no entry
COMPENSATIONS: Registry[Any] = Registry("compensation", {
    "bias": Builtin("hf_prune.cut.compensation.bias:BiasCompensation"),
    "lstsq": Builtin("hf_prune.cut.compensation.lstsq:LeastSquaresCompensation"),
    "obs": Builtin("hf_prune.cut.compensation.obs:OptimalBrainSurgeonCompensation"),
})

#: training after the cut, ``(model, text: RecoveryText, options, *, seed, teacher, state_dir, resume) -> RecoveryResult``
#: (``teacher``: a callable that loads the dense model, called only by a method that reads it); "none" is no entry
RECOVERIES: Registry[Any] = Registry("recovery", {
    "lora": Builtin("hf_prune.recovery.lora:recover"),
    "distill": Builtin("hf_prune.recovery.distill:recover_with_distillation"),
})

#: ``(model) -> model`` conversions of the pruned model before it is saved (``stock``: --uniform-shapes)
EXPORTS: Registry[Any] = Registry("export", {
    "stock": Builtin("hf_prune.io.export.stock:as_stock_model"),
})

#: NAME of ``hf-prune export-NAME`` -> its ``main(argv) -> exit status``
FILE_FORMATS: Registry[Any] = Registry("file format", {
    "gguf": Builtin("hf_prune.io.export.gguf_cli:main"),
})

#: what runs a verb of ``hf-prune`` once :mod:`hf_prune.run.cli` has parsed and validated its flags (``prune``:
#: ``(model, PruningConfig, RunOptions, argv) -> exit status``; ``eval``: ``(EvalOptions) -> exit status``).
#: Imported only then, so ``--help``, a mistyped flag or ``--version`` answer before torch is loaded.
COMMANDS: Registry[Any] = Registry("command", {
    "prune": Builtin("hf_prune.run.pipeline:run_prune"),
    "eval": Builtin("hf_prune.run.scoring:run_eval"),
})
