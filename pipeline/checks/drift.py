"""The hourly drift check: each (target, model_version) window against its reference.

The current window is the last `drift_window_minutes` before the check. The reference is,
by default, the same window in each of the last `drift_reference_weeks` weeks
(`same_hour_last_week`: traffic has weekly and daily seasonality, and the same hour of past
weeks is the nearest comparable traffic); or the day before the window (`previous_day`); or
the last week of a pinned `model_version`. The current window is hash-subsampled to
`drift_max_samples`, the reference to `drift_reference_max_samples`: the targeted test reads
all of the reference (a bigger reference pins the base rate of attack-like traffic down, and
power at small attack shares rises with it), the kernel and classifier tests its first
`drift_max_samples` rows. A window with fewer than `drift_min_samples` usable embeddings is
`insufficient_data`, never "no drift".
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import structlog
from clickhouse_connect.driver.client import Client

from pipeline.checks.alerts import raise_alert
from pipeline.checks.findings import CheckStatus, Finding
from pipeline.drift.attacks import AttackProfile
from pipeline.drift.explain import Explanation, explain
from pipeline.drift.methods import DriftContext, DriftInputError, DriftResult, clean_embeddings, run_methods
from pipeline.records import AlertKind, Sample, Source, utc_now
from pipeline.settings import Settings
from pipeline.stats.proportions import adjust_p_values
from pipeline.store import drift as drift_store
from pipeline.store import samples as sample_store
from pipeline.store.alerts import StoredAlert

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Comparison:
    """Every method's result on one pair, corrected across the methods that can alert."""

    results: tuple[DriftResult, ...]
    p_adjusted: dict[str, float]
    drifted: tuple[str, ...]  # significant after correction AND effect >= minimum


@dataclass(frozen=True)
class DriftCheck:
    """The outcome of one (target, model_version) drift check."""

    target: str
    model_version: str
    status: CheckStatus
    n_reference: int
    n_current: int
    comparison: Comparison | None = None
    explanation: Explanation | None = None
    alert: StoredAlert | None = None
    error: str = ""


@dataclass(frozen=True)
class ReferenceWindow:
    kind: str
    periods: tuple[tuple[datetime, datetime], ...]
    model_version: str | None
    label: str


def reference_for(settings: Settings, start: datetime, end: datetime) -> ReferenceWindow:
    """The reference window of a current window [start, end), per `drift_reference`."""
    kind = settings.drift_reference
    if kind == "previous_day":
        periods, mv = ((start - timedelta(days=1), start),), None
    elif kind == "model_version":
        if not settings.drift_reference_model_version:
            raise ValueError("SAFEMON_DRIFT_REFERENCE=model_version needs SAFEMON_DRIFT_REFERENCE_MODEL_VERSION")
        periods, mv = ((start - timedelta(days=7), start),), settings.drift_reference_model_version
    else:
        weeks = range(settings.drift_reference_weeks, 0, -1)
        periods, mv = tuple((start - timedelta(weeks=w), end - timedelta(weeks=w)) for w in weeks), None
    r_start, r_end = periods[-1]
    label = f"{kind} {r_start:%Y-%m-%dT%H:%MZ}..{r_end:%Y-%m-%dT%H:%MZ}"
    if len(periods) > 1:
        label += f" and the {len(periods) - 1} weeks before"
    return ReferenceWindow(kind, periods, mv, label + (f" model_version={mv}" if mv else ""))


def stable_seed(*parts: object) -> int:
    """A seed that is the same for every retry of the same check."""
    return zlib.crc32("|".join(map(str, parts)).encode())


def compare(
    reference: np.ndarray,
    current: np.ndarray,
    methods: Sequence[str],
    *,
    alpha: float,
    min_effect: float,
    permutations: int,
    seed: int,
    attacks: AttackProfile | None,
    reference_cap: int | None = None,
) -> Comparison:
    """Run the methods on clean windows, Holm-correct the alerting ones, apply the minimum effect.

    `reference_cap` limits the rows the costly untargeted methods read (see `run_methods`).
    """
    ctx = DriftContext(alpha=alpha, permutations=permutations, seed=seed, attacks=attacks)
    results = run_methods(list(methods), reference, current, ctx, reference_cap=reference_cap)
    alerting = [r for r in results if r.can_alert]
    adjusted = dict(zip((r.method for r in alerting), adjust_p_values([r.p_value for r in alerting], "holm"), strict=True))
    drifted = tuple(r.method for r in alerting if adjusted[r.method] < alpha and r.effect_size >= min_effect)
    return Comparison(tuple(results), adjusted, drifted)


