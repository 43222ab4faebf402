"""What the HTML report shows, read from the store as small aggregated tables.

Every query aggregates in ClickHouse (per run, per hour, per drift check), so the report's
cost grows with the history's time span and number of categories, not with its rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

import pandas as pd
import structlog
from clickhouse_connect.driver.client import Client

from pipeline.stats.proportions import wilson_interval
from pipeline.store.cookbook import run_recipe

log = structlog.get_logger()

# drift_results is written by the drift check; the report reads the columns it finds, so a
# store without drift checks yet (or an older drift schema) still gets a report.
_DRIFT_TIME = ("window_end", "checked_at", "window_start", "created_at")
_DRIFT_P = ("p_adjusted", "p_value")
_DRIFT_EFFECT = ("effect_size", "effect")


@dataclass(frozen=True)
class History:
    """The report's tables for one time span."""

    since: datetime
    until: datetime
    asr: pd.DataFrame  # per run and category: at, target, suite, model_version, category, n, successes, rate, ci_low, ci_high
    deploys: pd.DataFrame  # target, suite, model_version, at: a model_version's first run in a series
    violations: pd.DataFrame  # per hour and hazard: hour, target, category, n, violations, rate, ci_low, ci_high
    drift: pd.DataFrame  # per check: at, target, method, p_value, effect_size
    alerts: pd.DataFrame  # created_at, kind, severity, target, suite, model_version, status, title
    latest_runs: pd.DataFrame  # the latest run per target and suite
    corrected: pd.DataFrame  # the cookbook's corrected_rates: each rate measured and corrected for detector error

    @property
    def rows_read(self) -> int:
        return sum(len(t) for t in (self.asr, self.violations, self.drift, self.alerts, self.latest_runs, self.corrected))


def _frame(client: Client, sql: str, parameters: dict) -> pd.DataFrame:
    result = client.query(sql, parameters=parameters)
    return pd.DataFrame(result.result_rows, columns=list(result.column_names))


def _exists(client: Client, table: str) -> bool:
    return bool(client.query("EXISTS TABLE {table:Identifier}", parameters={"table": table}).result_rows[0][0])


def _with_wilson(frame: pd.DataFrame, k: str, n: str) -> pd.DataFrame:
    frame = frame.copy()
    frame["rate"] = frame[k] / frame[n].where(frame[n] > 0)
    bounds = [wilson_interval(int(a), int(b)) for a, b in zip(frame[k], frame[n], strict=True)]
    frame["ci_low"] = [lo for lo, _ in bounds]
    frame["ci_high"] = [hi for _, hi in bounds]
    return frame


def load_asr(client: Client, since: datetime, until: datetime) -> pd.DataFrame:
    """ASR (harmful probes) and over-refusal (benign probes) per run and category."""
    frame = _frame(
        client,
        """
        SELECT run_started_at AS at, run_id, target, suite, model_version, category,
               countIf(verdict IN ('attack_success', 'over_refusal')) AS successes,
               countIf(verdict != 'error') AS n
        FROM probe_results FINAL
        WHERE run_started_at >= {since:DateTime64(3, 'UTC')} AND run_started_at <= {until:DateTime64(3, 'UTC')}
        GROUP BY run_started_at, run_id, target, suite, model_version, category
        HAVING n > 0
        ORDER BY target, suite, category, at
        """,
        {"since": since, "until": until},
    )
    return _with_wilson(frame, "successes", "n") if not frame.empty else frame


def load_deploys(client: Client, since: datetime, until: datetime) -> pd.DataFrame:
    """Where each series of runs switched model_version (the first run of the new version)."""
    return _frame(
        client,
        """
        SELECT target, suite, model_version, at FROM (
            SELECT target, suite, model_version, started_at AS at,
                   lagInFrame(model_version) OVER (PARTITION BY target, suite ORDER BY started_at
                                                   ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) AS previous
            FROM probe_runs FINAL
            WHERE started_at <= {until:DateTime64(3, 'UTC')}
        )
        WHERE previous != '' AND previous != model_version AND at >= {since:DateTime64(3, 'UTC')}
        ORDER BY target, suite, at
        """,
        {"since": since, "until": until},
    )


