"""Prune on load: ``AutoPrunedModelForCausalLM.from_pretrained(model_id, pruning_config=PruningConfig(...))``.

Why an hf_prune Auto class and not ``AutoModelForCausalLM.from_pretrained(..., pruning_config=...)``:
transformers has no hook that runs code after the weights load — an unknown keyword is silently stored on
the config — so that call would return the dense model without a word. peft faces the same problem and
answers it with ``AutoPeftModelForCausalLM``; this follows that convention. The returned model is cut,
full precision (a 4/8-bit base used for gate training is reloaded for the cut), carries its report in
``config.hf_prune`` and saves a checkpoint that plain ``AutoModelForCausalLM.from_pretrained`` reloads.
"""

from __future__ import annotations

import os
from typing import Any

from transformers import AutoModelForCausalLM, PreTrainedModel

from ..config import PruningConfig, QualityCheck
from ..errors import ConfigError
from ..io.checkpoint import load_config
from .console import make_console
from .pipeline import prune_pretrained


class AutoPrunedModelForCausalLM:
    """Loads a causal LM and prunes it by ``pruning_config`` in one call (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any):
        raise OSError("AutoPrunedModelForCausalLM is not instantiated: use "
                      "AutoPrunedModelForCausalLM.from_pretrained(model_id, pruning_config=PruningConfig(...))")

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        pruning_config: PruningConfig | dict[str, Any] | None = None,
        *,
        dtype: str = "auto",
        device_map: Any = None,
        quality: QualityCheck | None = None,
        verbose: bool = False,
        **kwargs: Any,
    ) -> PreTrainedModel:
        """The pruned model; its report is ``model.config.hf_prune`` (and the returned ``model.pruning_report``).

        ``pruning_config`` is a :class:`PruningConfig` or a dict of its fields (flag names work too, as in a
        recipe). Without one, an already pruned checkpoint loads as it is and anything else is an error, so
        a missing argument never passes for a pruned model. ``load_in_4bit=True`` / ``load_in_8bit=True``
        hold the base in bitsandbytes while Hyperflux gates train. ``verbose`` prints the run's tables.
        """
        path = str(pretrained_model_name_or_path)
        if pruning_config is None:
            if getattr(load_config(path), "hf_prune", None) is None:
                raise ConfigError(f"{path!r} is not pruned yet: pass pruning_config=PruningConfig(sparsity=..., ...)")
            return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map=device_map, **kwargs)
        config = pruning_config if isinstance(pruning_config, PruningConfig) else PruningConfig.from_dict(pruning_config)
        quantize_bits = 4 if kwargs.pop("load_in_4bit", False) else 8 if kwargs.pop("load_in_8bit", False) else None
        if kwargs:
            raise ConfigError(f"AutoPrunedModelForCausalLM.from_pretrained does not take {', '.join(sorted(kwargs))}; "
                              "it takes pruning_config, dtype, device_map, quality, load_in_4bit/8bit and verbose")
        model, report = prune_pretrained(path, config, dtype=dtype, device_map=device_map,
                                         quantize_bits=quantize_bits, quality=quality,
                                         console=make_console(quiet=not verbose))
        model.pruning_report = report
        return model
