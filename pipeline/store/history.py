"""What the HTML report shows, read from the store as small aggregated tables.

Probe rates come from the per-run counts of migration 0012 (probe_run_categories), never from
every probe result; stream rates and drift checks are aggregated in ClickHouse per time bucket,
chosen so that a chart holds a few dozen points per line whatever the span. The report's cost
grows with runs, buckets and categories, not with the rows behind them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

import pandas as pd
import structlog
from clickhouse_connect.driver.client import Client
from statsmodels.stats.proportion import proportion_confint

from pipeline.store import agreement as agreement_store
from pipeline.store.cookbook import run_recipe

log = structlog.get_logger()

# drift_results is written by the drift check; the report reads the columns it finds, so a
# store without drift checks yet (or an older drift schema) still gets a report.
_DRIFT_TIME = ("window_end", "checked_at", "window_start", "created_at")
_DRIFT_P = ("p_adjusted", "p_value")
_DRIFT_EFFECT = ("effect_size", "effect")


# Time buckets for charts over a span: the smallest that leaves at most MAX_POINTS per series, so
# a month reads as days and an afternoon as hours.
BUCKETS = (timedelta(hours=1), timedelta(hours=3), timedelta(hours=6), timedelta(hours=12), timedelta(days=1), timedelta(weeks=1))
MAX_POINTS = 45
# Up to this many runs per target and suite, the probe charts show every run as its own point.
MAX_RUN_POINTS = 60
# The corrected stream rates describe the current state: the last week of the span at most.
CORRECTED_STREAM = timedelta(days=7)


def bucket_for(span: timedelta) -> timedelta:
    """The chart bucket for `span`: hours for a day, days for a month."""
    return next((b for b in BUCKETS if span / b <= MAX_POINTS), BUCKETS[-1])


@dataclass(frozen=True)
class History:
    """The report's tables for one time span."""

    since: datetime
    until: datetime
    bucket: timedelta | None  # the probe charts' time bucket; None: one point per run
    asr: pd.DataFrame  # per bucket (or run) and category: at, target, suite, model_version, category, n, successes, rate, ci_low, ci_high
    deploys: pd.DataFrame  # target, suite, model_version, at: a model_version's first run in a series
    grid: pd.DataFrame  # per target and category: the latest runs against the span's earlier runs (cur_k, cur_n, base_k, base_n)
    violations: pd.DataFrame  # per bucket and flagged hazard: at, target, category, n, violations, rate, ci_low, ci_high
    drift: pd.DataFrame  # per bucket (its middle) or per check: at, target, method, p_value, effect_size (medians per bucket)
    drift_latest: pd.DataFrame  # each target's and method's latest check: at, target, method, p_value, effect_size
    alerts: pd.DataFrame  # created in the span: created_at, kind, severity, target, suite, model_version, status, title, fingerprint, categories
    open_alerts: pd.DataFrame  # the newest alert of each condition (fingerprint) up to `until`, where it is not a recovery
    latest_runs: pd.DataFrame  # the latest run per target and suite
    corrected: pd.DataFrame  # the cookbook's corrected_rates: each rate measured and corrected for detector error
    agreement: pd.DataFrame  # per day, target and source: day, target, source, audited, agreed, rate, ci_low, ci_high
    first_failures: pd.DataFrame  # scripted conversations: target, suite, model_version, turn (0: none failed), n

    @property
    def rows_read(self) -> int:
        tables = (
            self.asr,
            self.grid,
            self.violations,
            self.drift,
            self.drift_latest,
            self.alerts,
            self.latest_runs,
            self.corrected,
            self.agreement,
            self.first_failures,
        )
        return sum(len(t) for t in tables)


def _frame(client: Client, sql: str, parameters: dict) -> pd.DataFrame:
    result = client.query(sql, parameters=parameters)
    return pd.DataFrame(result.result_rows, columns=list(result.column_names))


def _exists(client: Client, table: str) -> bool:
    return bool(client.query("EXISTS TABLE {table:Identifier}", parameters={"table": table}).result_rows[0][0])