def _row(check_key: dict, method: str, status: CheckStatus, **values: object) -> dict:
    row = {
        "method": method,
        "status": status,
        "n_reference": 0,
        "n_current": 0,
        "n_invalid": 0,
        "statistic": math.nan,
        "p_value": math.nan,
        "p_adjusted": math.nan,
        "effect_size": math.nan,
        "drifted": False,
        "alerted": False,
        "explanation": "",
        "error": "",
        "checked_at": utc_now(),
    }
    row.update(check_key)
    row.update(values)
    return row


def _samples(client: Client, ids: Sequence[str]) -> tuple[Sample, ...]:
    texts = sample_store.user_texts(client, ids)
    return tuple(Sample(i, "drift", texts[i], "") for i in ids if i in texts)


def _summary(comparison: Comparison, explanation: Explanation, n_ref: int, n_cur: int) -> str:
    parts = [
        f"{r.method}: stat={r.statistic:.4g} p_adj={comparison.p_adjusted[r.method]:.2g} effect={r.effect_size:.3g}"
        if r.can_alert
        else f"{r.method}: effect={r.effect_size:.3g}"
        for r in comparison.results
    ]
    text = f"n={n_cur} vs reference n={n_ref}. " + "; ".join(parts)
    why = explanation.summary()
    return f"{text}. {why}" if why else text


def _explain(
    reference: np.ndarray,
    current: np.ndarray,
    attacks: AttackProfile | None,
    comparison: Comparison,
    ref: tuple[drift_store.EmbeddingWindow, np.ndarray],
    cur: tuple[drift_store.EmbeddingWindow, np.ndarray],
) -> Explanation:
    """Which samples and categories make the current window differ (kept rows only)."""
    if attacks is None:
        return Explanation((), (), (), ())
    (ref_w, ref_keep), (cur_w, cur_keep) = ref, cur
    return explain(
        reference,
        current,
        attacks,
        current_ids=[i for i, k in zip(cur_w.sample_ids, cur_keep, strict=True) if k],
        witness=next((r.details.get("witness") for r in comparison.results if r.method == "mmd"), None),
        reference_categories=[c for c, k in zip(ref_w.categories, ref_keep, strict=True) if k],
        current_categories=[c for c, k in zip(cur_w.categories, cur_keep, strict=True) if k],
    )


def _checked_rows(key: dict, comparison: Comparison, explanation: Explanation, n_invalid: int, *, alerted: bool) -> list[dict]:
    """One drift_results row per method of a completed check."""
    explained = json.dumps(explanation.to_dict())
    return [
        _row(
            key,
            r.method,
            CheckStatus.CHECKED,
            n_reference=r.n_reference,
            n_current=r.n_current,
            n_invalid=n_invalid,
            statistic=r.statistic,
            p_value=r.p_value,
            p_adjusted=comparison.p_adjusted.get(r.method, math.nan),
            effect_size=r.effect_size,
            drifted=r.method in comparison.drifted,
            alerted=alerted and r.method in comparison.drifted,
            explanation=explained,
        )
        for r in comparison.results
    ]


