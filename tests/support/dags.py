"""The DAG folder and the targets file the DAG tests build DAGs from."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tests.support.env import ROOT

if TYPE_CHECKING:
    from airflow.dag_processing.dagbag import DagBag

DAGS_FOLDER = ROOT / "dags"


def write_targets(path: Path, endpoint: str, model_version: str, suites: list[str]) -> Path:
    """A targets file with one target, `bot`."""
    import yaml

    path.write_text(
        yaml.safe_dump({"targets": [{"name": "bot", "endpoint": endpoint, "model_version": model_version, "schedule": "@daily", "suites": suites}]})
    )
    return path


def dag_bag() -> DagBag:
    """The DAG folder parsed afresh, on settings read from the environment as it is now."""
    from airflow.dag_processing.dagbag import DagBag

    from pipeline.settings import get_settings

    get_settings.cache_clear()
    return DagBag(dag_folder=str(DAGS_FOLDER))
