"""vLLM plugin: ``vllm.LLM(pruned_dir)`` serves hf-prune checkpoints.

vLLM calls :func:`register` (entry point group ``vllm.general_plugins``, declared in pyproject.toml) in
every process it starts, before it reads a model config. It must be cheap and idempotent, so it
registers the architectures by their lazy ``"module:Class"`` form (vLLM imports :mod:`.model` only when
it builds such a model) and imports nothing from vLLM at module level: the main test suite, which has
no vLLM, imports this module.
"""

from __future__ import annotations

from ..adapters import FAMILIES
from ..modeling import pruned_classes

#: architecture string in a pruned config.json -> the vLLM model class that serves it, one per supported family
ARCHITECTURES = {
    name: f"hf_prune.vllm_plugin.model:{name}"
    for name in (pruned_classes(model_type)[1].__name__ for model_type in FAMILIES)
}


def register() -> None:
    """Register the pruned architectures with vLLM, and the ``hf_prune_*`` configs with transformers.

    vLLM reads a config whose model_type it does not know with ``AutoConfig.from_pretrained``; without
    trust_remote_code that refuses the checkpoint's ``auto_map``. Importing :mod:`hf_prune.adapters` (above)
    registered the pruned config classes with ``AutoConfig``, so no remote code is needed.
    """
    from vllm import ModelRegistry  # deferred: vLLM is installed only beside the engine

    supported = set(ModelRegistry.get_supported_archs())
    for architecture, target in ARCHITECTURES.items():
        if architecture not in supported:
            ModelRegistry.register_model(architecture, target)