def with_wilson(frame: pd.DataFrame, k: str, n: str) -> pd.DataFrame:
    """`frame` with rate, ci_low and ci_high (95% Wilson) from the counts in columns `k` of `n` (n > 0)."""
    frame = frame.copy()
    frame["rate"] = frame[k] / frame[n]
    low, high = proportion_confint(frame[k].to_numpy(), frame[n].to_numpy(), alpha=0.05, method="wilson")
    frame["ci_low"] = pd.Series(low, index=frame.index).clip(lower=0.0)
    frame["ci_high"] = pd.Series(high, index=frame.index).clip(upper=1.0)
    return frame


_SPAN = "run_started_at >= {since:DateTime64(3, 'UTC')} AND run_started_at <= {until:DateTime64(3, 'UTC')}"


def _extent(client: Client, table: str, column: str, since: datetime, until: datetime) -> timedelta:
    # Known table and column names only (the callers'), so formatting them in is safe.
    first, last = client.query(
        f"SELECT min({column}), max({column}) FROM {table} WHERE {column} >= {{since:DateTime64(3, 'UTC')}} AND {column} <= {{until:DateTime64(3, 'UTC')}}",
        parameters={"since": since, "until": until},
    ).result_rows[0]
    return last - first if first is not None and last is not None and last > first else timedelta(0)


def _middle(column: str) -> str:
    """The middle of `column`'s bucket ({bucket:UInt32} seconds): where the bucket's point belongs on a time axis."""
    return f"toStartOfInterval({column}, toIntervalSecond({{bucket:UInt32}})) + toIntervalSecond(intDiv({{bucket:UInt32}}, 2))"


def probe_bucket(client: Client, since: datetime, until: datetime) -> timedelta | None:
    """None (a point per run) while every series has few runs in the span, else the bucket for
    the time the runs cover."""
    most = client.query(
        "SELECT max(runs) FROM (SELECT count() AS runs FROM probe_runs FINAL "
        "WHERE started_at >= {since:DateTime64(3, 'UTC')} AND started_at <= {until:DateTime64(3, 'UTC')} GROUP BY target, suite)",
        parameters={"since": since, "until": until},
    ).result_rows
    if not most or (most[0][0] or 0) <= MAX_RUN_POINTS:
        return None
    return bucket_for(_extent(client, "probe_runs", "started_at", since, until))


def load_asr(client: Client, since: datetime, until: datetime, bucket: timedelta | None = None) -> pd.DataFrame:
    """ASR (harmful probes) and over-refusal (benign probes) per category, per run or per time
    bucket, from the per-run counts (probe_run_categories)."""
    at = "min(run_started_at)" if bucket is None else _middle("run_started_at")
    run = "run_id" if bucket is None else "''"
    frame = _frame(
        client,
        f"""
        SELECT {at} AS at, {run} AS run_id, target, suite, model_version, category,
               sum(attack_successes + over_refusals) AS successes, sum(answered) AS n, count() AS runs
        FROM probe_run_categories FINAL
        WHERE {_SPAN}
        GROUP BY {"run_id" if bucket is None else "at"}, target, suite, model_version, category
        HAVING n > 0
        ORDER BY target, suite, category, at
        """,
        {"since": since, "until": until, "bucket": int(bucket.total_seconds()) if bucket else 0},
    )
    return with_wilson(frame, "successes", "n") if not frame.empty else frame


def load_grid(client: Client, since: datetime, until: datetime) -> pd.DataFrame:
    """Per target and category: the latest run of each of its suites (current) against the
    span's earlier runs (baseline), as success and answered counts."""
    return _frame(
        client,
        f"""
        SELECT target, category, any(expect) AS expect,
               sumIf(attack_successes + over_refusals, latest) AS cur_k, sumIf(answered, latest) AS cur_n,
               sumIf(attack_successes + over_refusals, NOT latest) AS base_k, sumIf(answered, NOT latest) AS base_n
        FROM (
            SELECT target, category, expect, attack_successes, over_refusals, answered,
                   (target, suite, run_started_at) IN (
                       SELECT target, suite, max(run_started_at) FROM probe_run_categories WHERE {_SPAN} GROUP BY target, suite
                   ) AS latest
            FROM probe_run_categories FINAL
            WHERE {_SPAN}
        )
        GROUP BY target, category
        ORDER BY target, category
        """,
        {"since": since, "until": until},
    )


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


