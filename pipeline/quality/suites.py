"""Run a Great Expectations suite from `schemas/expectations/` over a DataFrame.

Great Expectations takes seconds to import, so it is imported here, inside the call,
never at DAG parse time or in the stream's hot path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pandas as pd

from pipeline.paths import SCHEMAS

EXPECTATIONS = SCHEMAS / "expectations"


@dataclass(frozen=True)
class QualityReport:
    """Whether a batch met its contract, and a readable line per broken expectation."""

    success: bool
    failures: tuple[str, ...]
    evaluated: int


def load_suite_spec(name: str, values: dict[str, Any]) -> dict:
    """The suite JSON with the kwargs named under `meta.settings` filled from `values`."""
    spec = json.loads((EXPECTATIONS / f"{name}.json").read_text())
    for expectation in spec["expectations"]:
        for kwarg, key in expectation.get("meta", {}).get("settings", {}).items():
            if key not in values:
                raise KeyError(f"expectation suite {name!r} needs the value {key!r}")
            expectation["kwargs"][kwarg] = values[key]
    return spec


def validate(name: str, frame: pd.DataFrame, values: dict[str, Any] | None = None) -> QualityReport:
    """Validate `frame` against the named suite with an ephemeral GX context."""
    import great_expectations as gx
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    spec = load_suite_spec(name, values or {})
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    batch = (
        context.data_sources.add_pandas(name)
        .add_dataframe_asset(name)
        .add_batch_definition_whole_dataframe(name)
        .get_batch(batch_parameters={"dataframe": frame})
    )
    suite = gx.ExpectationSuite(
        name=name,
        expectations=[ExpectationConfiguration(type=e["type"], kwargs=e["kwargs"]).to_domain_obj() for e in spec["expectations"]],
    )
    result = batch.validate(suite)
    failures = []
    for item in result.results:
        if item.success:
            continue
        config = item.expectation_config
        observed = item.result.get("unexpected_percent", item.result.get("observed_value"))
        column = config.kwargs.get("column", "table")
        failures.append(f"{config.type} on {column} failed (observed {observed!r})")
    return QualityReport(success=bool(result.success), failures=tuple(failures), evaluated=len(result.results))
