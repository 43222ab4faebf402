"""structlog set-up for entry points: one event per line on stderr, keys bound per unit of work.

Inside an Airflow task, Airflow owns the structlog configuration: the task process sends
each event as JSON to its supervisor, which pops `level`, `event`, `timestamp` and
`exception`, and calls `_log_to_target(target, level, msg, **event)` and then
`FilteringBoundLogger.log(level, event, **event)`. An event key named like one of those
parameters crashes the supervisor (`TypeError: got multiple values for argument 'target'`)
and fails the task; keys the processors write are silently overwritten. So safemon's events
never carry any of them: the code does not write them (a test walks every logging call),
and the `clear_reserved_keys` processor renames crashing keys that arrive anyway (through
bound context, say), in the CLI's configuration and, via `guard_task_logging`, in Airflow's.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

# Parameter names of Airflow's supervisor (`_log_to_target`) and of structlog's
# `FilteringBoundLogger.log`: an event key with one of these names crashes the supervisor.
FORWARDING_PARAMETERS = frozenset({"target", "level", "msg", "self", "event"})
# Keys that structlog's and Airflow's processors write themselves: an event key with one of
# these names is overwritten or reinterpreted.
PROCESSOR_KEYS = frozenset({"level", "event", "timestamp", "exception", "logger"})
RESERVED_LOG_KEYS = FORWARDING_PARAMETERS | PROCESSOR_KEYS
# What the guard renames: the crashing names that no processor writes.
_RENAMED = FORWARDING_PARAMETERS - PROCESSOR_KEYS


def clear_reserved_keys(_logger: Any, _method: str, event_dict: dict) -> dict:
    """Rename event keys that would crash Airflow's log forwarding (`target` -> `target_`)."""
    for key in _RENAMED.intersection(event_dict):
        event_dict[f"{key}_"] = event_dict.pop(key)
    return event_dict


def _with_guard(processors: list) -> list:
    """The processors with `clear_reserved_keys` right after context merging, so bound context is checked too."""
    if clear_reserved_keys in processors:
        return processors
    at = processors.index(structlog.contextvars.merge_contextvars) + 1 if structlog.contextvars.merge_contextvars in processors else 0
    return [*processors[:at], clear_reserved_keys, *processors[at:]]


def guard_task_logging() -> None:
    """Add the reserved-key guard to whatever structlog configuration is active (Airflow's, in a task).

    Call it before a task's first safemon event: loggers cached earlier keep their processors.
    """
    structlog.configure(processors=_with_guard(structlog.get_config()["processors"]))


def configure_logging(level: str = "INFO", *, json: bool = False) -> None:
    """Send structured logs to stderr so command output on stdout stays clean."""
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=_with_guard(
            [
                structlog.contextvars.merge_contextvars,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                renderer,
            ]
        ),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        # Resolve sys.stderr per logger, not once: a replaced stream (tests, daemons) is honoured.
        logger_factory=lambda *_: structlog.PrintLogger(sys.stderr),
        cache_logger_on_first_use=False,
    )
