"""A store held across units of work (the stream worker's) opens the engine once and gives the
embedded path up as soon as another process waits for it."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from pipeline.store.client import HeldStore, others_waiting, resolve_dsn
from tests.support.env import ROOT

OTHER = """
import sys, time
from pipeline.settings import load_settings
from pipeline.store.client import open_store
settings = load_settings(clickhouse_dsn=sys.argv[1], clickhouse_database=sys.argv[2], clickhouse_lock_timeout_s=60)
started = time.monotonic()
with open_store(settings) as client:
    client.command("SELECT 1")
print(f"{time.monotonic() - started:.2f}")
"""


def test_a_held_store_opens_once_and_gives_the_path_up_when_another_process_waits(settings) -> None:
    held = HeldStore(settings, idle_s=3600)
    dsn = resolve_dsn(settings.clickhouse_dsn)
    for i in range(5):
        with held.use() as client:
            assert client.command(f"SELECT {i}") == i
        held.yield_if_wanted()
    assert held.opens == 1 and not others_waiting(dsn)

    other = subprocess.Popen([sys.executable, "-c", OTHER, dsn, settings.clickhouse_database], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not others_waiting(dsn):  # the other process is importing, then waits for the turn
        assert other.poll() is None and time.monotonic() < deadline, "the other process never waited"
        time.sleep(0.05)
    time.sleep(1)
    assert other.poll() is None  # still waiting: the path is held
    held.yield_if_wanted()
    out, _ = other.communicate(timeout=60)
    assert other.returncode == 0, out
    assert not others_waiting(dsn)
    with held.use() as client:
        assert client.command("SELECT 7") == 7
    assert held.opens == 2
    held.release()


def test_a_failed_unit_of_work_and_an_idle_spell_let_the_store_go(settings) -> None:
    held = HeldStore(settings, idle_s=0.2)
    with pytest.raises(Exception, match="no_such_column"), held.use() as client:
        client.command("SELECT no_such_column")
    with held.use():
        pass
    assert held.opens == 2
    time.sleep(0.3)
    held.yield_if_wanted()
    with held.use():
        pass
    assert held.opens == 3
    held.release()
