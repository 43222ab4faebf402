"""The README's generated sections match the code, and the deploy files name real settings."""

from __future__ import annotations

import re

import pytest
from pydantic import Field, SecretStr

from pipeline.report.readme import SECTIONS, refresh, splice
from pipeline.report.settings_reference import render_settings_reference
from pipeline.settings import Settings
from tests.support.env import ROOT

README = ROOT / "README.md"
# Variables of the deploy files that configure the services around safemon, not safemon.
DEPLOY_ONLY = {"SAFEMON_WRITER_PASSWORD", "SAFEMON_READONLY_PASSWORD", "SAFEMON_STREAM_WORKERS", "SAFEMON_CHROMIUM"}


@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_readme_sections_are_current(name) -> None:
    assert refresh(README, name, write=False), f"README.md is stale: run `safemon docs {name} --write`"


def test_reference_lists_every_setting_with_type_default_and_description() -> None:
    table = render_settings_reference()
    rows = [line for line in table.splitlines() if line.startswith("| `SAFEMON_")]
    assert len(rows) == len(Settings.model_fields)
    for name, field in Settings.model_fields.items():
        row = next(r for r in rows if r.startswith(f"| `SAFEMON_{name.upper()}`"))
        assert field.description and field.description.split(";")[0][:30] in row.replace("\\|", "|")
    assert "| `SAFEMON_SLACK_BOT_TOKEN` | secret, optional | unset |" in table
    assert "one of `holm`, `fdr_bh` | `holm`" in table


def test_a_new_setting_makes_the_readme_stale_until_rewritten(tmp_path) -> None:
    class Grown(Settings):
        report_theme: str = Field("light", description="Colours of the HTML report")
        report_token: SecretStr | None = Field(None, description="A secret | with a pipe")

    grown = render_settings_reference(Grown)
    assert "| `SAFEMON_REPORT_THEME` | str | `light` | Colours of the HTML report |" in grown
    assert "A secret \\| with a pipe" in grown
    copy = tmp_path / "README.md"
    copy.write_text(README.read_text())
    section = SECTIONS["settings"]
    stale = splice(copy.read_text(), render_settings_reference(), section.start, section.end)
    copy.write_text(stale.replace("| `SAFEMON_AIRFLOW_URL`", "| `SAFEMON_AIRFLOW_URI`"))
    assert not refresh(copy, "settings", write=False)
    assert "SAFEMON_AIRFLOW_URI" in copy.read_text()  # a check never writes
    assert not refresh(copy, "settings", write=True)
    assert refresh(copy, "settings", write=False)
    assert copy.read_text() == README.read_text()


def test_missing_markers_are_an_error(tmp_path) -> None:
    bare = tmp_path / "README.md"
    bare.write_text("# nothing generated here\n")
    with pytest.raises(ValueError, match="marker"):
        refresh(bare, "settings", write=True)
    with pytest.raises(KeyError, match="valid: cookbook, settings"):
        refresh(bare, "colours", write=False)


def test_deploy_files_and_readme_name_only_real_settings() -> None:
    known = {f"SAFEMON_{name.upper()}" for name in Settings.model_fields}
    # deploy/kafka's scripts have their own SAFEMON_KAFKA_* knobs for the dev broker.
    deploy = [ROOT / "deploy" / "compose.yaml", *(ROOT / "deploy" / "clickhouse").rglob("*"), *(ROOT / "deploy" / "airflow").rglob("*")]
    files = [README, *(p for p in deploy if p.is_file())]
    named = {var: path for path in files for var in re.findall(r"SAFEMON_[A-Z0-9_]*[A-Z0-9]", path.read_text())}
    unknown = {var: str(path.relative_to(ROOT)) for var, path in named.items() if var not in known | DEPLOY_ONLY}
    assert not unknown, f"not settings: {unknown}"
    assert {"SAFEMON_CLICKHOUSE_READONLY_DSN", "SAFEMON_CLICKHOUSE_CLUSTER", "SAFEMON_AIRFLOW_URL"} <= set(named)
