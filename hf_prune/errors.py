"""User-facing errors. The CLI prints their message on one line and exits with status 2; anything
else that escapes is a bug and keeps its traceback."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name if it has none), for one-line errors."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


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


#: exit statuses of the command: done; bad input (one line, this module's errors); quality gate failed (the
#: checkpoint is written, not pushed); interrupted (Ctrl-C, the shell's status for SIGINT)
EXIT_OK, EXIT_BAD_INPUT, EXIT_QUALITY_GATE_FAILED, EXIT_INTERRUPTED = 0, 2, 3, 130
