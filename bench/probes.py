"""Probe throughput: the chat client against the replay endpoint with injected latency.

    .venv/bin/python bench/probes.py                      # 1,000 probes: 200 ms @ 64, then 0 ms @ 32
    .venv/bin/python bench/probes.py --probes 2000 --latency-ms 100 --concurrency 128 --server thread
    .venv/bin/python bench/probes.py --judge-latency-ms 0      # without the judge section

Overhead per probe is the time a probe costs beyond the injected latency, per slot:
wall x concurrency / probes - latency. The ideal wall time is ceil(probes / concurrency)
x latency (every slot busy all the time, zero client and server cost).
By default the replay server runs in a child process, as a remote endpoint would, so the
client and the server do not share one interpreter's GIL; `--server thread` runs it in-process.

The conversations section runs the built-in `multi_turn` suite (scripted conversations) through
the runner's `execute` step (each turn scored as it comes, for the stop policy; and again with
every conversation on `play_all`, which scores nothing while playing) against the replay
endpoint serving the demo's v1 answers (`pipeline/demo/conversations.jsonl`: it never gives in,
so every turn is played) at `--multi-turn-latency-ms`, at each of `--multi-turn-concurrency`. The
turns of one conversation are sequential, so the ideal wall time is
max(longest conversation, ceil(turns / concurrency)) x latency; the ratio to it is the overhead.

The judge section measures what the judge cascade adds to a probe run. Its suite is
JailbreakBench's attack prompts (`--judge-probes` of them, the suite importer's), answered by the
replay endpoint with the prompts' recorded responses at the main scenario's latency and
concurrency. A run is the runner's steps up to the store: execute, score, judge (store and
check do not depend on the judge). Each repeat runs the suite once without a judge and once with
the recorded judge (`pipeline/judge/standin.py`: Llama Guard 1's verdicts from the same file) at
`--judge-latency-ms` per call, under the default judge settings (concurrency, rate limit,
budget, audit share) and the band a judge gets by default (the shipped card's for the heads in
use), or [0.35, 0.65] where the card has none for them. The embedder's cache is cleared
before each run's scoring. Medians over `--judge-repeats`; the added seconds are the median of
the paired differences.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing as mp
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import structlog
from rich.console import Console
from rich.table import Table

from pipeline.detectors import Scorer
from pipeline.judge.cascade import Cascade, JudgeConfigError
from pipeline.judge.standin import JudgeStandin, jbb_recording
from pipeline.lab.importers import import_jbb
from pipeline.probes.client import run_probes_sync
from pipeline.probes.replay import ReplayServer, normalise
from pipeline.probes.runner import execute, judge, judge_cascade, score
from pipeline.probes.targets import TargetConfig
from pipeline.records import Expect, Probe, ProbeRun, StopPolicy, Suite
from pipeline.settings import Settings, load_settings

JBB = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "jailbreakbench" / "jbb_artifacts_flat.jsonl"
FALLBACK_BAND = (0.35, 0.65)


@dataclass(frozen=True)
class Scenario:
    """One bench configuration."""

    probes: int
    concurrency: int
    latency_ms: float


@dataclass(frozen=True)
class Outcome:
    """What one scenario measured."""

    scenario: Scenario
    wall_s: float
    errors: int
    p50_ms: float
    p95_ms: float

    @property
    def per_s(self) -> float:
        return self.scenario.probes / self.wall_s

    @property
    def overhead_ms(self) -> float:
        s = self.scenario
        return self.wall_s * 1000 * s.concurrency / s.probes - s.latency_ms

    @property
    def ideal_s(self) -> float:
        s = self.scenario
        return math.ceil(s.probes / s.concurrency) * s.latency_ms / 1000


def write_recording(path: Path, n: int) -> list[Probe]:
    """A synthetic recording of n prompts with ~60-word responses, and the probes that ask them."""
    probes, lines = [], []
    answer = "I can't help with that request, but here is some general, safe information instead. " * 4
    for i in range(n):
        prompt = f"Synthetic probe {i}: explain step by step how one might approach task number {i}."
        probes.append(Probe(id=f"bench-{i}", category="cybercrime", prompt=prompt, expect=Expect.REFUSE))
        lines.append(json.dumps({"prompt": prompt, "response": f"{answer}{i}"}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return probes


def _serve_child(path: str, latency_ms: float, conn: mp.connection.Connection) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with ReplayServer(path, latency_ms=latency_ms) as server:
        conn.send(server.url)
        conn.recv()  # any message means stop


@contextmanager
def replay_endpoint(path: Path, latency_ms: float, where: str) -> Iterator[str]:
    """A replay endpoint for the recording, on a thread here or in a child process."""
    if where == "thread":
        with ReplayServer(path, latency_ms=latency_ms) as server:
            yield server.url
        return
    ours, theirs = mp.get_context("spawn").Pipe()
    child = mp.get_context("spawn").Process(target=_serve_child, args=(str(path), latency_ms, theirs), daemon=True)
    child.start()
    try:
        yield ours.recv()
    finally:
        ours.send("stop")
        child.join(timeout=10)


def run_scenario(scenario: Scenario, where: str, workdir: Path) -> Outcome:
    """Serve a synthetic recording and send every probe once at the scenario's concurrency."""
    path = workdir / f"recording-{scenario.probes}.jsonl"
    probes = write_recording(path, scenario.probes)
    settings = load_settings(
        target_api_key=None,
        target_concurrency=scenario.concurrency,
        target_rate_limit_per_s=1e6,  # measure the client and endpoint, not the limiter
        target_timeout_s=30.0,
    )
    with replay_endpoint(path, scenario.latency_ms, where) as url:
        target = TargetConfig(name="bench", endpoint=url, model_version="replay")
        run_probes_sync(target, probes[: min(50, len(probes))], settings)  # warm-up: connections, imports
        t0 = time.perf_counter()
        attempts = run_probes_sync(target, probes, settings)
        wall = time.perf_counter() - t0
    latencies = sorted(a.latency_ms for a in attempts)
    return Outcome(
        scenario=scenario,
        wall_s=wall,
        errors=sum(a.error is not None for a in attempts),
        p50_ms=statistics.median(latencies),
        p95_ms=latencies[int(0.95 * (len(latencies) - 1))],
    )


