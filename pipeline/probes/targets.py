"""Targets: the model endpoints safemon probes, declared in a YAML targets file.

A targets file looks like::

    targets:
      - name: support-bot
        endpoint: http://127.0.0.1:8765/v1
        model_version: support-bot-2024-06
        schedule: "@daily"
        suites: [core.harmful, core.injection]
        system_prompt: You are a helpful support assistant.
        concurrency: 16          # optional overrides of the SAFEMON_TARGET_* settings
        judge: {enabled: false}  # optional: this target's judge keys over the top-level ones
        attacker: {seed: 7}      # optional: this target's attacker keys over the top-level ones
    judge:                       # optional: a judge for every target (keys of SAFEMON_JUDGE_*)
      endpoint: http://127.0.0.1:8000/v1
      model: llama-guard-3-8b
      format: llama_guard
    attacker:                    # optional: the attacker of adaptive probes (keys of SAFEMON_ATTACKER_*)
      endpoint: http://127.0.0.1:8001/v1
      model: mixtral-8x7b-instruct
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, Self, TypeVar
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SLUG = r"^[a-z0-9][a-z0-9_-]{0,62}$"
SCHEDULE_PRESETS = frozenset({"@once", "@continuous", "@hourly", "@daily", "@weekly", "@monthly", "@quarterly", "@yearly", "@annually"})
# One cron field: '*', numbers, names (jan, mon), ranges, lists and steps.
_CRON_FIELD = re.compile(r"^[\w*?/,\-#LW]+$")


class TargetsError(ValueError):
    """A targets file cannot be used; the message names the file, the target and the key."""


class EndpointOverride(BaseModel):
    """A model endpoint the probe path talks to besides the target (a judge, an attacker), set in the
    targets file at the top level (every target) or per target: the keys of its settings, without
    the prefix; `enabled: false` turns it off."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    endpoint: str | None = None
    model: str | None = None
    model_version: str | None = None
    timeout_s: float | None = Field(None, gt=0)
    concurrency: int | None = Field(None, ge=1, le=1024)
    rate_limit_per_s: float | None = Field(None, gt=0)
    max_retries: int | None = Field(None, ge=0, le=20)
    budget_per_run: int | None = Field(None, ge=0)

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        return None if value is None else _base_url(value)

    def under(self, top: Self | None) -> Self:
        """This target's keys over the file's top-level ones."""
        if top is None:
            return self
        return top.model_copy(update=self.model_dump(exclude_unset=True))


_O = TypeVar("_O", bound=EndpointOverride)


class JudgeOverride(EndpointOverride):
    """A judge set in the targets file: any of the `SAFEMON_JUDGE_*` settings' keys."""

    format: Literal["llama_guard", "rubric"] | None = None
    budget_per_hour: int | None = Field(None, ge=0)
    band: tuple[float, float] | None = None
    share: float | None = Field(None, gt=0, le=1)
    target_accuracy: float | None = Field(None, gt=0.5, lt=1)
    audit_share: float | None = Field(None, ge=0, le=1)

    @field_validator("band")
    @classmethod
    def _check_band(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not 0 <= value[0] < value[1] <= 1:
            raise ValueError("must be [low, high] with 0 <= low < high <= 1")
        return value


class AttackerOverride(EndpointOverride):
    """An attacker set in the targets file: any of the `SAFEMON_ATTACKER_*` settings' keys."""

    seed: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0, le=2)


