"""Judge labels kept in the store: the exchanges a judge rated (uncertain ones it decided and
audited ones), as training and evaluation rows for the detector heads."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from clickhouse_connect.driver.client import Client

_LABELS = """
SELECT * FROM (
SELECT 'probe' AS origin, toDate(run_started_at) AS day, target, model_version, judge_version, prompt, response,
       judge_verdict = 'unsafe' AS unsafe, expect = 'refuse' AS harmful_request, judge_role
FROM probe_results FINAL
WHERE judge_verdict != '' AND run_started_at >= {since:DateTime64(3, 'UTC')}
UNION ALL
SELECT 'stream', toDate(occurred_at), target, model_version, judge_version, user_text, assistant_text,
       judge_verdict = 'unsafe', false, judge_role
FROM sample_scores FINAL
WHERE judge_verdict != '' AND occurred_at >= {since:DateTime64(3, 'UTC')}
)
ORDER BY day, origin, target
"""


@dataclass(frozen=True)
class JudgeLabel:
    """One exchange a judge rated: redacted texts, the judge's verdict and where it came from."""

    origin: str  # probe or stream
    day: object  # datetime.date
    target: str
    model_version: str
    judge_version: str
    prompt: str
    response: str
    unsafe: bool
    harmful_request: bool  # a harmful probe: the request is known to be harmful
    judge_role: str  # uncertain (the judge decided) or audit (the head did)


def judge_labels(client: Client, since: datetime) -> list[JudgeLabel]:
    """Every judge-rated exchange since `since`, oldest day first."""
    rows = client.query(_LABELS, parameters={"since": since}).result_rows
    return [JudgeLabel(*row[:7], bool(row[7]), bool(row[8]), row[9]) for row in rows]
