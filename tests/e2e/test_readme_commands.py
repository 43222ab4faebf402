"""The README's two commands, as a newcomer runs them."""

from __future__ import annotations

import os
import re
import subprocess

from tests.support.env import ROOT


def test_readme_names_exactly_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = set(re.findall(r"^make \w+", readme, flags=re.M))
    assert commands == {"make demo", "make test"}
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_make_demo_catches_the_regression(tmp_path) -> None:
    env = {**os.environ, "SAFEMON_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'store'}", "COLUMNS": "160"}
    env.pop("SAFEMON_SLACK_BOT_TOKEN", None)
    env.pop("SAFEMON_SLACK_WEBHOOK_URL", None)
    done = subprocess.run(["make", "demo"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    caught = re.search(r"Regression caught in \d+ categor\w+: (.*)", done.stdout)
    assert caught, done.stdout[-3000:]
    assert "indiscriminate_weapons" in caught.group(1)
    assert 'safemon sql "SELECT' in done.stdout
    # The recorded judge decided the v1 answers the heads were unsure of, and overruled some.
    judged = re.search(r"judge: decided (\d+) verdicts the heads were unsure of \((\d+) changed\)", done.stdout)
    assert judged and int(judged.group(1)) > 0, done.stdout[-3000:]
