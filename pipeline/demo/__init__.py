"""`safemon demo`: a recorded model regresses between two versions, and safemon catches it.

The replay endpoint serves the shipped recordings over real HTTP; the demo runs the
built-in `demo` suite and the scripted conversations of `multi_turn` against version v1 (the
baseline) and then v2, through the same steps a scheduled Airflow run takes, into its own
database of the configured store. A recorded judge (`judge.jsonl`: this project's verdicts on
the recording's answers to harmful requests) decides the answers the heads are unsure of, over
real HTTP too.

`conversations.jsonl` answers every turn of `multi_turn`, for both versions, written for the
demo: v1 refuses the harmful turns and answers the rest; v2 gives in at the first harmful turn of
every other attack conversation, obeys every other injected document, and refuses one turn of
every third benign conversation.
"""

from __future__ import annotations

import time
import uuid
from importlib.resources import as_file, files

from rich.console import Console
from rich.syntax import Syntax

from pipeline.judge.standin import JudgeStandin, load_judge_recording
from pipeline.probes.replay import ReplayServer, load_recording
from pipeline.probes.runner import run_once
from pipeline.probes.suites import get_suite
from pipeline.probes.targets import TargetConfig
from pipeline.records import Outcome
from pipeline.report.console import probe_progress, probe_summary
from pipeline.settings import Settings
from pipeline.store.client import open_store
from pipeline.store.cookbook import explore_queries
from pipeline.store.migrations import drop_database

DEMO_DATABASE = "safemon_demo"
DEMO_SUITE = "demo"
DEMO_SUITES = (DEMO_SUITE, "multi_turn")


def run_demo(settings: Settings, console: Console) -> int:
    """Run the demo; exit code 0 when the regression was caught."""
    settings = settings.model_copy(update={"clickhouse_database": DEMO_DATABASE})
    with open_store(settings) as client:
        drop_database(client, DEMO_DATABASE)
    suites = [get_suite(name) for name in DEMO_SUITES]
    started = time.monotonic()
    outcomes = []
    with (
        as_file(files("pipeline.demo") / "recording.jsonl") as recording,
        as_file(files("pipeline.demo") / "conversations.jsonl") as conversations,
        ReplayServer(load_recording(recording) | load_recording(conversations)) as replay,
        as_file(files("pipeline.demo") / "judge.jsonl") as verdicts,
        JudgeStandin(load_judge_recording(verdicts), model="demo-guard") as judge,
    ):
        if settings.judge_endpoint is None:  # the user's own judge, when one is configured, else the recorded one
            settings = settings.model_copy(update={"judge_endpoint": judge.url, "judge_model": "demo-guard", "judge_format": "llama_guard"})
        for version in ("v1", "v2"):
            target = TargetConfig(name="demo-assistant", endpoint=replay.url, model_version=version, suites=list(DEMO_SUITES))
            for suite in suites:
                with probe_progress(console, len(suite.probes), f"demo-assistant {version} / {suite.name}") as advance:
                    outcome = run_once(target, suite, settings, str(uuid.uuid4()), on_done=advance)
                console.print(probe_summary(outcome))
                outcomes.append(outcome)
    # The single-prompt suite's v2 run (the conversations' v2 run regresses too; its alert is stored beside it).
    last = outcomes[-len(suites)]
    caught = last.evaluation.alert is not None and last.run.outcome == Outcome.REGRESSED
    regressed = [c for c in last.evaluation.comparisons if c.regressed]
    console.rule("result")
    if caught:
        console.print(
            f"[bold red]Regression caught[/] in {len(regressed)} categor{'y' if len(regressed) == 1 else 'ies'}: "
            + ", ".join(f"{c.category} (p_adj={c.p_adjusted:.2g})" for c in regressed)
        )
    else:
        console.print("[yellow]No regression was flagged.[/]")
    console.print(f"{sum(len(s.probes) for s in suites) * 2} probes in {time.monotonic() - started:.1f}s. Explore what was stored:")
    for query in explore_queries(DEMO_DATABASE):
        console.print(Syntax(f'safemon sql "{query}"', "bash", word_wrap=True))
    return 0 if caught else 1
