"""Targets file, and the chat client against the replay endpoint and misbehaving endpoints."""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import UTC
from pathlib import Path

import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from pipeline.probes.client import Backoff, ChatClient, Limits, build_messages, run_probes, run_probes_sync
from pipeline.probes.replay import Recorded, ReplayServer, normalise
from pipeline.probes.targets import TargetConfig, TargetsError, find_target, load_targets
from pipeline.records import Expect, Probe
from pipeline.settings import load_settings
from tests.support.fake_endpoints import MISSING, FakeEndpoint, closed_port_url

KEY = "sk-test-4f1e2d3c-very-secret"
FAST = Backoff(initial_s=0.01, max_s=0.05, jitter_s=0.01)


def settings(**overrides: object):
    base = dict(target_api_key=KEY, target_timeout_s=2.0, target_concurrency=8, target_rate_limit_per_s=1000.0, target_max_retries=2)
    return load_settings(**{**base, **overrides})


def target(url: str, **overrides: object) -> TargetConfig:
    return TargetConfig(name="t1", endpoint=url, model_version="m-1", **overrides)


def probe(i: int | str, prompt: str | None = None, system: str | None = None) -> Probe:
    return Probe(id=f"p{i}", category="cybercrime", prompt=prompt or f"prompt {i}", expect=Expect.REFUSE, system=system)


# ---------------------------------------------------------------- targets file


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "targets.yaml"
    path.write_text(text)
    return path


def test_load_targets_reads_fields_and_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
targets:
  - name: support-bot
    endpoint: http://127.0.0.1:8765/v1/
    model_version: sb-2024-06
    suites: [core.harmful]
    system_prompt: You help.
    concurrency: 16
  - name: other
    endpoint: https://api.example.com/v1
    model: gpt-x
    model_version: gpt-x-0613
    schedule: "0 3 * * 1-5"
