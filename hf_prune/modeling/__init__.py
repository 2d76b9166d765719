"""The pruned config/model classes that ``from_pretrained`` and ``trust_remote_code`` load.

Everything lives in :mod:`.modeling_hf_prune`, the one file that is copied beside the weights (it imports only
torch and transformers). Registering the classes of the supported families with transformers' Auto classes is
:func:`hf_prune.adapters.register_family`'s job: the adapters say which families those are.
"""

from .modeling_hf_prune import (
    MODEL_TYPE_PREFIX,
    REMOVED_FIELD,
    REPORT_FIELD,
    SHAPES_FIELD,
    RemovedAttention,
    RemovedMLP,
    RemovedSublayer,
    pruned_classes,
    removed_sublayer,
    resize_linear_modules,
    set_push_handler,
)

__all__ = ["MODEL_TYPE_PREFIX", "REMOVED_FIELD", "REPORT_FIELD", "SHAPES_FIELD", "RemovedAttention", "RemovedMLP",
           "RemovedSublayer", "pruned_classes", "removed_sublayer", "resize_linear_modules", "set_push_handler"]
