"""Ctrl-C at a step boundary: a long training loop finishes the step it is in, saves, and stops.

A state saved mid-step would hold the parameters of one step and the counter of the other; finishing the step
costs at most one forward and backward and loses nothing. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class StopRequest:
    """Set by the first Ctrl-C inside :func:`stop_at_step_boundary`; the loop reads :attr:`requested`."""

    def __init__(self) -> None:
        self.requested = False


@contextmanager
def stop_at_step_boundary(what: str, enabled: bool = True) -> Iterator[StopRequest]:
    """Inside the block the first SIGINT only sets the request (and says so on stderr, naming ``what`` is
    saved); the second raises KeyboardInterrupt. Signals are handled in the main thread only: elsewhere, or when
    not ``enabled`` (nothing would be saved), Ctrl-C keeps its usual meaning."""
    request = StopRequest()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield request
        return

    def on_interrupt(signum, frame) -> None:
        if request.requested:
            raise KeyboardInterrupt
        request.requested = True
        print(f"\nhf-prune: stopping after this step to save {what} (Ctrl-C again to stop now)",
              file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield request
    finally:
        signal.signal(signal.SIGINT, previous)
