"""What a running Airflow adds to a probe run: trigger-to-Slack time, DAG against CLI.

    .venv/bin/python bench/airflow.py                 # 3 triggered DAG runs, 3 CLI runs
    .venv/bin/python bench/airflow.py --repeats 5

Starts `deploy/airflow/airflow.sh` (airflow standalone, LocalExecutor, SQLite) on a fresh
AIRFLOW_HOME with the demo target (the recorded model on 127.0.0.1:8765) and a Slack
stand-in. The probe DAG runs once on v1, the baseline; then, on v2 and with the alert
cooldown at 0 so every run alerts, it is triggered through the REST API `--repeats` times,
one after another, each timed from the trigger to the alert's arrival in Slack. Then
`safemon probe run` of the same suite on the same endpoint and store, timed from its start
to the alert's arrival the same way. Prints both medians and their ratio (the scheduler's
overhead), and writes them to bench/out/airflow.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.airflow_api import StandaloneAirflow, standalone_env  # noqa: E402
from tests.support.slack_server import SlackServer  # noqa: E402

DAG = "safemon_probe__demo_assistant__demo"


def _alert_arrival(slack: SlackServer, count: int, timeout: float = 600) -> float:
    """When Slack took the `count`-th message (time.monotonic(), as the server recorded it)."""
    deadline = time.monotonic() + timeout
    while len(posted := [r for r in slack.requests_to("/api/chat.postMessage") if r.status == 200]) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no alert #{count} in Slack within {timeout}s")
        time.sleep(0.05)
    return posted[count - 1].at


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory(prefix="safemon-bench-airflow-") as tmp, SlackServer(token="xoxb-bench") as slack:
        home = Path(tmp) / "airflow"
        env = standalone_env(Path(tmp) / "store", slack.api_url, "xoxb-bench", alert_cooldown_hours="0")
        with StandaloneAirflow(home, env) as airflow:
            api = airflow.api()
            api.wait_for_dags({DAG})
            api.unpause(DAG)  # the scheduler starts the latest scheduled run: v1, the baseline
            started = time.monotonic()
            api.wait_for_run(DAG, api.wait_for_scheduled_run(DAG))
            console.print(f"baseline run (v1) done in {time.monotonic() - started:.1f}s")
            targets = home / "targets.yaml"
            targets.write_text(targets.read_text().replace("model_version: v1", "model_version: v2"))

            dag_s = []
            for i in range(args.repeats):
                triggered = time.monotonic()
                run_id = api.trigger(DAG)
                dag_s.append(_alert_arrival(slack, len(slack.messages) + 1) - triggered)
                api.wait_for_run(DAG, run_id)
                console.print(f"DAG run {i + 1}: alert in Slack {dag_s[-1]:.1f}s after the trigger")

            cli_s = []
            cli_env = {**env, "SAFEMON_TARGETS_FILE": str(targets), "SAFEMON_AIRFLOW_URL": airflow.url}
            for i in range(args.repeats):
                expected, started = len(slack.messages) + 1, time.monotonic()
                subprocess.run(
                    [str(ROOT / ".venv" / "bin" / "safemon"), "probe", "run", "--suite", "demo", "--target", "demo-assistant"],
                    env=cli_env,
                    check=True,
                    capture_output=True,
                    timeout=600,
                )
                cli_s.append(_alert_arrival(slack, expected) - started)
                console.print(f"CLI run {i + 1}: alert in Slack {cli_s[-1]:.1f}s after the start")

    dag_median, cli_median = statistics.median(dag_s), statistics.median(cli_s)
    table = Table("path", "runs", "median trigger -> Slack (s)", "each (s)", title="probe DAG under airflow standalone vs safemon probe run (demo suite)")
    table.add_row("Airflow DAG (REST trigger)", str(len(dag_s)), f"{dag_median:.1f}", ", ".join(f"{s:.1f}" for s in dag_s))
    table.add_row("safemon probe run", str(len(cli_s)), f"{cli_median:.1f}", ", ".join(f"{s:.1f}" for s in cli_s))
    console.print(table)
    console.print(f"scheduler overhead: {dag_median / cli_median:.2f}x the CLI's time ({dag_median - cli_median:+.1f}s)")
    out = ROOT / "bench" / "out" / "airflow.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"dag_s": dag_s, "cli_s": cli_s, "ratio": dag_median / cli_median}, indent=2))


if __name__ == "__main__":
    main()