@dataclass(frozen=True)
class ConversationRun:
    """The multi-turn suite's execute step at one concurrency."""

    concurrency: int
    policy: str  # as shipped, or every conversation on play_all (no turn scored while playing)
    conversations: int
    turns: int
    longest: int
    latency_ms: float
    wall_s: float
    errors: int

    @property
    def ideal_s(self) -> float:
        return max(self.longest, math.ceil(self.turns / self.concurrency)) * self.latency_ms / 1000

    @property
    def ratio(self) -> float:
        return self.wall_s / self.ideal_s


def run_conversations(args: argparse.Namespace, workdir: Path) -> list[ConversationRun]:
    """The built-in scripted conversations against the replay endpoint, once per concurrency."""
    from importlib.resources import files

    from pipeline.probes.conversation import user_turns
    from pipeline.probes.suites import get_suite

    shipped = get_suite("multi_turn")
    play_all = replace(shipped, probes=tuple(replace(p, policy=StopPolicy.PLAY_ALL) for p in shipped.probes))
    path = workdir / "conversations.jsonl"
    lines = [json.loads(line) for line in (files("pipeline.demo") / "conversations.jsonl").read_text().splitlines() if line.strip()]
    path.write_text("".join(json.dumps({**r, "model": None}) + "\n" for r in lines if r["model"] == "v1"), encoding="utf-8")
    longest = max(len(user_turns(p)) for p in shipped.probes)
    scorer = Scorer.from_settings(load_settings())
    scorer.embedder.encode(["warm up"])
    runs = []
    with replay_endpoint(path, args.multi_turn_latency_ms, args.server) as url:
        for concurrency in args.multi_turn_concurrency:
            settings = load_settings(target_api_key=None, target_concurrency=concurrency, target_rate_limit_per_s=1e6, target_timeout_s=30.0)
            target = TargetConfig(name="bench", endpoint=url, model_version="replay")
            for policy, suite in (("as shipped", shipped), ("all play_all", play_all)):
                scorer.embedder.clear_cache()
                t0 = time.perf_counter()
                run, attempts = execute(target, suite, settings, f"bench-{concurrency}", scorer=scorer)
                wall = time.perf_counter() - t0
                runs.append(ConversationRun(concurrency, policy, len(suite.probes), len(attempts), longest, args.multi_turn_latency_ms, wall, run.n_errors))
    return runs


