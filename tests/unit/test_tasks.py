"""What task bodies read from Airflow's context."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

from pipeline.tasks import window_end

TRIGGERED = datetime(2026, 12, 3, 9, 46, 43, tzinfo=UTC)


def test_a_manual_run_without_a_data_interval_ends_its_window_when_it_was_triggered() -> None:
    # Airflow 3's Trigger button (logical_date null): no data interval and no logical date in the context.
    assert window_end({"dag_run": SimpleNamespace(run_after=TRIGGERED)}) == TRIGGERED


def test_a_scheduled_run_ends_its_window_at_its_data_interval_end() -> None:
    end = datetime(2026, 12, 3, 9, tzinfo=UTC)
    context = {"data_interval_end": end, "logical_date": end, "dag_run": SimpleNamespace(run_after=TRIGGERED)}
    assert window_end(context) == end
    assert window_end({"logical_date": end, "dag_run": SimpleNamespace(run_after=TRIGGERED)}) == end
