"""Head-judge agreement in ClickHouse: a target's audits in a window for the agreement check,
the texts behind its disagreements, and agreement per day for the report.

Everything reads `judge_audits` (migration 0015: the audited rows of probe_results and
sample_scores, narrowed) as the `judge_agreement_by_day` view does: audits the judge answered,
probes by category and samples by the heads' top hazard. The check reads the table itself for
windows that end on the hour, which a daily view cannot give.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from clickhouse_connect.driver.client import Client

from pipeline.store.sql import quoted

_WINDOW = "target = {target:String} AND at >= {start:DateTime64(3, 'UTC')} AND at < {end:DateTime64(3, 'UTC')} AND judge_verdict != ''"


@dataclass(frozen=True)
class AuditCounts:
    """A target's audits in one window: (disagreed, audited) per (source, category), with the
    window's most common model and judge versions."""

    groups: Mapping[tuple[str, str], tuple[int, int]]
    model_version: str
    judge_version: str

    @property
    def audited(self) -> int:
        return sum(n for _, n in self.groups.values())


def window_audits(client: Client, target: str, start: datetime, end: datetime, judge_version: str | None = None) -> AuditCounts:
    """Counts of a target's audits in [start, end) by one judge version (default: the window's most common)."""
    params = {"target": target, "start": start, "end": end}
    models, judges = client.query(
        f"SELECT topK(1)(model_version), topK(1)(judge_version) FROM judge_audits FINAL WHERE {_WINDOW}", parameters=params
    ).result_rows[0]
    if judge_version is None:
        judge_version = judges[0] if judges else ""
    rows = client.query(
        f"""
        SELECT source, category, countIf(head_unsafe != (judge_verdict = 'unsafe')) AS disagreed, count() AS audited
        FROM judge_audits FINAL
        WHERE {_WINDOW} AND judge_version = {{judge_version:String}}
        GROUP BY source, category
        ORDER BY source, category
        """,
        parameters={**params, "judge_version": judge_version},
    ).result_rows
    groups = {(str(s), str(c)): (int(k), int(n)) for s, c, k, n in rows}
    return AuditCounts(groups, models[0] if models else "", judge_version)


def disagreements(
    client: Client, target: str, start: datetime, end: datetime, categories: Mapping[str, Sequence[str]], limit: int = 3
) -> list[tuple[str, str, str, str, str]]:
    """(source, id, category, prompt, response) of audits in [start, end) where the judge and the heads
    disagreed, in the given categories of each source, newest first (texts were redacted when scored)."""
    found = client.query(
        f"""
        SELECT source, run_id, id, category
        FROM judge_audits FINAL
        WHERE {_WINDOW} AND head_unsafe != (judge_verdict = 'unsafe')
          AND has(if(source = 'probe', {{probe:Array(String)}}, {{stream:Array(String)}}), category)
        ORDER BY at DESC
        LIMIT {{limit:UInt32}}
        """,
        parameters={
            "target": target,
            "start": start,
            "end": end,
            "probe": list(categories.get("probe", ())),
            "stream": list(categories.get("stream", ())),
            "limit": limit,
        },
    ).result_rows
    texts = _texts(client, target, [(r, i) for s, r, i, _ in found if s == "probe"], [i for s, _, i, _ in found if s == "stream"])
    return [(s, i, c, *texts.get((r, i), ("", ""))) for s, r, i, c in found]


def _texts(client: Client, target: str, probes: Sequence[tuple[str, str]], samples: Sequence[str]) -> dict[tuple[str, str], tuple[str, str]]:
    """(prompt, response) by (run_id, id): a probe's, or a sample's last user and assistant turns (run_id '')."""
    texts: dict[tuple[str, str], tuple[str, str]] = {}
    if probes:
        rows = client.query(
            "SELECT run_id, probe_id, prompt, response FROM probe_results FINAL "
            "WHERE target = {target:String} AND run_id IN {runs:Array(String)} AND probe_id IN {ids:Array(String)}",
            parameters={"target": target, "runs": sorted({r for r, _ in probes}), "ids": sorted({i for _, i in probes})},
        ).result_rows
        texts.update({(r, i): (p, a) for r, i, p, a in rows})
    if samples:
        rows = client.query(
            "SELECT sample_id, user_text, assistant_text FROM sample_scores FINAL WHERE target = {target:String} AND sample_id IN {ids:Array(String)}",
            parameters={"target": target, "ids": list(samples)},
        ).result_rows
        texts.update({("", i): (p, a) for i, p, a in rows})
    return texts


def targets_in(client: Client, start: datetime, end: datetime) -> list[str]:
    """Targets with answered audits in [start, end), from probes or production samples."""
    rows = client.query(
        "SELECT DISTINCT target FROM judge_audits WHERE at >= {start:DateTime64(3, 'UTC')} AND at < {end:DateTime64(3, 'UTC')} AND judge_verdict != '' ORDER BY target",
        parameters={"start": start, "end": end},
    ).result_rows
    return [str(t) for (t,) in rows]


DAILY_COLUMNS = ("day", "target", "source", "audited", "agreed")


def daily(client: Client, since: datetime, until: datetime) -> list[tuple]:
    """Per day, target and source from `since` to `until` (whole days): audits and agreements,
    summed over categories, model and judge versions (rows as DAILY_COLUMNS)."""
    return client.query(
        """
        SELECT day, target, source, sum(audited) AS audited, sum(agreed) AS agreed
        FROM judge_agreement_by_day
        WHERE day >= toDate({since:DateTime64(3, 'UTC')}) AND day <= toDate({until:DateTime64(3, 'UTC')})
        GROUP BY day, target, source
        ORDER BY target, source, day
        """,
        parameters={"since": since, "until": until},
    ).result_rows


def daily_disagreement(client: Client, target: str, labels: Sequence[str], since: datetime, until: datetime) -> list[tuple[datetime, str, int, int, str]]:
    """(day, `category (source)`, disagreed, audited, model_version) per day for an agreement
    alert's categories: the trend its chart draws."""
    return client.query(
        f"""
        SELECT toDateTime(toDate(at), 'UTC') AS day, concat(category, ' (', source, ')') AS label,
               countIf(head_unsafe != (judge_verdict = 'unsafe')) AS disagreed, count() AS audited, topK(1)(model_version)[1]
        FROM judge_audits FINAL
        WHERE {_WINDOW} AND label IN {{labels:Array(String)}}
        GROUP BY day, label ORDER BY day, label
        """,
        parameters={"target": target, "start": since, "end": until, "labels": list(labels)},
    ).result_rows


def reproduce_sql(database: str, target: str, since: datetime) -> str:
    """What a person pastes into `safemon sql` to see a target's agreement per day behind an agreement alert."""
    return (
        f"SELECT day, source, category, audited, agreed, round(rate, 3) AS rate, round(ci_low, 3) AS ci_low, judge_version\n"
        f"FROM {database}.judge_agreement_by_day WHERE target = {quoted(target)} AND day >= {quoted(f'{since:%Y-%m-%d}')} ORDER BY source, category, day"
    )