def render_conversations(runs: list[ConversationRun]) -> Table:
    table = Table(title="scripted conversations (multi_turn suite): the execute step")
    for column in ("concurrency", "policy", "conversations", "turns", "longest", "latency ms", "wall s", "ideal s", "wall / ideal", "errors"):
        table.add_column(column, justify="right")
    for r in runs:
        table.add_row(
            str(r.concurrency),
            r.policy,
            str(r.conversations),
            str(r.turns),
            str(r.longest),
            f"{r.latency_ms:g}",
            f"{r.wall_s:.2f}",
            f"{r.ideal_s:.2f}",
            f"{r.ratio:.2f}",
            str(r.errors),
        )
    return table


def _judge_child(path: str, latency_ms: float, conn: mp.connection.Connection) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with JudgeStandin(jbb_recording(path), latency_ms=latency_ms, unknown="safe") as standin:
        conn.send(standin.url)
        while conn.recv() == "counts":  # anything else means stop
            conn.send(standin.counts.requests)


@contextmanager
def judge_endpoint(path: Path, latency_ms: float, where: str) -> Iterator[tuple[str, Callable[[], int]]]:
    """The recorded judge (Llama Guard 1's verdicts in the JailbreakBench file), here or in a
    child process: its base URL, and a function that reads its request count."""
    if where == "thread":
        with JudgeStandin(jbb_recording(path), latency_ms=latency_ms, unknown="safe") as standin:
            yield standin.url, lambda: standin.counts.requests
        return
    ours, theirs = mp.get_context("spawn").Pipe()
    child = mp.get_context("spawn").Process(target=_judge_child, args=(str(path), latency_ms, theirs), daemon=True)
    child.start()

    def requests() -> int:
        ours.send("counts")
        return ours.recv()

    try:
        yield ours.recv(), requests
    finally:
        ours.send("stop")
        child.join(timeout=10)


def jbb_suite(path: Path, n: int, workdir: Path) -> tuple[Suite, Path]:
    """The suite importer's first `n` JailbreakBench attack prompts that have a recorded response,
    and a replay recording that answers each with that response."""
    responses: dict[str, str] = {}
    for line in path.open(encoding="utf-8"):
        row = json.loads(line) if line.strip() else {}
        prompt, response = row.get("prompt"), row.get("response")
        if isinstance(prompt, str) and isinstance(response, str) and response.strip():
            responses.setdefault(normalise(prompt), response)
    suite = import_jbb(path)
    probes = tuple(p for p in suite.probes if normalise(p.prompt) in responses)[:n]
    recording = workdir / "jbb-recording.jsonl"
    recording.write_text("".join(json.dumps({"prompt": p.prompt, "response": responses[normalise(p.prompt)]}) + "\n" for p in probes), encoding="utf-8")
    return replace(suite, probes=probes), recording


def default_band(settings: Settings, scorer: Scorer) -> tuple[tuple[float, float], str]:
    """The band a judge gets without SAFEMON_JUDGE_BAND (the shipped card's, for these heads), or
    the fallback and why."""
    chosen = {k: v for k in ("judge_share", "judge_target_accuracy") if (v := getattr(settings, k, None)) is not None}
    try:
        cascade = Cascade.configure(settings.model_copy(update={"judge_band": None}), scorer.head)
    except JudgeConfigError as exc:
        return FALLBACK_BAND, f"fallback: {exc}"
    assert cascade is not None
    return cascade.band, "the shipped card's default, " + ", ".join(f"{k}={v:g}" for k, v in chosen.items())


@dataclass(frozen=True)
class JudgedRun:
    """One probe run up to the store: its wall time, the judge calls made, and its cascade counts."""

    wall_s: float
    calls: int
    run: ProbeRun


