"""The DAG folder parses cleanly, cheaply, and builds the DAGs the targets file asks for."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.dags import DAGS_FOLDER, dag_bag, write_targets

pytestmark = pytest.mark.airflow
HEAVY = ["torch", "sentence_transformers", "great_expectations", "clickhouse_connect", "chdb", "scipy", "statsmodels", "kafka", "pandas", "slack_sdk"]


@pytest.fixture
def targets_env(tmp_path, safemon_env):
    path = write_targets(tmp_path / "targets.yaml", "http://127.0.0.1:9/v1", "v1", ["core", "jailbreaks"])
    safemon_env(targets_file=path)
    return path


def test_dagbag_has_no_import_errors_and_sets_retries(targets_env) -> None:
    bag = dag_bag()
    assert bag.import_errors == {}
    assert sorted(bag.dag_ids) == ["safemon_drift_checks", "safemon_probe__bot__core", "safemon_probe__bot__jailbreaks", "safemon_stream_checks"]
    for dag_id in bag.dag_ids:
        dag = bag.dags[dag_id]
        assert all(t.retries >= 1 for t in dag.tasks)
        if dag_id.startswith("safemon_probe__"):
            assert [t.task_id for t in dag.topological_sort()] == ["run", "score", "store", "evaluate", "alert"]
            assert dag.timetable.expression == "0 0 * * *"  # @daily from the targets file
        elif dag_id == "safemon_stream_checks":
            assert {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks} == {
                "check": [],
                "check_lag": [],
                "check_agreement": [],
                "alert": ["check", "check_agreement", "check_lag"],
            }
        else:
            assert [t.task_id for t in dag.topological_sort()] == ["check", "alert"], dag_id


def test_dag_files_stay_thin() -> None:
    for path in DAGS_FOLDER.glob("*.py"):
        source = path.read_text()
        assert len(source.splitlines()) <= 45, f"{path.name} is not thin"
        imports = [line.split()[1] for line in source.splitlines() if line.startswith(("import ", "from "))]
        assert set(imports) <= {"pendulum", "airflow.sdk", "pipeline"}, imports


@pytest.mark.parametrize("dag_file", ["probe_suites.py", "stream_checks.py", "drift_checks.py"])
def test_parsing_imports_nothing_heavy(targets_env, dag_file) -> None:
    code = f"import runpy, sys, json; runpy.run_path(sys.argv[1]);print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code, str(DAGS_FOLDER / dag_file)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_missing_targets_file_builds_no_dags(tmp_path, safemon_env) -> None:
    safemon_env(targets_file=tmp_path / "absent.yaml")
    bag = dag_bag()
    assert bag.import_errors == {} and sorted(bag.dag_ids) == ["safemon_drift_checks", "safemon_stream_checks"]
