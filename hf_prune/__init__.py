"""hf-prune: structured pruning of Hugging Face causal LMs (KV groups and MLP neurons).

Importing this package registers the pruned model classes with transformers' Auto classes, so
``AutoModelForCausalLM.from_pretrained(pruned_dir)`` rebuilds the pruned shapes.
"""

__version__ = "0.1.0"

from . import modeling  # noqa: E402  (registers the Auto classes)
from .adapters import SUPPORTED_MODEL_TYPES, get_adapter  # noqa: E402
from .checkpoint import load_model, save_pruned  # noqa: E402
from .config import PruningConfig  # noqa: E402
from .errors import HfPruneError  # noqa: E402
from .pruner import PruningReport, prune  # noqa: E402

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "HfPruneError",
    "PruningConfig",
    "PruningReport",
    "__version__",
    "get_adapter",
    "load_model",
    "modeling",
    "prune",
    "save_pruned",
]
