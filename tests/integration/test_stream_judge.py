"""The judge cascade on the stream: a worker with a recorded judge over real HTTP sends uncertain
answers to it within its hourly budget; what the budget drops is stored unscored, counted, and out
of every rate's denominator; nothing is lost or stored twice."""

from __future__ import annotations

import json
import time
import urllib.request
from importlib.resources import files

import pytest

from pipeline.judge.standin import Fault, JudgeStandin
from tests.support.kafka_broker import free_port
from tests.support.stream_worker import committed_offsets, make_sample, produce_samples, query, start_worker, stored_counts, worker_env

pytestmark = pytest.mark.kafka

BAND = (0.2, 0.8)
# Per hour: paced at one call every 10 seconds, with 10 seconds' worth (1) to start with.
BUDGET_PER_HOUR = 360
BUDGET = 1


def _demo_samples() -> list:
    """Every recorded demo answer (two versions of one model) as a one-exchange conversation."""
    lines = (json.loads(line) for line in (files("pipeline.demo") / "recording.jsonl").read_text().splitlines() if line.strip())
    return [make_sample(r["prompt"], r["response"], model_version=r["model"]) for r in lines]


def _scrape(worker, port: int, bootstrap: str, topic: str, n: int) -> str:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and worker.process.poll() is None:
        if sum(committed_offsets(bootstrap, f"group-{topic}", topic).values()) == n:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        time.sleep(0.3)
    return ""


def test_the_worker_judges_uncertain_answers_within_its_hourly_budget(settings, kafka_bootstrap, topic, tmp_path) -> None:
    samples = _demo_samples()
    produce_samples(kafka_bootstrap, topic, samples)
    port = free_port()
    with JudgeStandin([], unknown="unsafe") as judge:
        env = worker_env(
            settings,
            bootstrap=kafka_bootstrap,
            topic=topic,
            group=f"group-{topic}",
            metrics_port=port,
            judge_endpoint=judge.url,
            judge_model="llama-guard-3-8b",
            judge_band=json.dumps(BAND),
            judge_budget_per_hour=BUDGET_PER_HOUR,
            judge_audit_share=0,
        )
        worker = start_worker(env, tmp_path / "w.log", max_idle_seconds=5)
        started = time.monotonic()
        exposition = _scrape(worker, port, kafka_bootstrap, topic, len(samples))
        assert worker.wait(90) == 0, worker.tail()
        calls = judge.counts.requests
        # What the bucket refilled while the worker ran (one call every 10 seconds).
        refilled = int((time.monotonic() - started) / 10) + 1

    assert stored_counts(settings)[:2] == (len(samples), len(samples)), "every sample stored once"
    rows = query(
        settings,
        "SELECT attack_score, decided_by, judge_role, judge_verdict, unscored_reason, head_verdict, flagged_categories, violation_category "
        "FROM sample_scores FINAL",
    )
    uncertain = [r for r in rows if BAND[0] <= r[0] < BAND[1]]
    assert len(uncertain) > BUDGET + refilled, "the demo answers must include more uncertain ones than the budget"
    assert BUDGET <= calls <= BUDGET + refilled
    judged = [r for r in uncertain if r[1] == "judge"]
    dropped = [r for r in uncertain if r[1] == "unscored"]
    assert len(judged) == calls and len(dropped) == len(uncertain) - calls
    assert all(r[4] == "judge budget exhausted" and r[2] == "uncertain" for r in dropped)
    # The judge said unsafe without a category: the sample is flagged for the heads' top hazard.
    assert all(r[3] == "unsafe" and list(r[6]) == [r[7]] for r in judged)
    assert all(r[1] == "head" and r[2] == "" and r[5] == ("unsafe" if r[6] else "safe") for r in rows if not BAND[0] <= r[0] < BAND[1])
    assert f"safemon_stream_judge_calls_total {calls}" in exposition
    assert f"safemon_stream_judge_dropped_total {len(dropped)}" in exposition
    assert f"safemon_stream_unscored_total {len(dropped)}" in exposition
    rates = query(settings, "SELECT category, sum(n) FROM violation_rate_by_hour GROUP BY category")
    assert rates and all(n == len(samples) - len(dropped) for _, n in rates), "unscored samples are in no rate's denominator"


def test_a_failing_judge_never_makes_a_verdict_on_the_stream(settings, kafka_bootstrap, topic, tmp_path) -> None:
    samples = _demo_samples()
    produce_samples(kafka_bootstrap, topic, samples)
    with JudgeStandin([], unknown="unsafe") as judge:
        judge.inject(*[Fault.malformed("unsure")] * 500)
        env = worker_env(
            settings,
            bootstrap=kafka_bootstrap,
            topic=topic,
            group=f"group-{topic}",
            judge_endpoint=judge.url,
            judge_model="guard",
            judge_band=json.dumps(BAND),
            judge_max_retries=0,
            judge_budget_per_hour=60_000,  # room for every uncertain answer: this test is about failures, not the budget
        )
        worker = start_worker(env, tmp_path / "w.log", max_idle_seconds=5)
        assert worker.wait(150) == 0, worker.tail()
    rows = query(settings, "SELECT attack_score, decided_by, unscored_reason, judge_verdict FROM sample_scores FINAL")
    assert len(rows) == len(samples)
    uncertain = [r for r in rows if BAND[0] <= r[0] < BAND[1]]
    assert uncertain and all(r[1] == "unscored" and r[2].startswith("unparseable answer") and r[3] == "" for r in uncertain)