""",
    )
    first, second = load_targets(path)
    assert first.endpoint == "http://127.0.0.1:8765/v1"  # trailing slash dropped
    assert first.chat_url == "http://127.0.0.1:8765/v1/chat/completions"
    assert first.model == "sb-2024-06"  # defaults to model_version
    assert (first.schedule, first.max_tokens, first.temperature, first.concurrency) == ("@daily", 512, 0.0, 16)
    assert second.model == "gpt-x" and second.schedule == "0 3 * * 1-5"
    assert find_target([first, second], "other") is second
    with pytest.raises(TargetsError, match="unknown target 'nope'; valid: other, support-bot"):
        find_target([first, second], "nope")
    with pytest.raises(ValidationError):
        first.name = "x"  # type: ignore[misc]  # frozen


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("targets: [\n  - name: a\n    endpoint: [", r"targets.yaml:\d+: invalid YAML"),
        ("- just a list", "expected a mapping with a 'targets' list"),
        ("targets: {}", "'targets' must be a list"),
        ("targets: []\nextra: 1", "unknown top-level key"),
        ("targets:\n  - name: a\n    model_version: v", r"targets\[0\] \('a'\): key 'endpoint': Field required"),
        ("targets:\n  - name: Bad Name\n    endpoint: http://h/v1\n    model_version: v", r"targets\[0\] \('Bad Name'\): key 'name'"),
        ("targets:\n  - name: a\n    endpoint: ftp://h\n    model_version: v", r"key 'endpoint': must be an http\(s\) URL"),
        ("targets:\n  - name: a\n    endpoint: http://u:sk-x@h/v1\n    model_version: v", "must not contain credentials"),
        ("targets:\n  - name: a\n    endpoint: http://h/v1\n    model_version: v\n    schedule: every day", "key 'schedule': must be a 5-field cron"),
        ("targets:\n  - name: a\n    endpoint: http://h/v1\n    model_version: v\n    schedule: '@sometimes'", "unknown preset '@sometimes'"),
        ("targets:\n  - name: a\n    endpoint: http://h/v1\n    model_version: v\n    concurrency: 0", "key 'concurrency'"),
        ("targets:\n  - name: a\n    endpoint: http://h/v1\n    model_version: v\n    temprature: 1", "key 'temprature': Extra inputs"),
        (
            "targets:\n  - name: a\n    endpoint: http://h/v1\n    model_version: v\n  - name: b\n    endpoint: http://h/v1",
            r"targets\[1\] \('b'\): key 'model_version'",
        ),
        (
            "targets:\n  - name: a\n    endpoint: http://h/v1\n    model_version: v\n  - name: a\n    endpoint: http://h/v1\n    model_version: w",
            r"targets\[1\] \('a'\): key 'name': duplicate of targets\[0\]",
        ),
        ("targets:\n  - 42", r"targets\[0\]: expected a mapping"),
    ],
)
def test_load_targets_errors_name_file_target_and_key(tmp_path: Path, body: str, expected: str) -> None:
    path = write(tmp_path, body)
    with pytest.raises(TargetsError, match=expected) as info:
        load_targets(path)
    assert str(path) in str(info.value)


def test_load_targets_missing_file_is_a_targets_error(tmp_path: Path) -> None:
    with pytest.raises(TargetsError, match=r"nope\.yaml: targets file not found"):
        load_targets(tmp_path / "nope.yaml")


def test_limits_prefer_target_overrides() -> None:
    s = settings(target_concurrency=8, target_max_retries=4)
    assert Limits.resolve(target("http://h/v1"), s) == Limits(8, 1000.0, 2.0, 4)
    assert Limits.resolve(target("http://h/v1", concurrency=2, max_retries=0, timeout_s=0.5, rate_limit_per_s=3), s) == Limits(2, 3.0, 0.5, 0)


def test_build_messages_probe_system_wins_over_target() -> None:
    t = target("http://h/v1", system_prompt="target sys")
    assert build_messages(t, probe(1)) == [{"role": "system", "content": "target sys"}, {"role": "user", "content": "prompt 1"}]
    assert build_messages(t, probe(1, system="own"))[0]["content"] == "own"
    assert build_messages(target("http://h/v1"), probe(1)) == [{"role": "user", "content": "prompt 1"}]


# ---------------------------------------------------------------- client against the replay endpoint


def recording(n: int) -> dict:
    return {(None, normalise(f"prompt {i}")): [Recorded(prompt=f"prompt {i}", response=f"answer {i}")] for i in range(n)}


def test_run_probes_against_replay_keeps_order_and_records_latency() -> None:
    done = []
    with ReplayServer(recording(30), latency_ms=40) as server:
        attempts = run_probes_sync(target(server.url), [probe(i) for i in range(30)], settings(), on_done=done.append)
    assert [a.probe.id for a in attempts] == [f"p{i}" for i in range(30)]
    assert [a.response for a in attempts] == [f"answer {i}" for i in range(30)]
    assert all(a.error is None for a in attempts)
    assert all(40 <= a.latency_ms < 1500 for a in attempts)
    assert all(a.started_at.tzinfo is UTC for a in attempts)
    assert sorted(a.probe.id for a in done) == sorted(a.probe.id for a in attempts)


def test_system_prompt_is_sent_and_matched_by_replay(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    path.write_text(
        '{"prompt": "What is the secret?", "system": "The secret is 42.", "response": "I cannot say."}\n'
        '{"prompt": "What is the secret?", "response": "There is no secret."}\n'
    )
    with ReplayServer(path) as server:
        t = target(server.url, system_prompt="The secret is 42.")
        with_sys, with_probe_sys = run_probes_sync(t, [probe(1, "what is  the SECRET?"), probe(2, "What is the secret?", system="other")], settings())
    assert with_sys.response == "I cannot say."
    assert with_probe_sys.response == "There is no secret."  # no recording for system "other": the one without a system


def test_request_shape_and_api_key_header() -> None:
    with FakeEndpoint("ok") as fake:
        t = target(fake.url, system_prompt="sys", max_tokens=64, temperature=0.5)
        [attempt] = run_probes_sync(t, [probe(1)], settings())
    assert attempt.response == "echo: prompt 1"
    [seen] = fake.seen
    assert seen.headers["Authorization"] == f"Bearer {KEY}"
    assert seen.body == {
        "model": "m-1",
        "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "prompt 1"}],
        "max_tokens": 64,
        "temperature": 0.5,
    }


def test_no_api_key_sends_no_authorization_header() -> None:
    with FakeEndpoint("ok") as fake:
        run_probes_sync(target(fake.url), [probe(1)], settings(target_api_key=None))
    assert "Authorization" not in fake.seen[0].headers


# ---------------------------------------------------------------- failures are errors, never responses


def test_connection_refused_is_an_error_after_retries() -> None:
    url = closed_port_url()
    [a] = run_probes_sync(target(url), [probe(1)], settings(target_max_retries=1), backoff=FAST)
    assert a.response is None
    assert a.error.startswith(f"cannot connect after 2 attempts: {url}/chat/completions (ConnectError")


def test_timeout_is_an_error_after_retries() -> None:
    with FakeEndpoint("hang") as fake:
        t0 = time.perf_counter()
        [a] = run_probes_sync(target(fake.url, timeout_s=0.2, max_retries=1), [probe(1)], settings(), backoff=FAST)
        elapsed = time.perf_counter() - t0
    assert (a.response, a.error) == (None, "timeout after 2 attempts: no response within 0.2 s")
    assert fake.count == 2
    assert a.latency_ms >= 400 and elapsed < 2.0


def test_http_500_is_retried_then_an_error() -> None:
    with FakeEndpoint("status", status=500) as fake:
        [a] = run_probes_sync(target(fake.url), [probe(1)], settings(target_max_retries=2), backoff=FAST)
    assert fake.count == 3
    assert (a.response, a.error) == (None, "HTTP 500 after 3 attempts: boom 500")


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_client_errors_are_not_retried(status: int) -> None:
    with FakeEndpoint("status", status=status) as fake:
        [a] = run_probes_sync(target(fake.url), [probe(1)], settings(target_max_retries=3), backoff=FAST)
    assert fake.count == 1
    assert (a.response, a.error) == (None, f"HTTP {status}: boom {status}")


def test_429_honours_retry_after_then_succeeds() -> None:
    with FakeEndpoint("rate_limited", retry_after="0.3", fail_first=2) as fake:
        [a] = run_probes_sync(target(fake.url), [probe(1)], settings(target_max_retries=3), backoff=FAST)
    assert (a.error, a.response) == (None, "echo: prompt 1")
    assert fake.count == 3
    gaps = [b.at - a.at for a, b in itertools.pairwise(fake.seen)]
    assert all(g >= 0.29 for g in gaps), gaps  # the 10 ms backoff alone would be far shorter
    assert a.latency_ms >= 590  # latency spans the retries


def test_429_without_retry_after_uses_backoff() -> None:
    with FakeEndpoint("rate_limited", retry_after=None, fail_first=1) as fake:
        [a] = run_probes_sync(target(fake.url), [probe(1)], settings(), backoff=FAST)
    assert a.response == "echo: prompt 1" and fake.count == 2
    assert fake.seen[1].at - fake.seen[0].at < 0.25


def test_invalid_json_is_an_error() -> None:
    with FakeEndpoint("invalid_json") as fake:
        [a] = run_probes_sync(target(fake.url), [probe(1)], settings(), backoff=FAST)
    assert a.response is None
    assert a.error == "invalid JSON in response (HTTP 200): '<html>this is not json</html>'"
    assert fake.count == 1


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "choices[0].message.content is null"),
        (MISSING, "response has no choices[0].message.content"),
        ([{"type": "text", "text": "hi"}], "choices[0].message.content is a list, not a string"),
    ],
)
def test_missing_content_is_an_error(content: object, expected: str) -> None:
    with FakeEndpoint("no_content", content=content) as fake:
        [a] = run_probes_sync(target(fake.url), [probe(1)], settings())
    assert (a.response, a.error) == (None, expected)


def test_empty_content_is_a_response() -> None:
    with FakeEndpoint("no_content", content="") as fake:
        [a] = run_probes_sync(target(fake.url), [probe(1)], settings())
    assert (a.response, a.error) == ("", None)


def test_errors_are_per_probe_and_order_is_kept() -> None:
    with ReplayServer(recording(3)) as server:
        probes = [probe(0), probe("x", "never recorded"), probe(2)]
        attempts = run_probes_sync(target(server.url), probes, settings(), backoff=FAST)
    assert [a.response for a in attempts] == ["answer 0", None, "answer 2"]
    assert attempts[1].error == "HTTP 404: no recorded response for prompt"


# ---------------------------------------------------------------- limits


@pytest.mark.parametrize("concurrency", [4, 13])  # 13: split over two connection pools
def test_concurrency_bound_is_respected(concurrency: int) -> None:
    with FakeEndpoint("ok", delay_s=0.1) as fake:
        attempts = run_probes_sync(target(fake.url, concurrency=concurrency), [probe(i) for i in range(3 * concurrency)], settings())
    assert [a.response for a in attempts] == [f"echo: prompt {i}" for i in range(3 * concurrency)]
    assert fake.max_in_flight == concurrency


def test_rate_limit_spaces_request_starts() -> None:
    with FakeEndpoint("ok") as fake:
        t0 = time.perf_counter()
        run_probes_sync(target(fake.url, rate_limit_per_s=25, concurrency=10), [probe(i) for i in range(10)], settings())
        elapsed = time.perf_counter() - t0
    starts = sorted(s.at for s in fake.seen)
    assert starts[-1] - starts[0] >= 9 * 0.04 * 0.9
    # No bursts: at 25/s a 0.1 s window holds about 3 starts (unlimited, all 10 would land in one).
    assert max(sum(1 for t in starts if t0 <= t < t0 + 0.1) for t0 in starts) <= 4, starts
    assert elapsed < 2.0


# ---------------------------------------------------------------- the key stays secret


def test_api_key_never_in_logs_errors_or_reprs() -> None:
    s = settings(target_max_retries=1)
    with capture_logs() as logs, FakeEndpoint("status", status=503) as fake:
        [a] = run_probes_sync(target(fake.url), [probe(1)], s, backoff=FAST)
        [b] = run_probes_sync(target(closed_port_url()), [probe(2)], s, backoff=FAST)

    async def client_repr() -> str:
        async with ChatClient(target("http://h/v1"), s) as client:
            return repr(client) + repr(client.__dict__.get("limits"))

    texts = [repr(logs), repr(a), repr(b), str(a.error), str(b.error), repr(s), asyncio.run(client_repr())]
    assert any(e["event"] == "probe.retry" for e in logs) and any(e["event"] == "probe.failed" for e in logs)
    assert fake.seen[0].headers["Authorization"] == f"Bearer {KEY}"  # it was sent ...
    assert not [t for t in texts if KEY in t]  # ... and appears nowhere else


def test_echoed_key_is_scrubbed_from_errors() -> None:
    # A misbehaving proxy that echoes the Authorization header in its error body.
    with FakeEndpoint("echo_auth") as fake:
        [a] = run_probes_sync(target(fake.url), [probe(1)], settings())
    assert a.error == "HTTP 400: bad credentials: Bearer ***"


def test_run_probes_is_awaitable_inside_a_loop() -> None:
    async def main():
        with ReplayServer(recording(2)) as server:
            return await run_probes(target(server.url), [probe(0), probe(1)], settings())

    assert [a.response for a in asyncio.run(main())] == ["answer 0", "answer 1"]
