"""Probe throughput: the chat client against the replay endpoint with injected latency.

    .venv/bin/python bench/probes.py                      # 1,000 probes: 200 ms @ 64, then 0 ms @ 32
    .venv/bin/python bench/probes.py --probes 2000 --latency-ms 100 --concurrency 128 --server thread

Overhead per probe is the time a probe costs beyond the injected latency, per slot:
wall x concurrency / probes - latency. The ideal wall time is ceil(probes / concurrency)
x latency (every slot busy all the time, zero client and server cost).
By default the replay server runs in a child process, as a remote endpoint would, so the
client and the server do not share one interpreter's GIL; `--server thread` runs it in-process.
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import structlog
from rich.console import Console
from rich.table import Table

from pipeline.probes.client import run_probes_sync
from pipeline.probes.replay import ReplayServer
from pipeline.probes.targets import TargetConfig
from pipeline.records import Expect, Probe
from pipeline.settings import load_settings


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
    parser.add_argument("--server", choices=("process", "thread"), default="process", help="where the replay server runs")
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


if __name__ == "__main__":
    main()