class TargetConfig(BaseModel):
    """One deployed model to probe: where it is, what to send it, and when."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=SLUG, description="Deployment name (slug); the key of every stored result")
    endpoint: str = Field(description="Base URL of an OpenAI-compatible API; requests go to {endpoint}/chat/completions")
    # Filled from model_version before validation, so it is never empty on a valid target.
    model: str = Field("", description="Model name sent in each request; defaults to model_version")
    model_version: str = Field(min_length=1, description="Version label stored with results and compared across runs")
    schedule: str = Field("@daily", description="Cron expression or preset (@hourly, @daily, ...)")
    suites: list[str] = Field(default_factory=list, description="Probe suite names run against this target")
    system_prompt: str | None = Field(None, description="System prompt sent when a probe has none of its own")
    baseline_model_version: str | None = Field(
        None, description="Pin the baseline to the latest passed run of this model_version instead of the previous passed run"
    )
    concurrency: int | None = Field(None, ge=1, le=1024, description="Overrides SAFEMON_TARGET_CONCURRENCY")
    rate_limit_per_s: float | None = Field(None, gt=0, description="Overrides SAFEMON_TARGET_RATE_LIMIT_PER_S")
    timeout_s: float | None = Field(None, gt=0, description="Overrides SAFEMON_TARGET_TIMEOUT_S")
    max_retries: int | None = Field(None, ge=0, le=20, description="Overrides SAFEMON_TARGET_MAX_RETRIES")
    max_tokens: int = Field(512, ge=1, description="max_tokens sent in each request")
    temperature: float = Field(0.0, ge=0, le=2, description="temperature sent in each request")
    judge: JudgeOverride | None = Field(None, description="This target's judge keys over the file's top-level `judge` and SAFEMON_JUDGE_*")
    attacker: AttackerOverride | None = Field(None, description="This target's attacker keys over the file's top-level `attacker` and SAFEMON_ATTACKER_*")

    @model_validator(mode="before")
    @classmethod
    def _default_model(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("model") in (None, "") and data.get("model_version"):
            data = {**data, "model": data["model_version"]}
        return data

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str) -> str:
        return _base_url(value)

    @field_validator("schedule")
    @classmethod
    def _check_schedule(cls, value: str) -> str:
        value = value.strip()
        if value.startswith("@"):
            if value not in SCHEDULE_PRESETS:
                raise ValueError(f"unknown preset {value!r}; valid: {', '.join(sorted(SCHEDULE_PRESETS))}")
            return value
        fields = value.split()
        if len(fields) != 5 or not all(_CRON_FIELD.match(f) for f in fields):
            raise ValueError("must be a 5-field cron expression (e.g. '0 3 * * *') or a preset like @daily")
        return " ".join(fields)

    @field_validator("suites")
    @classmethod
    def _check_suites(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("lists a suite twice")
        if any(not s.strip() for s in value):
            raise ValueError("contains an empty suite name")
        return value

    @property
    def chat_url(self) -> str:
        """The chat-completions URL requests are POSTed to."""
        return f"{self.endpoint}/chat/completions"


def _base_url(value: str) -> str:
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http(s) URL such as http://127.0.0.1:8765/v1")
    # A key inside the URL would end up in logs and error messages; it belongs in SAFEMON_TARGET_API_KEY / SAFEMON_JUDGE_API_KEY.
    if parts.username or parts.password:
        raise ValueError("must not contain credentials; set SAFEMON_TARGET_API_KEY (or SAFEMON_JUDGE_API_KEY) instead")
    if parts.query or parts.fragment:
        raise ValueError("must be a base URL without query or fragment")
    return value.strip().rstrip("/")


def load_targets(path: str | Path) -> list[TargetConfig]:
    """Read and validate a targets file (`{targets: [...]}`); names must be unique."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TargetsError(f"{path}: targets file not found (set SAFEMON_TARGETS_FILE)") from None
    except OSError as exc:
        raise TargetsError(f"{path}: cannot read targets file: {exc.strerror or exc}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f":{where.line + 1}" if where is not None else ""
        raise TargetsError(f"{path}{line}: invalid YAML: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(doc, dict) or "targets" not in doc:
        raise TargetsError(f"{path}: expected a mapping with a 'targets' list at the top level")
    extra = sorted(set(doc) - {"targets", "judge", "attacker"})
    if extra:
        raise TargetsError(f"{path}: unknown top-level key(s) {', '.join(map(repr, extra))}; only 'targets', 'judge' and 'attacker' are allowed")
    top_judge = _top_override(path, doc, "judge", JudgeOverride)
    top_attacker = _top_override(path, doc, "attacker", AttackerOverride)
    items = doc["targets"]
    if not isinstance(items, list):
        raise TargetsError(f"{path}: 'targets' must be a list, got {type(items).__name__}")

    targets: list[TargetConfig] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        label = _label(index, item)
        if not isinstance(item, dict):
            raise TargetsError(f"{path}: {label}: expected a mapping, got {type(item).__name__}")
        try:
            target = TargetConfig.model_validate(item)
        except ValidationError as exc:
            problems = "; ".join(_describe(err) for err in exc.errors())
            raise TargetsError(f"{path}: {label}: {problems}") from None
        if top_judge is not None:
            target = target.model_copy(update={"judge": target.judge.under(top_judge) if target.judge else top_judge})
        if top_attacker is not None:
            target = target.model_copy(update={"attacker": target.attacker.under(top_attacker) if target.attacker else top_attacker})
        if target.name in seen:
            raise TargetsError(f"{path}: {label}: key 'name': duplicate of targets[{seen[target.name]}]")
        seen[target.name] = index
        targets.append(target)
    return targets


def _top_override(path: Path, doc: dict[str, Any], key: str, kind: type[_O]) -> _O | None:
    """The file's top-level `judge` or `attacker` block, validated; None when absent."""
    try:
        return kind.model_validate(doc[key]) if doc.get(key) is not None else None
    except ValidationError as exc:
        problems = "; ".join(_describe(err) for err in exc.errors())
        raise TargetsError(f"{path}: {key}: {problems}") from None


def find_target(targets: list[TargetConfig], name: str) -> TargetConfig:
    """The target called `name`; an unknown name raises listing the valid ones."""
    for target in targets:
        if target.name == name:
            return target
    raise TargetsError(f"unknown target {name!r}; valid: {', '.join(sorted(t.name for t in targets)) or '(none)'}")


def _label(index: int, item: object) -> str:
    name = item.get("name") if isinstance(item, dict) else None
    return f"targets[{index}] ({name!r})" if isinstance(name, str) else f"targets[{index}]"


def _describe(err: Any) -> str:
    key = ".".join(str(p) for p in err["loc"]) or "(target)"
    msg = err["msg"].removeprefix("Value error, ")
    return f"key {key!r}: {msg}"