def probe_run(target: TargetConfig, suite: Suite, settings: Settings, scorer: Scorer, calls: Callable[[], int] | None, run_id: str) -> JudgedRun:
    """execute -> score -> judge, as `runner.run_once` chains them, timed (the store and check left out)."""
    scorer.embedder.clear_cache()  # each run embeds its answers, as a fresh run's would be
    before = calls() if calls else 0
    t0 = time.perf_counter()
    cascade = judge_cascade(target, settings, scorer)
    run, attempts = execute(target, suite, settings, run_id)
    run, _ = judge(run, score(run, attempts, scorer), suite, cascade)
    wall = time.perf_counter() - t0
    return JudgedRun(wall, (calls() - before) if calls else 0, run)


@dataclass(frozen=True)
class JudgeComparison:
    """The judge section's repeats, paired: run i without the judge, then run i with it."""

    probes: int
    band: tuple[float, float]
    band_source: str
    settings: Settings  # the judged runs'
    latency_ms: float  # the judge's, per call
    without: list[JudgedRun]
    with_judge: list[JudgedRun]

    @property
    def added_s(self) -> float:
        return statistics.median(w.wall_s - o.wall_s for o, w in zip(self.without, self.with_judge, strict=True))

    @property
    def calls(self) -> float:
        return statistics.median(r.calls for r in self.with_judge)

    @property
    def floor_s(self) -> float:
        """The least a judge at this latency can add for the median calls: its rate limit, or its
        concurrency at the injected latency, whichever is slower; zero client and server cost."""
        s = self.settings
        return max(self.calls / s.judge_rate_limit_per_s, math.ceil(self.calls / s.judge_concurrency) * self.latency_ms / 1000)


def run_judge_comparison(args: argparse.Namespace, workdir: Path) -> JudgeComparison:
    """The JailbreakBench suite without and with the recorded judge, `--judge-repeats` times, interleaved."""
    suite, recording = jbb_suite(JBB, args.judge_probes, workdir)
    base = load_settings(target_api_key=None, target_concurrency=args.concurrency, target_rate_limit_per_s=1e6, target_timeout_s=30.0, judge_endpoint=None)
    scorer = Scorer.from_settings(base)
    without, with_judge = [], []
    with replay_endpoint(recording, args.latency_ms, args.server) as url, judge_endpoint(JBB, args.judge_latency_ms, args.server) as (judge_url, calls):
        target = TargetConfig(name="bench", endpoint=url, model_version="replay")
        band, source = default_band(base.model_copy(update={"judge_endpoint": judge_url, "judge_model": "llama-guard-1"}), scorer)
        judged = base.model_copy(update={"judge_endpoint": judge_url, "judge_model": "llama-guard-1", "judge_band": band})
        probe_run(target, replace(suite, probes=suite.probes[:50]), judged, scorer, None, "warm-up")  # connections, imports, model
        for i in range(args.judge_repeats):
            without.append(probe_run(target, suite, base, scorer, None, f"bench-{i}-without"))
            with_judge.append(probe_run(target, suite, judged, scorer, calls, f"bench-{i}-judge"))
    return JudgeComparison(len(suite.probes), band, source, judged, args.judge_latency_ms, without, with_judge)


def render_judge(c: JudgeComparison, args: argparse.Namespace) -> Table:
    """The judge section's two arms as a rich table."""
    s = c.settings
    table = Table(
        title=(
            f"judge's added latency per probe run: {c.probes} JailbreakBench probes at {args.latency_ms:g} ms @ {args.concurrency}; "
            f"judge {c.latency_ms:g} ms/call, concurrency {s.judge_concurrency}, {s.judge_rate_limit_per_s:g} calls/s, "
            f"audit share {s.judge_audit_share:g}; band [{c.band[0]:g}, {c.band[1]:g}) ({c.band_source}); "
            f"median of {len(c.without)} (server: {args.server})"
        )
    )
    for col in ("run", "wall / run", "min - max", "judge calls", "judged", "unscored", "budget dropped"):
        table.add_column(col, justify="right")
    for name, runs in (("without judge", c.without), ("with judge", c.with_judge)):
        walls = [r.wall_s for r in runs]
        table.add_row(
            name,
            f"{statistics.median(walls):.2f} s",
            f"{min(walls):.2f} - {max(walls):.2f} s",
            f"{statistics.median(r.calls for r in runs):g}",
            f"{statistics.median(r.run.n_judged for r in runs):g}",
            f"{statistics.median(r.run.n_unscored for r in runs):g}",
            f"{statistics.median(r.run.n_judge_dropped for r in runs):g}",
        )
    return table


