"""Airflow for DAG tests: its own AIRFLOW_HOME with a SQLite metadata DB, made once; SAFEMON_* settings per test."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator

import pytest

from tests.support.dags import DAGS_FOLDER

# Airflow reads its configuration when first imported, so this runs before any test imports it.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="safemon-airflow-"))
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(DAGS_FOLDER)


@pytest.fixture(scope="session")
def airflow_db() -> str:
    """Migrate the metadata DB once per session."""
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True, env=os.environ, timeout=300)
    return os.environ["AIRFLOW_HOME"]


@pytest.fixture
def safemon_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """Set SAFEMON_* variables for this test (`safemon_env(clickhouse_dsn=...)`); the cached settings
    are dropped on each call and afterwards, so neither this test nor the next reads stale ones."""
    from pipeline.settings import get_settings

    def setenv(**values: object) -> None:
        for key, value in values.items():
            monkeypatch.setenv(f"SAFEMON_{key.upper()}", str(value))
        get_settings.cache_clear()

    yield setenv
    get_settings.cache_clear()
