"""Export formats of a pruned model: :mod:`.stock` (``--uniform-shapes``: the family's stock classes) and the
GGUF file llama.cpp runs (:mod:`.gguf`, command ``hf-prune export-gguf``: :mod:`.gguf_cli`). Both are registered by
name in :mod:`hf_prune.registry` (``EXPORTS``, ``FILE_FORMATS``): a new format is one file plus one line there."""
