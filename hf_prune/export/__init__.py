"""Export formats of a pruned model, by name.

A format is one file plus one line in ``EXPORTERS`` below: a function that takes the pruned model in
memory and turns it into what that format needs. The modules are imported on first use (see
:mod:`hf_prune.registry`).
"""

from __future__ import annotations

from ..registry import Registry

#: format name -> ``(model) -> model``: ``stock`` relabels a uniformly pruned model as its family's stock class
EXPORTERS: Registry = Registry("export format", __name__, {
    "stock": ".stock:as_stock_model",
})

__all__ = ["EXPORTERS"]
