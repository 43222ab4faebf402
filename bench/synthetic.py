"""Synthetic history at scale, generated inside the engine (INSERT ... SELECT FROM numbers()).

Cardinalities follow a busy deployment: 8 targets, 5 suites, a model_version change every
15 days, 200 probes per run, 14 categories; production samples spread over the window with
about 3% flagged. Something is wrong, as in life: the newest model_version of target-3 fails
two categories far more often (cybercrime and hate: 70% attack success against 20%), and an
alert about it is open; target-5's traffic drifts in the last two days; target-6 had a
regression that recovered. Embeddings are left empty (10M x 384 floats would be ~15 GB);
drift checks are hourly per target and method. A judge audits 2% of probe results and samples
and agrees with the heads on 95% of them, on 85% of target-5's drifting traffic. Used by
bench/sql.py and bench/report.py.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from rich.progress import Progress

from pipeline.store.rollups import summarise_all
from pipeline.taxonomy import CATEGORIES, HAZARDS

TARGETS = 8
SUITES = ("core", "jailbreaks", "injection", "leakage", "over_refusal")
PROBES_PER_RUN = 200
BATCH = 1_000_000
REGRESSED_TARGET = 3
REGRESSED_CATEGORIES = (list(CATEGORIES).index("cybercrime"), list(CATEGORIES).index("hate"))
DRIFTING_TARGET = 5


def _array(values) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


def fill_probes(client, rows: int, now: datetime, days: int, progress: Progress) -> None:
    """`rows` probe results in rows / 200 runs spread over `days`, and their run rows."""
    runs = max(1, rows // PROBES_PER_RUN)
    start = int((now - timedelta(days=days)).timestamp())
    span = days * 86400
    run_time = f"toDateTime64({start} + intDiv(r * {span}, {runs}), 3, 'UTC')"
    version = f"concat('v', toString(intDiv(r * {days}, {runs} * 15) + 1))"
    newest = (runs - 1) * days // (runs * 15) + 1
    # target-3's newest version regresses on cybercrime and hate: attack success at 70%, not 20%.
    regressed = f"r % {TARGETS} = {REGRESSED_TARGET} AND intDiv(r * {days}, {runs} * 15) + 1 = {newest} AND p % {len(CATEGORIES)} IN {REGRESSED_CATEGORIES}"
    client.command(
        f"""
        INSERT INTO probe_runs (run_id, target, suite, suite_version, model_version, started_at, finished_at,
            n_probes, n_errors, error_rate, healthy, status, outcome, baseline_run_id, updated_at)
        SELECT concat('run-', toString(r)), concat('target-', toString(r % {TARGETS})), {_array(SUITES)}[r % {len(SUITES)} + 1],
               '1', {version}, {run_time}, {run_time} + INTERVAL 5 MINUTE, {PROBES_PER_RUN}, 0, 0, true, 'evaluated',
               'passed', '', now64(3)
        FROM (SELECT number AS r FROM numbers({runs}))
        """
    )
    task = progress.add_task(f"probe_results ({rows:,})", total=rows)
    categories = _array(CATEGORIES)
    for first in range(0, rows, BATCH):
        count = min(BATCH, rows - first)
        client.command(
            f"""
            INSERT INTO probe_results (run_id, run_started_at, target, suite, model_version, probe_id, category, expect,
                tags, prompt, response, latency_ms, refused, refusal_score, verdict, scored_at, head_verdict, judge_role, judge_verdict, judge_version)
            SELECT concat('run-', toString(r)), {run_time}, concat('target-', toString(r % {TARGETS})),
                   {_array(SUITES)}[r % {len(SUITES)} + 1], {version}, concat('p', toString(p)),
                   {categories}[p % {len(CATEGORIES)} + 1], if(p % {len(CATEGORIES)} = {len(CATEGORIES) - 1}, 'comply', 'refuse'),
                   ['safemon'], concat('prompt ', toString(p)), concat('response ', toString(cityHash64(r, p) % 1000)),
                   50 + cityHash64(r, p) % 900, v < 80, least(v, 99) / 100,
                   multiIf(cityHash64(r, p, 7) % 1000 < 5, 'error', v >= 80, if(p % {len(CATEGORIES)} = {len(CATEGORIES) - 1}, 'complied_ok', 'attack_success'),
                           if(p % {len(CATEGORIES)} = {len(CATEGORIES) - 1}, 'over_refusal', 'refused')) AS verdict_,
                   now64(3), verdict_, if(cityHash64(r, p, 31) % 50 = 0, 'audit', '') AS role_,
                   if(role_ = 'audit', if((cityHash64(r, p, 33) % 100 < 95) = (verdict_ = 'attack_success'), 'unsafe', 'safe'), ''), if(role_ = 'audit', 'guard-1', '')
            FROM (SELECT intDiv(number, {PROBES_PER_RUN}) AS r, number % {PROBES_PER_RUN} AS p,
                         cityHash64(intDiv(number, {PROBES_PER_RUN}), number % {PROBES_PER_RUN}) % 100 + if({regressed}, 50, 0) AS v
                  FROM numbers({first}, {count}))
            """,
            settings={"max_insert_threads": 2},
        )
        progress.advance(task, count)
    # Written around write_results, so the per-run counts are computed here, once.
    summarise_all(client)


def fill_samples(client, rows: int, now: datetime, days: int, progress: Progress) -> None:
    """`rows` scored production samples spread over `days`."""
    start = int((now - timedelta(days=days)).timestamp())
    span = days * 86400
    hazards = _array(HAZARDS)
    # The judge agrees with 95% of the audited verdicts; with 85% on target-5's last two days.
    agree = f"if(number % {TARGETS} = {DRIFTING_TARGET} AND number >= {rows} - intDiv({rows} * 2, {days}), 85, 95)"
    task = progress.add_task(f"sample_scores ({rows:,})", total=rows)
    for first in range(0, rows, BATCH):
        count = min(BATCH, rows - first)
        client.command(
            f"""
            INSERT INTO sample_scores (sample_id, occurred_at, target, model_version, conversation_id, n_turns, user_text,
                assistant_text, refused, refusal_score, violation_scores, violation_score, violation_category, flagged_categories,
                jailbreak_score, jailbreak_family, injection_score, injection_family, source_topic, source_partition, source_offset, scored_at,
                head_verdict, judge_role, judge_verdict, judge_version)
            SELECT toString(generateUUIDv4(number)), toDateTime64({start} + intDiv(number * {span}, {rows}), 3, 'UTC'),
                   concat('target-', toString(number % {TARGETS})), concat('v', toString(intDiv(number * {days}, {rows} * 15) + 1)),
                   toString(intDiv(number, 3)), 2, 'user text', 'assistant text', number % 7 = 0, 0.1,
                   mapFromArrays({hazards}, arrayMap(i -> toFloat32((cityHash64(number, i) % 1000) / 1000), range({len(HAZARDS)}))),
                   0.5, {hazards}[number % {len(HAZARDS)} + 1],
                   arrayFilter((h, i) -> (cityHash64(number, i) % 1000) >= 997, {hazards}, range({len(HAZARDS)})),
                   toFloat32((cityHash64(number, 91) % 1000) / 1000), 'dan', toFloat32((cityHash64(number, 92) % 1000) / 1000),
                   'ignore_previous', 'conversations.v1', number % 8, intDiv(number, 8), now64(3),
                   if(cityHash64(number, 32) % 10 = 0, 'unsafe', 'safe') AS head_, if(cityHash64(number, 31) % 50 = 0, 'audit', '') AS role_,
                   if(role_ = 'audit', if((cityHash64(number, 33) % 100 < {agree}) = (head_ = 'unsafe'), 'unsafe', 'safe'), ''), if(role_ = 'audit', 'guard-1', '')
            FROM numbers({first}, {count})
            """,
            settings={"max_insert_threads": 2},
        )
        progress.advance(task, count)


def fill_drift(client, now: datetime, days: int) -> None:
    """Hourly drift checks per target and method; target-5's mmd and attack_share checks of the
    last two days find a shift."""
    start = int((now - timedelta(days=days)).timestamp())
    hours = days * 24
    end = f"toDateTime64({start} + intDiv(number, {TARGETS} * 3) * 3600, 3, 'UTC')"
    method = f"['mmd', 'c2st', 'attack_share'][intDiv(number, {TARGETS}) % 3 + 1]"
    drifting = f"number % {TARGETS} = {DRIFTING_TARGET} AND {method} != 'c2st' AND intDiv(number, {TARGETS} * 3) >= {hours - 48}"
    client.command(
        f"""
        INSERT INTO drift_results (target, model_version, method, window_start, window_end, reference_kind, status,
            n_reference, n_current, p_value, p_adjusted, effect_size, drifted, checked_at)
        SELECT concat('target-', toString(number % {TARGETS})), 'v1', {method}, {end} - INTERVAL 1 HOUR, {end},
               'same_hour_last_week', 'checked', 2000, 2000,
               if({drifting}, 0.0005, (cityHash64(number) % 1000) / 1000),
               if({drifting}, 0.0015, least(1, (cityHash64(number) % 1000) / 300)),
               if({drifting}, 0.05, 0.01), {drifting}, now64(3)
        FROM numbers({TARGETS * 3 * hours})
        """
    )


def fill_alerts(client, now: datetime) -> None:
    """The alerts such a history raises: target-3's regression (open), and target-6's regression
    and its recovery a day later (closed)."""
    rows = []
    for target, kind, age in ((REGRESSED_TARGET, "regression", timedelta(hours=20)), (6, "regression", timedelta(days=9)), (6, "recovery", timedelta(days=8))):
        categories = [list(CATEGORIES)[i] for i in REGRESSED_CATEGORIES] if target == REGRESSED_TARGET else ["harassment"]
        at = now - age
        rows.append(
            dict(
                alert_id=f"{kind}-{target}-{age.total_seconds():.0f}",
                fingerprint=f"regression:probe:target-{target}:core",
                kind=kind,
                severity="critical" if kind == "regression" else "info",
                source="probe",
                target=f"target-{target}",
                suite="core",
                model_version="v2",
                categories=categories,
                title=f"target-{target} / core: {kind} in {', '.join(categories)}",
                created_at=at,
                status="sent",
                updated_at=at,
            )
        )
    client.insert("alerts", [list(row.values()) for row in rows], column_names=list(rows[0]))
