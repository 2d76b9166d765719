"""User-facing errors. The CLI prints their message on one line and exits with status 2; anything
else that escapes is a bug and keeps its traceback."""


class HfPruneError(Exception):
    """An error caused by the user's input, whose message names the problem and the fix."""


class UnsupportedModelError(HfPruneError):
    """The architecture has no adapter."""


class ConfigError(HfPruneError, ValueError):
    """An option value is out of range or inconsistent."""


class BudgetError(HfPruneError):
    """The requested sparsity cannot be met while keeping every layer non-empty."""


class ModelLoadError(HfPruneError):
    """The model path or id cannot be read."""


class OutputDirError(HfPruneError):
    """The output directory cannot be written safely."""
