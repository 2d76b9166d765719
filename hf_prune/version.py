"""The version of hf-prune, at the bottom of the package so that every layer may name it (reports, cards,
``--version``) without importing the package's facade."""

__version__ = "0.1.0"