def judge_summary(c: JudgeComparison) -> str:
    """What the judge added, in one line per figure."""
    s = c.settings
    judged = statistics.median(r.run.n_judged for r in c.with_judge)
    base = statistics.median(r.wall_s for r in c.without)

    def per(n: float) -> str:
        return f"{1000 * c.added_s / n:.0f} ms" if n else "n/a"

    return "\n".join(
        [
            f"judge adds per run (median of paired differences)   {c.added_s:+.2f} s ({100 * c.added_s / base:+.0f}% of the run's wall; "
            + ", ".join(f"{w.wall_s - o.wall_s:+.2f}" for o, w in zip(c.without, c.with_judge, strict=True))
            + ")",
            f"judge calls per run / judged probes (median)         {c.calls:g} / {judged:g} of {c.probes}",
            f"added per judge call / per judged probe              {per(c.calls)} / {per(judged)}",
            f"floor for those calls (rate limit {s.judge_rate_limit_per_s:g}/s, {s.judge_concurrency} x {c.latency_ms:g} ms)   {c.floor_s:.2f} s",
        ]
    )


def render(outcomes: list[Outcome], where: str) -> Table:
    """The results as a rich table."""
    table = Table(title=f"probe throughput against the replay endpoint (server: {where})")
    for col in ("probes", "concurrency", "latency injected", "wall", "probes/s", "overhead/probe", "ideal wall", "wall/ideal", "p50 / p95 latency", "errors"):
        table.add_column(col, justify="right")
    for o in outcomes:
        s = o.scenario
        table.add_row(
            f"{s.probes:,}",
            str(s.concurrency),
            f"{s.latency_ms:g} ms",
            f"{o.wall_s:.2f} s",
            f"{o.per_s:,.0f}",
            f"{o.overhead_ms:.1f} ms",
            f"{o.ideal_s:.2f} s",
            f"{o.wall_s / o.ideal_s:.2f}" if o.ideal_s else "n/a",
            f"{o.p50_ms:.0f} / {o.p95_ms:.0f} ms",
            str(o.errors),
        )
    return table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=1000, help="probes per scenario (default 1000)")
    parser.add_argument("--latency-ms", type=float, default=200.0, help="injected latency of the main scenario (default 200)")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrency of the main scenario (default 64)")
    parser.add_argument("--raw-concurrency", type=int, default=32, help="concurrency of the 0 ms scenario; 0 skips it (default 32)")
    parser.add_argument("--server", choices=("process", "thread"), default="process", help="where the replay server (and the recorded judge) runs")
    parser.add_argument("--judge-latency-ms", type=float, default=200.0, help="the recorded judge's latency per call; 0 skips the judge section (default 200)")
    parser.add_argument("--judge-probes", type=int, default=500, help="JailbreakBench probes in the judge section's suite (default 500)")
    parser.add_argument("--judge-repeats", type=int, default=3, help="runs without and with the judge, each (default 3)")
    parser.add_argument(
        "--multi-turn-latency-ms", type=float, default=200.0, help="the conversations' replay latency; 0 skips the conversations section (default 200)"
    )
    parser.add_argument("--multi-turn-concurrency", type=int, nargs="+", default=[64, 8], help="concurrencies of the conversations section (default 64 8)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    scenarios = [Scenario(args.probes, args.concurrency, args.latency_ms)]
    if args.raw_concurrency:
        scenarios.append(Scenario(args.probes, args.raw_concurrency, 0.0))
    with tempfile.TemporaryDirectory(prefix="safemon-bench-") as tmp:
        outcomes = [run_scenario(s, args.server, Path(tmp)) for s in scenarios]
        Console(width=160).print(render(outcomes, args.server))
        if args.multi_turn_latency_ms > 0:
            Console(width=160).print(render_conversations(run_conversations(args, Path(tmp))))
        if args.judge_latency_ms > 0:
            if not JBB.is_file():
                raise SystemExit(f"{JBB} is missing: the judge section needs it (or pass --judge-latency-ms 0)")
            comparison = run_judge_comparison(args, Path(tmp))
            Console(width=160).print(render_judge(comparison, args))
            print(judge_summary(comparison))


if __name__ == "__main__":
    main()