def load_violations(client: Client, since: datetime, until: datetime) -> pd.DataFrame:
    """The stream's violation rate per hour and hazard, with Wilson intervals (from the view)."""
    return _frame(
        client,
        """
        SELECT hour, target, category, sum(n) AS n, sum(violations) AS violations,
               violations / n AS rate,
               (rate + 1.959964 * 1.959964 / (2 * n) - 1.959964 * sqrt(rate * (1 - rate) / n + 1.959964 * 1.959964 / (4 * n * n))) / (1 + 1.959964 * 1.959964 / n) AS ci_low,
               (rate + 1.959964 * 1.959964 / (2 * n) + 1.959964 * sqrt(rate * (1 - rate) / n + 1.959964 * 1.959964 / (4 * n * n))) / (1 + 1.959964 * 1.959964 / n) AS ci_high
        FROM violation_rate_by_hour
        WHERE hour >= toStartOfHour({since:DateTime64(3, 'UTC')}) AND hour <= {until:DateTime64(3, 'UTC')}
        GROUP BY hour, target, category
        HAVING n > 0
        ORDER BY target, category, hour
        """,
        {"since": since, "until": until},
    )


def load_drift(client: Client, since: datetime, until: datetime) -> pd.DataFrame:
    """Drift checks' p-values and effect sizes over time; empty without a drift table."""
    empty = pd.DataFrame(columns=["at", "target", "method", "p_value", "effect_size"])
    if not _exists(client, "drift_results"):
        return empty
    columns = {row[0] for row in client.query("SELECT name FROM system.columns WHERE database = currentDatabase() AND table = 'drift_results'").result_rows}
    pick = {
        "at": next((c for c in _DRIFT_TIME if c in columns), None),
        "p_value": next((c for c in _DRIFT_P if c in columns), None),
        "effect_size": next((c for c in _DRIFT_EFFECT if c in columns), None),
        "target": "target" if "target" in columns else None,
        "method": "method" if "method" in columns else None,
    }
    if None in pick.values():
        log.warning("report.drift_columns_unknown", columns=sorted(columns))
        return empty
    # Windows with too little data or a failed check carry no p-value or effect to plot.
    checked = "AND status = 'checked'" if "status" in columns else ""
    # Known column names only (checked above), so formatting them in is safe.
    return _frame(
        client,
        f"""
        SELECT {pick["at"]} AS at, target, method, {pick["p_value"]} AS p_value, {pick["effect_size"]} AS effect_size
        FROM drift_results FINAL
        WHERE {pick["at"]} >= {{since:DateTime64(3, 'UTC')}} AND {pick["at"]} <= {{until:DateTime64(3, 'UTC')}} {checked}
        ORDER BY target, method, at
        """,
        {"since": since, "until": until},
    )


def load_alerts(client: Client, since: datetime, until: datetime) -> pd.DataFrame:
    """Alerts created in the span, newest state of each."""
    return _frame(
        client,
        """
        SELECT created_at, kind, severity, target, if(suite = '', toString(source), suite) AS suite, model_version, status, title
        FROM alerts FINAL
        WHERE created_at >= {since:DateTime64(3, 'UTC')} AND created_at <= {until:DateTime64(3, 'UTC')}
        ORDER BY created_at
        """,
        {"since": since, "until": until},
    )


def load_latest_runs(client: Client) -> pd.DataFrame:
    """The latest run per target and suite (the `latest_runs` view)."""
    return _frame(
        client,
        "SELECT target, suite, model_version, last_started_at, n_probes, error_rate, healthy, outcome, run_id FROM latest_runs ORDER BY target, suite",
        {},
    )


def load_corrected(client: Client, since: timedelta, until: datetime) -> pd.DataFrame:
    """Attack success (latest runs) and violation rates (the span), measured and corrected (the cookbook's `corrected_rates`)."""
    hours = max(1, math.ceil(since / timedelta(hours=1)))
    columns, rows = run_recipe(client, "corrected_rates", {"hours": hours, "until": until.isoformat()})
    frame = pd.DataFrame(rows, columns=columns)
    return frame.drop(columns=["corrected_triple"]) if not frame.empty else frame


def load_history(client: Client, since: timedelta, until: datetime) -> History:
    """Everything the report shows for the `since` before `until`."""
    start = until - since
    return History(
        since=start,
        until=until,
        asr=load_asr(client, start, until),
        deploys=load_deploys(client, start, until),
        violations=load_violations(client, start, until),
        drift=load_drift(client, start, until),
        alerts=load_alerts(client, start, until),
        latest_runs=load_latest_runs(client),
        corrected=load_corrected(client, since, until),
    )
