"""Rich renderings of probe runs for the CLI and the demo."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from rich.console import Console, Group
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipeline.probes.runner import RunOutcome, count_verdicts
from pipeline.records import AlertStatus, Attempt


@contextmanager
def probe_progress(console: Console, total: int, label: str) -> Iterator[Callable[[Attempt], None]]:
    """A progress bar advanced once per finished probe."""
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task(label, total=total)
        yield lambda _attempt: progress.advance(task)


def print_rows(console: Console, columns: Sequence[str], rows: Sequence[tuple], output: str, title: str | None = None) -> None:
    """Query results as a rich table, CSV or JSON on stdout."""
    if output == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows(rows)
    elif output == "json":
        sys.stdout.write(json.dumps([dict(zip(columns, r, strict=True)) for r in rows], default=str, indent=2) + "\n")
    else:
        table = Table(*columns, title=title)
        for row in rows:
            table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row))
        console.print(table)


def _rate(stat) -> str:
    return f"{stat.rate:.0%} [{stat.ci_low:.0%}-{stat.ci_high:.0%}] n={stat.n}"


def probe_summary(outcome: RunOutcome) -> Panel:
    """Verdict counts, the comparison with the baseline, and any alert raised."""
    run, evaluation = outcome.run, outcome.evaluation
    verdicts = Table("verdict", "count", title=f"run {run.run_id}")
    for verdict, count in count_verdicts(outcome.results).items():
        verdicts.add_row(verdict, str(count))
    parts: list = [verdicts]
    if run.n_judged or run.n_unscored or run.n_judge_dropped:
        overruled = sum(r.judgement.decided_by == "judge" and str(r.verdict) != r.judgement.head_verdict for r in outcome.results)
        parts.append(
            f"judge: decided {run.n_judged} verdicts the heads were unsure of ({overruled} changed), "
            f"{run.n_unscored} left unscored, {run.n_judge_dropped} calls over budget"
        )
    if evaluation.comparisons:
        table = Table("category", "baseline", "current", "rise", "p adj", "regressed", title="against the baseline (95% Wilson)")
        for c in evaluation.comparisons:
            table.add_row(
                c.category,
                _rate(c.baseline),
                _rate(c.current),
                f"{c.effect:+.0%}",
                f"{c.p_adjusted:.3g}",
                "[bold red]yes[/]" if c.regressed else "no",
            )
        parts.append(table)
    elif evaluation.problems:
        parts.append("[yellow]unhealthy run:[/] " + "; ".join(evaluation.problems))
    else:
        parts.append("no earlier passed run to compare with: this run is the baseline")
    if evaluation.alert is not None:
        a = evaluation.alert
        d = outcome.delivery
        delivered = f"sent to Slack {d.sent}, logged {d.logged} (no Slack configured), pending {d.failed}"
        held = " (suppressed: same regression within the cooldown)" if a.status == AlertStatus.SUPPRESSED else ""
        parts.append(f"[bold]{a.alert.kind}[/] alert{held}: {a.alert.title}\n{a.alert.summary}\n{delivered}")
    title = f"{run.target} / {run.suite} / {run.model_version}: {run.outcome or run.status}"
    return Panel(Group(*parts), title=title)