def load_violations(client: Client, since: datetime, until: datetime, bucket: timedelta) -> pd.DataFrame:
    """The stream's violation rate per time bucket and hazard, with Wilson intervals: of the
    samples scored in the bucket (each is scored on every hazard), the share flagged for it.
    Hazards never flagged in the span have no rows."""
    counted = _frame(
        client,
        f"""
        SELECT {_middle("occurred_at")} AS at, target, count() AS n,
               sumMap(flagged_categories, arrayMap(c -> toUInt64(1), flagged_categories)) AS flagged
        FROM sample_scores FINAL
        WHERE occurred_at >= {{since:DateTime64(3, 'UTC')}} AND occurred_at <= {{until:DateTime64(3, 'UTC')}}
        GROUP BY at, target
        ORDER BY target, at
        """,
        {"since": since, "until": until, "bucket": int(bucket.total_seconds())},
    )
    columns = ["at", "target", "category", "n", "violations", "rate", "ci_low", "ci_high"]
    if counted.empty:
        return pd.DataFrame(columns=columns)
    flagged = pd.DataFrame(
        [
            (at, target, c, k)
            for at, target, (cats, ks) in zip(counted["at"], counted["target"], counted["flagged"], strict=True)
            for c, k in zip(cats, ks, strict=True)
        ],
        columns=["at", "target", "category", "violations"],
    )
    if flagged.empty:
        return pd.DataFrame(columns=columns)
    # Every bucket of a target gets a row for each hazard flagged there in the span (0 where none).
    hazards = flagged[["target", "category"]].drop_duplicates()
    frame = counted[["at", "target", "n"]].merge(hazards, on="target").merge(flagged, on=["at", "target", "category"], how="left")
    frame["violations"] = frame["violations"].fillna(0).astype("int64")
    return with_wilson(frame, "violations", "n")[columns].sort_values(["target", "category", "at"], ignore_index=True)


def _drift_columns(client: Client) -> dict[str, str | None] | None:
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
        return None
    # Windows with too little data or a failed check carry no p-value or effect to plot.
    pick["checked"] = "AND status = 'checked'" if "status" in columns else ""
    return pick


