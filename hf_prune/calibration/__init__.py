"""Calibration: text becomes token rows (:mod:`.rows`), rows become float64 statistics per group (:mod:`.statistics`)."""
