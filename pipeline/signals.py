"""Ctrl-C and SIGTERM as a flag: long-running commands stop at a safe point, never mid-call.

A KeyboardInterrupt raised at an arbitrary bytecode can land inside a library's cleanup code,
where Python reports it as "ignored" and the command keeps running; a handler that only sets
an Event cannot be lost that way.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def stop_on_signals(*signums: int) -> Iterator[threading.Event]:
    """An Event that SIGINT and SIGTERM (or `signums`) set while inside; old handlers come back after.

    Off the main thread no handler can be installed, and the event is only ever set by the caller.
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in signums or (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
