"""Signals as a flag: set by SIGINT/SIGTERM inside the block, the old handlers back after it."""

from __future__ import annotations

import os
import signal
import threading

from pipeline.signals import stop_on_signals


def test_sigint_sets_the_flag_and_handlers_come_back() -> None:
    before = signal.getsignal(signal.SIGINT)
    with stop_on_signals() as stop:
        assert not stop.is_set()
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: the handler only sets the flag
        assert stop.wait(2)
    assert signal.getsignal(signal.SIGINT) is before


def test_off_the_main_thread_it_installs_nothing() -> None:
    seen = []

    def body() -> None:
        with stop_on_signals() as stop:
            seen.append((stop.is_set(), signal.getsignal(signal.SIGTERM)))

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == [(False, before)]
