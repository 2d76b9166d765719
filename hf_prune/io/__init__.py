"""The model on disk: loading and writing checkpoints (:mod:`.checkpoint`), layer by layer for models larger than
memory (:mod:`.layerwise`), the files written beside them (:mod:`.artifacts`, :mod:`.card`, :mod:`.summary`),
other formats (:mod:`.export`), and the Hub (:mod:`.hub`)."""
