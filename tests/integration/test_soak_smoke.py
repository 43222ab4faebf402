"""`bench/soak.py` for two minutes, as the suite's smoke of the soak: it runs, loses nothing, and reports."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.support.env import ROOT

pytestmark = pytest.mark.kafka


def test_a_two_minute_soak_loses_nothing_and_reports_memory_and_lag(kafka_bootstrap: str) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--minutes", "2", "--sample-s", "10", "--warm-up-s", "30"],
        env={**os.environ, "SAFEMON_KAFKA_BOOTSTRAP": kafka_bootstrap, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(done.stdout[-3000:])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "exactly once: yes" in done.stdout
    counts = re.search(r"stored ([\d,]+) .*rejected ([\d,]+) of ([\d,]+) poison, lost (\d+)", done.stdout)
    assert counts is not None, done.stdout[-3000:]
    stored, rejected, poison, lost = (int(g.replace(",", "")) for g in counts.groups())
    # 2 minutes at 40/s: about 4,800 samples and 48 poison, all of them accounted for.
    assert stored > 3_000 and rejected == poison > 20 and lost == 0
    assert re.search(r"worker RSS slope after 30s: [+-][\d.]+ MiB/h \(95% interval", done.stdout), done.stdout[-3000:]
