"""safemon's log events stay clear of the keys Airflow's task supervisor reserves.

The supervisor forwards each event of a task as `_log_to_target(target, level, msg, **event)`;
an event key `target` crashed it and failed every probe run under a real scheduler.
"""

from __future__ import annotations

import ast
import inspect
import io
import json

import pytest
import structlog

from pipeline.logs import FORWARDING_PARAMETERS, RESERVED_LOG_KEYS, clear_reserved_keys, configure_logging, guard_task_logging
from tests.support.env import ROOT

LOG_METHODS = {
    "debug",
    "info",
    "warning",
    "warn",
    "error",
    "exception",
    "critical",
    "fatal",
    "msg",
    "log",
    "bind",
    "new",
    "bind_contextvars",
    "bound_contextvars",
}


def _positional_names(function) -> set[str]:
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return {p.name for p in inspect.signature(function).parameters.values() if p.kind in kinds}


def test_the_reserved_keys_cover_the_installed_airflow_and_structlog() -> None:
    from airflow.sdk.execution_time import supervisor

    bound = structlog.make_filtering_bound_logger(0)
    assert _positional_names(supervisor._log_to_target) | _positional_names(bound.log) <= FORWARDING_PARAMETERS


def _log_calls_with_reserved_keys() -> list[str]:
    found = []
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if name not in LOG_METHODS:
                continue
            for keyword in node.keywords:
                # `**mapping` could carry any key, so it is refused too.
                if keyword.arg is None or keyword.arg in RESERVED_LOG_KEYS:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}({keyword.arg or '**'}=...)")
    return found


def test_no_logging_call_in_the_package_uses_a_reserved_key() -> None:
    assert _log_calls_with_reserved_keys() == []


def _forward(line: bytes) -> dict:
    """Pass one JSON log line through Airflow's supervisor, as it forwards a task's events."""
    from airflow.sdk.execution_time.supervisor import process_log_messages_from_subprocess

    out = io.StringIO()
    target = structlog.wrap_logger(
        structlog.PrintLogger(out), wrapper_class=structlog.make_filtering_bound_logger(0), processors=[structlog.processors.JSONRenderer(default=str)]
    )
    forwarding = process_log_messages_from_subprocess((target,))
    next(forwarding)
    forwarding.send(line)
    return json.loads(out.getvalue())


def _task_line(**keys: object) -> bytes:
    """One event as a task process sends it: JSON, through Airflow's own task-side processors."""
    out = io.BytesIO()
    structlog.configure(processors=structlog.get_config()["processors"], logger_factory=lambda *_: structlog.BytesLogger(out))
    structlog.get_logger().info("probe.run_started", **keys)
    return out.getvalue().strip()


def test_a_reserved_key_crashes_the_supervisor_unguarded_and_is_renamed_guarded() -> None:
    from airflow.sdk._shared.logging.structlog import structlog_processors

    shared, _, render = structlog_processors(json_output=True)
    structlog.configure(processors=[*shared, render])
    with pytest.raises(TypeError, match="multiple values for argument 'target'"):
        _forward(_task_line(target="bot"))

    guard_task_logging()
    with structlog.contextvars.bound_contextvars(msg="m"):
        forwarded = _forward(_task_line(target="bot", suite="demo"))
    assert forwarded["event"] == "probe.run_started" and forwarded["timestamp"]
    assert (forwarded["target_"], forwarded["msg_"], forwarded["suite"]) == ("bot", "m", "demo")


def test_the_guard_runs_after_context_merging_and_once() -> None:
    configure_logging()
    processors = structlog.get_config()["processors"]
    assert processors.index(clear_reserved_keys) == processors.index(structlog.contextvars.merge_contextvars) + 1
    guard_task_logging()
    assert structlog.get_config()["processors"].count(clear_reserved_keys) == 1
    assert clear_reserved_keys(None, "info", {"event": "e", "target": "bot", "level": "info"}) == {"event": "e", "target_": "bot", "level": "info"}
