"""PruningConfig: every option of a pruning run in one validated, serialisable place.

The field metadata's ``help`` text is what ``hf-prune --help`` prints, so the CLI and the Python API
cannot drift apart. Unknown keys from a newer recipe are dropped with a warning (as peft does), not
an error, so old installs still read new recipes.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .errors import ConfigError

logger = logging.getLogger(__name__)

UNITS = ("all", "attention", "mlp")


@dataclass
class PruningConfig:
    target: str = field(
        default="uniform",
        metadata={"help": "how many groups each layer keeps: 'uniform' removes the same fraction of KV groups "
                          "and MLP neurons in every layer"},
    )
    sparsity: float = field(
        default=0.3,
        metadata={"help": "fraction of the prunable parameters (attention + MLP weights of all decoder layers) "
                          "to remove, in [0, 1); the achieved figure differs only by rounding to whole groups"},
    )
    importance: str = field(
        default="magnitude",
        metadata={"help": "per-group importance that picks which groups go: 'magnitude' = L2 norm of the "
                          "group's weights"},
    )
    units: str = field(
        default="all",
        metadata={"help": "which groups may be removed: 'all' (KV groups and MLP neurons), 'attention' "
                          "(KV groups only) or 'mlp' (neurons only); the budget is always a share of all "
                          "prunable parameters"},
    )
    seed: int = field(default=0, metadata={"help": "random seed (calibration sampling, tie-breaking)"})

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        from .allocation import ALLOCATORS
        from .importance import IMPORTANCE_REGISTRY

        if self.target not in ALLOCATORS:
            raise ConfigError(f"unknown target {self.target!r}; choose one of: {', '.join(sorted(ALLOCATORS))}")
        if self.importance not in IMPORTANCE_REGISTRY:
            raise ConfigError(
                f"unknown importance {self.importance!r}; choose one of: {', '.join(sorted(IMPORTANCE_REGISTRY))}"
            )
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)):
            raise ConfigError(f"sparsity must be a number in [0, 1), got {self.sparsity!r}")
        if not 0.0 <= float(self.sparsity) < 1.0:
            raise ConfigError(f"sparsity must be in [0, 1), got {self.sparsity}: it is the fraction of parameters to remove")
        self.sparsity = float(self.sparsity)
        if self.units not in UNITS:
            raise ConfigError(f"unknown units {self.units!r}; choose one of: {', '.join(UNITS)}")

    def selects(self, kind: str) -> bool:
        """Whether groups of this scope kind ("attention" / "mlp") may be removed."""
        return self.units in ("all", kind)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "PruningConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            logger.warning("ignoring unknown PruningConfig keys: %s", ", ".join(unknown))
        return cls(**{key: value for key, value in values.items() if key in known})
