"""Every option of hf-prune, validated in one place.

- :mod:`.pruning`: :class:`PruningConfig`, what to prune and how (recorded in the checkpoint), and its sections
  (:mod:`.sections`: calibration, search, hyperflux, state, recovery);
- :mod:`.run`: :class:`RunOptions`, the rest of a run (output, loading, scoring, publishing), and
  :class:`EvalOptions` for ``hf-prune eval``, which shares their flags;
- :mod:`.recipe`: recipes and the order in which options are decided;
- :mod:`.fields`: how an option declares its flag and help.
"""

from .pruning import REFIT_INPUTS, UNITS, PruningConfig, compensation_choices, flat_options, section_aliases, section_owners
from .recipe import load_recipe, merge_options, split_options
from .run import (
                  DTYPE_CHOICES,
                  EvalOptions,
                  HubTarget,
                  LoadOptions,
                  QualityCheck,
                  RunOptions,
                  effective_config,
                  is_embedded_default,
)
from .sections import (
    GATE_INIT,
    RECOVER_PARAMS,
    SECTIONS,
    CalibrationOptions,
    HyperfluxOptions,
    RecoveryOptions,
    RunStateOptions,
    SearchOptions,
)

__all__ = [
    "DTYPE_CHOICES", "GATE_INIT", "RECOVER_PARAMS", "REFIT_INPUTS", "SECTIONS", "UNITS", "CalibrationOptions", "EvalOptions", "HubTarget",
    "HyperfluxOptions", "LoadOptions", "PruningConfig", "QualityCheck", "RecoveryOptions", "RunOptions", "RunStateOptions",
    "SearchOptions", "compensation_choices", "effective_config", "flat_options", "is_embedded_default",
    "load_recipe", "merge_options", "section_aliases", "section_owners", "split_options",
]
