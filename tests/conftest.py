"""Shared fixtures: one embedded ClickHouse path per test process, a database per test."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
DATASETS = (ROOT / ".." / "shared" / "datasets").resolve()
IN_CI = os.environ.get("CI", "").lower() == "true"


def require(condition: bool, reason: str) -> None:
    """Skip when something optional is missing on a developer machine; fail under CI=true."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)  # require(): only where CI is not true


@pytest.fixture(autouse=True)
def _default_logging():
    """CLI tests configure structlog globally (level, stream); give every test the defaults back."""
    yield
    import structlog

    structlog.reset_defaults()


@pytest.fixture(scope="session")
def datasets() -> Path:
    require(DATASETS.is_dir(), f"{DATASETS} is missing")
    return DATASETS


@pytest.fixture(scope="session")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # chDB allows one engine path per process: every test in this process shares it.
    return tmp_path_factory.mktemp("clickhouse")


@pytest.fixture
def settings(store_path: Path, tmp_path: Path):
    """Settings on the shared embedded store with a fresh database for this test."""
    from pipeline.settings import load_settings

    return load_settings(
        clickhouse_dsn=f"chdb://{store_path}",
        clickhouse_database=f"t_{uuid.uuid4().hex[:12]}",
        clickhouse_lock_timeout_s=30,
        targets_file=tmp_path / "targets.yaml",
    )


@pytest.fixture
def client(settings):
    """A migrated client on this test's database."""
    from pipeline.store.client import open_store
    from pipeline.store.migrations import migrate

    with open_store(settings) as c:
        migrate(c)
        yield c
