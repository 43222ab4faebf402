"""Alerts built by hand, for tests of what renders, stores and delivers them."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pipeline.records import Alert, AlertKind, Severity, Source, utc_now


def make_alert(**changes: Any) -> Alert:
    """A probe regression alert on target `prod`, suite `core`; any field can be changed."""
    alert = Alert(
        alert_id="a-1",
        fingerprint="regression:prod:core",
        kind=AlertKind.REGRESSION,
        severity=Severity.CRITICAL,
        source=Source.PROBE,
        target="prod",
        suite="core",
        model_version="v2",
        run_id="run-42",
        title="ASR regression on prod",
        summary="cybercrime regressed",
        created_at=utc_now(),
        categories=("cybercrime",),
    )
    return replace(alert, **changes)
