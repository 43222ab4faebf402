"""Airflow as a user runs it, for end-to-end tests: `deploy/airflow/airflow.sh` in its own
process group, driven through the REST API the UI uses.

    with StandaloneAirflow(home, env) as airflow:
        api = airflow.api()
        api.unpause("safemon_drift_checks")
        run = api.wait_for_run("safemon_drift_checks", api.trigger("safemon_drift_checks"))
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.kafka_broker import free_port

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "airflow" / "airflow.sh"
FINISHED = {"success", "failed"}


def standalone_env(store: Path, slack_api_url: str, slack_token: str, **settings: str) -> dict[str, str]:
    """The environment airflow.sh gets: this process's, less pytest's, safemon's and Airflow's own
    variables, plus an embedded store, the Slack stand-in and free log-server ports. `settings`
    adds SAFEMON_* variables (`alert_cooldown_hours="0"` sets SAFEMON_ALERT_COOLDOWN_HOURS)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "SAFEMON_", "AIRFLOW"))}
    env.update(
        SAFEMON_CLICKHOUSE_DSN=f"chdb://{store}",
        SAFEMON_SLACK_BOT_TOKEN=slack_token,
        SAFEMON_SLACK_CHANNEL="#safety-alerts",
        SAFEMON_SLACK_API_URL=slack_api_url,
        AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(free_port()),
        AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=str(free_port()),
    )
    env.update({f"SAFEMON_{name.upper()}": value for name, value in settings.items()})
    return env


class AirflowApi:
    """The slice of Airflow 3's REST API (`/api/v2`) the UI's buttons call."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url
        self.token = token
        self.http = httpx.Client(base_url=f"{base_url}/api/v2", headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def dag_ids(self) -> set[str]:
        return {d["dag_id"] for d in self.http.get("/dags").raise_for_status().json()["dags"]}

    def wait_for_dags(self, dag_ids: set[str], timeout: float = 180) -> None:
        """Wait until the dag-processor has parsed these DAGs."""
        deadline = time.monotonic() + timeout
        while not dag_ids <= self.dag_ids():
            if time.monotonic() > deadline:
                raise AssertionError(f"DAGs not parsed within {timeout}s: {sorted(dag_ids - self.dag_ids())}")
            time.sleep(1)

    def unpause(self, dag_id: str) -> None:
        self.http.patch(f"/dags/{dag_id}", json={"is_paused": False}).raise_for_status()

    def trigger(self, dag_id: str) -> str:
        """The Trigger button: a manual run with no logical date; returns its run id."""
        return self.http.post(f"/dags/{dag_id}/dagRuns", json={"logical_date": None}).raise_for_status().json()["dag_run_id"]

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return self.http.get(f"/dags/{dag_id}/dagRuns", params={"order_by": "run_after"}).raise_for_status().json()["dag_runs"]

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.http.get(f"/dags/{dag_id}/dagRuns/{run_id}").raise_for_status().json()

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 600) -> dict[str, Any]:
        """Poll until the run finishes; fail with its task states and logs if it did not succeed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.run(dag_id, run_id)
            if run["state"] == "success":
                return run
            if run["state"] in FINISHED:
                break
            time.sleep(1)
        raise AssertionError(f"{dag_id} {run_id}: {self.run(dag_id, run_id)['state']}\n{self.explain(dag_id, run_id)}")

    def wait_for_scheduled_run(self, dag_id: str, timeout: float = 120) -> str:
        """The run id of the first scheduled run the scheduler creates for a DAG."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            scheduled = [r["dag_run_id"] for r in self.runs(dag_id) if r["run_type"] == "scheduled"]
            if scheduled:
                return scheduled[0]
            time.sleep(1)
        raise AssertionError(f"the scheduler created no scheduled run of {dag_id} within {timeout}s")

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        tis = self.http.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances").raise_for_status().json()["task_instances"]
        return {ti["task_id"]: ti for ti in tis}

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        return {task: ti["state"] for task, ti in self.task_instances(dag_id, run_id).items()}

    def wait_for_task(self, dag_id: str, run_id: str, task_id: str, state: str, timeout: float = 300, poll_s: float = 0.2) -> None:
        deadline = time.monotonic() + timeout
        while (now := self.task_states(dag_id, run_id).get(task_id)) != state:
            if time.monotonic() > deadline or self.run(dag_id, run_id)["state"] in FINISHED:
                raise AssertionError(f"{dag_id} {run_id}: {task_id} is {now}, not {state}\n{self.explain(dag_id, run_id)}")
            time.sleep(poll_s)

    def log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
        """A task's log as text (each structured line's JSON)."""
        reply = self.http.get(
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
            params={"full_content": True},
            headers={"Accept": "application/json"},
        ).raise_for_status()
        return "\n".join(json.dumps(line) for line in reply.json()["content"])

    def xcom(self, dag_id: str, run_id: str, task_id: str) -> Any:
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value"
        return self.http.get(path, params={"deserialize": True}).raise_for_status().json()["value"]

    def explain(self, dag_id: str, run_id: str) -> str:
        states = self.task_states(dag_id, run_id)
        logs = [f"--- {task} ({state})\n{self.log(dag_id, run_id, task)[-4000:]}" for task, state in states.items() if state not in (None, "success")]
        return f"{states}\n" + "\n".join(logs)


@dataclass
class StandaloneAirflow:
    """`deploy/airflow/airflow.sh` started with `env`, in its own session; stopped with Ctrl-C (SIGINT)."""

    home: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://localhost:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.home / "standalone.log"

    def start(self, timeout: float = 300) -> StandaloneAirflow:
        self.home.mkdir(parents=True, exist_ok=True)
        env = {**self.env, "AIRFLOW_HOME": str(self.home), "AIRFLOW__API__PORT": str(self.port)}
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(["bash", str(SCRIPT)], cwd=ROOT, env=env, stdout=out, stderr=out, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"airflow.sh exited {self.process.returncode}:\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/api/v2/monitor/health", timeout=2).status_code == 200 and self._password_file().exists():
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise AssertionError(f"Airflow did not answer within {timeout}s:\n{self.tail()}")

    def _password_file(self) -> Path:
        return self.home / "simple_auth_manager_passwords.json.generated"

    def token(self) -> str:
        """Log in as the admin user standalone generated, as the UI's login form does."""
        password = json.loads(self._password_file().read_text())["admin"]
        reply = httpx.post(f"{self.url}/auth/token", json={"username": "admin", "password": password}, timeout=30)
        return reply.raise_for_status().json()["access_token"]

    def api(self) -> AirflowApi:
        return AirflowApi(self.url, self.token())

    def stop(self, timeout: float = 120) -> int:
        """Ctrl-C: SIGINT to the script's process group, as a terminal sends it."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            left = "\n".join(f"{pid}: {command}" for pid, command in self.leftovers().items())
            raise AssertionError(f"airflow.sh still running {timeout}s after Ctrl-C:\n{left}\n{self.tail()}") from None

    def leftovers(self) -> dict[int, str]:
        """Processes still running with this AIRFLOW_HOME in their environment: pid -> command line."""
        marker = f"AIRFLOW_HOME={self.home}\0".encode()
        found = {}
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                if marker in (proc / "environ").read_bytes() + b"\0":
                    found[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
        return found

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def __enter__(self) -> StandaloneAirflow:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            for pid in self.leftovers():  # so that a failed test leaves no processes behind
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