def check_target(
    client: Client,
    settings: Settings,
    target: str,
    model_version: str,
    end: datetime,
    attacks: AttackProfile | None,
    *,
    link: str | None = None,
) -> DriftCheck:
    """Check one target's current window against its reference; store results; decide the alert."""
    start = end - timedelta(minutes=settings.drift_window_minutes)
    ref_window = reference_for(settings, start, end)
    key = {
        "target": target,
        "model_version": model_version,
        "window_start": start,
        "window_end": end,
        "reference_kind": ref_window.kind,
        "reference_label": ref_window.label,
    }
    bound = log.bind(target_name=target, model_version=model_version, window_end=end.isoformat())
    cur_w = drift_store.read_window(client, target, [(start, end)], model_version=model_version, limit=settings.drift_max_samples)
    ref_w = drift_store.read_window(client, target, ref_window.periods, model_version=ref_window.model_version, limit=settings.drift_reference_max_samples)
    try:
        ref_raw, _ = drift_store.as_matrix(ref_w)
        cur_raw, _ = drift_store.as_matrix(cur_w)
        reference, ref_keep = clean_embeddings(ref_raw, "reference") if len(ref_w) else (ref_raw, np.zeros(0, bool))
        current, cur_keep = clean_embeddings(cur_raw, "current") if len(cur_w) else (cur_raw, np.zeros(0, bool))
    except (ValueError, DriftInputError) as exc:
        return _fail(client, key, bound, str(exc), len(ref_w), len(cur_w))
    n_invalid = int((~ref_keep).sum() + (~cur_keep).sum())
    if len(reference) < settings.drift_min_samples or len(current) < settings.drift_min_samples:
        bound.info("drift.insufficient_data", n_reference=len(reference), n_current=len(current), n_invalid=n_invalid)
        drift_store.write_results(
            client,
            [
                _row(key, m, CheckStatus.INSUFFICIENT_DATA, n_reference=len(reference), n_current=len(current), n_invalid=n_invalid)
                for m in settings.drift_methods
            ],
        )
        return DriftCheck(target, model_version, CheckStatus.INSUFFICIENT_DATA, len(reference), len(current))
    try:
        comparison = compare(
            reference,
            current,
            settings.drift_methods,
            alpha=settings.drift_alpha,
            min_effect=settings.drift_min_effect,
            permutations=settings.drift_permutations,
            seed=stable_seed(target, model_version, end),
            attacks=attacks,
            reference_cap=settings.drift_max_samples,
        )
    except DriftInputError as exc:
        return _fail(client, key, bound, str(exc), len(reference), len(current))
    explanation = _explain(reference, current, attacks, comparison, (ref_w, ref_keep), (cur_w, cur_keep))
    finding = Finding(
        source=Source.DRIFT,
        kind=AlertKind.DRIFT,
        target=target,
        suite="",
        model_version=model_version,
        run_id=f"drift {start:%Y-%m-%dT%H:%MZ}..{end:%H:%MZ}",
        baseline_model_version=ref_window.model_version or "",
        baseline_run_id=ref_window.label,
        flagged=comparison.drifted,
        summary=_summary(comparison, explanation, len(reference), len(current)),
        samples=_samples(client, explanation.sample_ids),
        sql=drift_store.reproduce_sql(settings.clickhouse_database, target),
    )
    alert = raise_alert(client, finding, settings, now=end, link=link)
    drift_store.write_results(client, _checked_rows(key, comparison, explanation, n_invalid, alerted=alert is not None))
    bound.info("drift.checked", drifted=list(comparison.drifted), n_reference=len(reference), n_current=len(current))
    return DriftCheck(target, model_version, CheckStatus.CHECKED, len(reference), len(current), comparison, explanation, alert)


def _fail(client: Client, key: dict, bound, message: str, n_ref: int, n_cur: int) -> DriftCheck:
    # Bad stored data must not stop the other targets' checks: record it and move on.
    bound.error("drift.bad_input", error=message)
    drift_store.write_results(client, [_row(key, "input", CheckStatus.ERROR, n_reference=n_ref, n_current=n_cur, error=message)])
    return DriftCheck(key["target"], key["model_version"], CheckStatus.ERROR, n_ref, n_cur, error=message)


def check_all(client: Client, settings: Settings, end: datetime, attacks: AttackProfile | None, *, link: str | None = None) -> list[DriftCheck]:
    """Check every (target, model_version) that sent samples in the current window."""
    start = end - timedelta(minutes=settings.drift_window_minutes)
    return [check_target(client, settings, t, mv, end, attacks, link=link) for t, mv in drift_store.current_keys(client, start, end)]