def load_drift(client: Client, since: datetime, until: datetime, bucket: timedelta | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Drift checks over time (per bucket: each method's median p-value and effect size; per
    check without a bucket) and each target's and method's latest check. Empty
    without a drift table."""
    columns = ["at", "target", "method", "p_value", "effect_size"]
    empty = pd.DataFrame(columns=columns)
    pick = _drift_columns(client) if _exists(client, "drift_results") else None
    if pick is None:
        return empty, empty.copy()
    # Known column names only (checked above), so formatting them in is safe.
    at, p, effect = pick["at"], pick["p_value"], pick["effect_size"]
    where = f"WHERE {at} >= {{since:DateTime64(3, 'UTC')}} AND {at} <= {{until:DateTime64(3, 'UTC')}} {pick['checked']}"
    parameters = {"since": since, "until": until, "bucket": int(bucket.total_seconds()) if bucket else 0}
    if bucket is None:
        over_time = _frame(
            client,
            f"SELECT {at} AS at, target, method, {p} AS p_value, {effect} AS effect_size FROM drift_results FINAL {where} ORDER BY target, method, at",
            parameters,
        )
    else:
        over_time = _frame(
            client,
            f"""
            SELECT {_middle(str(at))} AS at, target, method, median({p}) AS p_value, median({effect}) AS effect_size
            FROM drift_results FINAL {where}
            GROUP BY at, target, method ORDER BY target, method, at
            """,
            parameters,
        )
    latest = _frame(
        client,
        f"""
        SELECT max({at}) AS at, target, method, argMax({p}, {at}) AS p_value, argMax({effect}, {at}) AS effect_size
        FROM drift_results FINAL {where}
        GROUP BY target, method ORDER BY target, method
        """,
        parameters,
    )
    return over_time, latest


def load_alerts(client: Client, since: datetime, until: datetime) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Alerts created in the span (newest state of each), and the open ones: each condition's
    (fingerprint's) newest alert up to `until`, unless it is a recovery."""
    every = _frame(
        client,
        """
        SELECT created_at, kind, severity, target, if(suite = '', toString(source), suite) AS suite, model_version, status, title,
               fingerprint, categories
        FROM alerts FINAL
        WHERE created_at <= {until:DateTime64(3, 'UTC')}
        ORDER BY created_at
        """,
        {"until": until},
    )
    if every.empty:
        return every, every.copy()
    in_span = every[pd.to_datetime(every.created_at, utc=True) >= pd.Timestamp(since)].reset_index(drop=True)
    newest = every.groupby("fingerprint", sort=False).tail(1)
    return in_span, newest[newest.kind != "recovery"].sort_values("created_at", ascending=False, ignore_index=True)


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


def load_agreement(client: Client, since: datetime, until: datetime) -> pd.DataFrame:
    """Head-judge agreement on the audited verdicts per day, target and source, with Wilson intervals."""
    frame = pd.DataFrame(agreement_store.daily(client, since, until), columns=list(agreement_store.DAILY_COLUMNS))
    if frame.empty:
        return frame
    frame["day"] = pd.to_datetime(frame["day"])  # a date axis, as the other charts have
    return with_wilson(frame, "agreed", "audited")


def load_first_failures(client: Client, since: datetime, until: datetime) -> pd.DataFrame:
    """How many scripted conversations of the span failed first at each turn (0: none did), per
    target, suite and model_version; errors and unscored ones left out."""
    if not _exists(client, "probe_turns"):
        return pd.DataFrame(columns=["target", "suite", "model_version", "turn", "n"])
    return _frame(
        client,
        """
        SELECT target, suite, model_version, first_failure_turn AS turn, count() AS n
        FROM probe_results FINAL
        WHERE run_started_at >= {since:DateTime64(3, 'UTC')} AND run_started_at < {until:DateTime64(3, 'UTC')}
          AND (target, suite) IN (
              SELECT DISTINCT target, suite FROM probe_turns
              WHERE run_started_at >= {since:DateTime64(3, 'UTC')} AND run_started_at < {until:DateTime64(3, 'UTC')})
          AND (run_id, probe_id) IN (
              SELECT run_id, probe_id FROM probe_turns
              WHERE turn = 1 AND run_started_at >= {since:DateTime64(3, 'UTC')} AND run_started_at < {until:DateTime64(3, 'UTC')})
          AND verdict NOT IN ('error', 'unscored')
        GROUP BY target, suite, model_version, turn
        ORDER BY target, suite, model_version, turn
        """,
        {"since": since, "until": until},
    )


def load_history(client: Client, since: timedelta, until: datetime) -> History:
    """Everything the report shows for the `since` before `until`."""
    start = until - since
    probes = probe_bucket(client, start, until)
    # Buckets follow the time the data covers, not the span asked for: six hours of samples in a
    # month's report are drawn per hour.
    stream = bucket_for(_extent(client, "sample_scores", "occurred_at", start, until))
    drift_bucket = None
    if _exists(client, "drift_results") and (pick := _drift_columns(client)) is not None:
        covered = _extent(client, "drift_results", str(pick["at"]), start, until)
        drift_bucket = bucket_for(covered) if covered > timedelta(days=2) else None
    drift, drift_latest = load_drift(client, start, until, drift_bucket)
    alerts, open_alerts = load_alerts(client, start, until)
    return History(
        since=start,
        until=until,
        bucket=probes,
        asr=load_asr(client, start, until, probes),
        deploys=load_deploys(client, start, until),
        grid=load_grid(client, start, until),
        violations=load_violations(client, start, until, stream),
        drift=drift,
        drift_latest=drift_latest,
        alerts=alerts,
        open_alerts=open_alerts,
        latest_runs=load_latest_runs(client),
        corrected=load_corrected(client, min(since, CORRECTED_STREAM), until),
        agreement=load_agreement(client, start, until),
        first_failures=load_first_failures(client, start, until),
    )
