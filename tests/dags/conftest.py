"""Airflow for DAG tests: its own AIRFLOW_HOME with a SQLite metadata DB, made once."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Airflow reads its configuration when first imported, so this runs before any test imports it.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="safemon-airflow-"))
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")


@pytest.fixture(scope="session")
def airflow_db() -> str:
    """Migrate the metadata DB once per session."""
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True, env=os.environ, timeout=300)
    return os.environ["AIRFLOW_HOME"]


def write_targets(path: Path, endpoint: str, model_version: str, suites: list[str]) -> Path:
    """A targets file with one target, `bot`."""
    import yaml

    path.write_text(
        yaml.safe_dump({"targets": [{"name": "bot", "endpoint": endpoint, "model_version": model_version, "schedule": "@daily", "suites": suites}]})
    )
    return path
