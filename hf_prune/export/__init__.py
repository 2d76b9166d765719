"""Export formats of a pruned model, by name.

Two kinds, each one file plus one line below. ``EXPORTERS``: a function that takes the pruned model in
memory and turns it into what a checkpoint of that kind needs (``--uniform-shapes``). ``FILE_FORMATS``: a
command ``hf-prune export-NAME`` (its ``main(argv) -> exit status``) that writes a checkpoint as another
runtime's file. The modules are imported on first use (see :mod:`hf_prune.registry`).
"""

from __future__ import annotations

from ..registry import Registry

#: format name -> ``(model) -> model``: ``stock`` relabels a uniformly pruned model as its family's stock class
EXPORTERS: Registry = Registry("export format", __name__, {
    "stock": ".stock:as_stock_model",
})

#: NAME of ``hf-prune export-NAME`` -> its ``main(argv)``
FILE_FORMATS: Registry = Registry("file format", __name__, {
    "gguf": ".gguf_cli:main",
})

__all__ = ["EXPORTERS", "FILE_FORMATS"]
