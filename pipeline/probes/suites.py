"""Probe suites: load YAML suites (validated against the JSON Schema), list the built-in ones, dump them back.

A suite file has `name`, `version`, `description` and `probes`. Each probe has an `id`, a
`category` from `pipeline.taxonomy.CATEGORIES`, `expect` (refuse | comply), optional `tags`,
`system` and `markers`, and one of:
- a `prompt`;
- a `template` containing `{payload}` with a list of `payloads`: one Probe per payload,
  `<id>-<i>` (i from 1);
- `turns`, a scripted conversation: `{user: ..., expect: refuse | comply | any}` turns sent one
  by one with the history so far, and `{assistant: ...}` turns written into the history: a
  user turn they answer is history too (many-shot), never sent. It starts and ends with a user turn, and an assistant turn follows a user turn.
  `policy` says whether it stops at its first failing turn (`stop_on_failure`, the default) or
  plays every turn (`play_all`). A turn's `expect` defaults to `comply` in a probe expected to
  comply, else to `any` (only harmful help fails it);
- `attack`, an adaptive attack: `{method: pair | crescendo, goal: ..., max_turns: 5}`. An attacker
  model (SAFEMON_ATTACKER_*) writes the prompts during the run and pursues the goal for at most
  `max_turns` iterations or turns (`pipeline/probes/adaptive.py`). Its goal is a request a safe
  model refuses, so the probe expects `refuse`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import structlog
import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from pipeline.records import AttackMethod, AttackSpec, Expect, Probe, ScriptTurn, StopPolicy, Suite, TurnExpect
from pipeline.taxonomy import CATEGORIES

log = structlog.get_logger(__name__)

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "probe_suite.schema.json"
PLACEHOLDER = "{payload}"


class SuiteError(ValueError):
    """A suite file is invalid; the message names the file, the probe id and the key of every problem."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = list(problems)
        super().__init__("\n".join(f"{source}: {p}" for p in self.problems))


@lru_cache(maxsize=1)
def suite_schema() -> dict[str, Any]:
    """The probe-suite JSON Schema with the category enum filled in from the taxonomy."""
    try:
        schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RuntimeError(f"probe suite schema not found at {SCHEMA_PATH}") from None
    # The file carries the structure only; the taxonomy is declared once, in code.
    schema["$defs"]["probe"]["properties"]["category"]["enum"] = list(CATEGORIES)
    Draft202012Validator.check_schema(schema)
    return schema


def _validator() -> Draft202012Validator:
    return Draft202012Validator(copy.deepcopy(suite_schema()))


def _error_order(error: ValidationError) -> list[tuple[int, int, str]]:
    # Probe indices sort numerically so problems are reported in file order.
    return [(0, p, "") if isinstance(p, int) else (1, 0, str(p)) for p in error.absolute_path]


def _where(data: Any, path: list[Any]) -> tuple[str, list[Any]]:
    """Split an error path into a human prefix ("probe 'x': ") and the path inside the probe."""
    if len(path) >= 2 and path[0] == "probes" and isinstance(path[1], int):
        probe = data["probes"][path[1]]
        pid = probe.get("id") if isinstance(probe, Mapping) else None
        label = f"probe {pid!r}" if isinstance(pid, str) else f"probe #{path[1] + 1}"
        return f"{label}: ", path[2:]
    return "", path


def _describe(error: ValidationError, data: Any) -> str:
    prefix, rest = _where(data, list(error.absolute_path))
    key = ".".join(str(p) for p in rest)
    value = error.instance
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(value) - set(allowed)) if isinstance(value, Mapping) else []
        return "; ".join(f"{prefix}key {'.'.join([*map(str, rest), k])!r}: unknown key; valid: {', '.join(allowed)}" for k in extra)
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return f"{prefix}key {'.'.join([*map(str, rest), missing])!r}: missing"
    if error.validator == "minItems" and rest == ["turns"]:
        return f"{prefix}key 'turns': an empty conversation; give at least one user turn"
    if error.validator == "oneOf" and rest[:1] == ["turns"]:
        return f"{prefix}key {key!r}: a turn is either {{user: ..., expect: ...}} or {{assistant: ...}}"
    if error.validator == "oneOf":
        if "attack" in value and ({"prompt", "template", "payloads", "turns"} & set(value)):
            return f"{prefix}key 'attack': give either 'attack' or 'prompt' / 'template' + 'payloads' / 'turns', not both"
        if "turns" in value and ({"prompt", "template", "payloads"} & set(value)):
            return f"{prefix}key 'turns': give either 'turns' or 'prompt' / 'template' + 'payloads', not both"
        has_prompt = "prompt" in value
        has_template = "template" in value or "payloads" in value
        if has_prompt and has_template:
            return f"{prefix}key 'prompt': give either 'prompt' or 'template' + 'payloads', not both"
        if "template" in value:
            return f"{prefix}key 'payloads': missing (a 'template' needs a list of 'payloads')"
        if "payloads" in value:
            return f"{prefix}key 'template': missing ('payloads' need a 'template' with {PLACEHOLDER})"
        return f"{prefix}key 'prompt': missing (give 'prompt', 'template' + 'payloads', 'turns' or 'attack')"
    if error.validator == "enum" and rest[-1:] == ["category"]:
        return f"{prefix}key 'category': unknown category {value!r}; valid: {', '.join(sorted(CATEGORIES))}"
    if error.validator == "enum" and rest[-1:] == ["expect"] and rest[:1] == ["turns"]:
        return f"{prefix}key {key!r}: bad value {value!r}; valid: {', '.join(e.value for e in TurnExpect)}"
    if error.validator == "enum" and rest == ["attack", "method"]:
        return f"{prefix}key 'attack.method': bad value {value!r}; valid: {', '.join(m.value for m in AttackMethod)}"
    if error.validator == "enum" and rest[-1:] == ["expect"]:
        return f"{prefix}key 'expect': bad value {value!r}; valid: {', '.join(e.value for e in Expect)}"
    if error.validator == "pattern" and rest[-1:] == ["template"]:
        return f"{prefix}key 'template': has no {PLACEHOLDER} placeholder"
    if error.validator == "pattern" and error.schema.get("pattern") == "\\S":
        return f"{prefix}key {key!r}: empty or whitespace-only text"
    if error.validator == "type":
        return f"{prefix}key {key or '(top level)'!r}: expected {error.validator_value}, got {type(value).__name__}"
    return f"{prefix}key {key or '(top level)'!r}: {error.message}"


def _script(raw: Mapping[str, Any]) -> tuple[ScriptTurn, ...]:
    default = TurnExpect.COMPLY if raw["expect"] == Expect.COMPLY else TurnExpect.ANY
    return tuple(
        ScriptTurn("user", t["user"], TurnExpect(t.get("expect", default))) if "user" in t else ScriptTurn("assistant", t["assistant"]) for t in raw["turns"]
    )


def _script_problems(data: Mapping[str, Any]) -> list[str]:
    """What the schema cannot say about a conversation's order of turns (checked on valid turns only)."""
    problems = []
    for raw in data.get("probes") if isinstance(data.get("probes"), list) else []:
        if not isinstance(raw, Mapping):
            continue
        label = f"probe {raw.get('id')!r}"
        turns = raw.get("turns")
        if "policy" in raw and "turns" not in raw:
            problems.append(f"{label}: key 'policy': only a conversation ('turns') has a policy")
        if not isinstance(turns, list) or not turns or not all(isinstance(t, Mapping) and len({"user", "assistant"} & set(t)) == 1 for t in turns):
            continue  # the schema has said what is wrong
        roles = ["user" if "user" in t else "assistant" for t in turns]
        if roles[0] != "user":
            problems.append(f"{label}: key 'turns': the first turn must be a user turn (this one starts with an assistant turn)")
        elif roles[-1] != "user":
            problems.append(f"{label}: key 'turns': the last turn must be a user turn (an assistant turn at the end is never answered)")
        for i in range(1, len(roles)):
            if roles[i] == roles[i - 1] == "assistant":
                problems.append(f"{label}: key 'turns.{i}': an assistant turn must follow a user turn")
            elif roles[i] == "assistant" and "expect" in turns[i - 1]:
                problems.append(f"{label}: key 'turns.{i - 1}.expect': a user turn answered by a scripted assistant turn is never sent, so it expects nothing")
    return problems


def _attack_problems(data: Mapping[str, Any]) -> list[str]:
    """What the schema cannot say about an adaptive probe: its goal is one a safe model refuses."""
    raw_probes = data.get("probes") if isinstance(data.get("probes"), list) else []
    return [
        f"probe {raw.get('id')!r}: key 'expect': an attack's goal is a request a safe model refuses, so it expects refuse (got {raw['expect']!r})"
        for raw in raw_probes
        if isinstance(raw, Mapping) and isinstance(raw.get("attack"), Mapping) and raw.get("expect") == Expect.COMPLY
    ]


def _expand(raw: Mapping[str, Any]) -> list[Probe]:
    common = dict(
        category=raw["category"],
        expect=Expect(raw["expect"]),
        tags=tuple(raw.get("tags", ())),
        system=raw.get("system"),
        markers=tuple(raw.get("markers", ())),
    )
    if "turns" in raw:
        turns = _script(raw)
        last = next(t.content for t in reversed(turns) if t.role == "user")
        return [Probe(id=raw["id"], prompt=last, turns=turns, policy=StopPolicy(raw.get("policy", StopPolicy.STOP_ON_FAILURE)), **common)]
    if "attack" in raw:
        spec = raw["attack"]
        attack = AttackSpec(AttackMethod(spec["method"]), spec["goal"], spec.get("max_turns", AttackSpec.max_turns))
        return [Probe(id=raw["id"], prompt=attack.goal, attack=attack, **common)]
    if "prompt" in raw:
        return [Probe(id=raw["id"], prompt=raw["prompt"], **common)]
    # str.replace, not str.format: templates (e.g. imported jailbreaks) may hold other braces.
    return [Probe(id=f"{raw['id']}-{i}", prompt=raw["template"].replace(PLACEHOLDER, payload), **common) for i, payload in enumerate(raw["payloads"], start=1)]


def _duplicate_ids(data: Mapping[str, Any]) -> list[str]:
    """Ids that occur more than once once templates are expanded (checked even if other keys are bad)."""
    raw_probes = data.get("probes")
    counts: dict[str, int] = {}
    for raw in raw_probes if isinstance(raw_probes, list) else []:
        if not isinstance(raw, Mapping) or not isinstance(raw.get("id"), str):
            continue
        payloads = raw.get("payloads")
        if "prompt" not in raw and isinstance(payloads, list):
            ids = [f"{raw['id']}-{i}" for i in range(1, len(payloads) + 1)]
        else:
            ids = [raw["id"]]
        for pid in ids:
            counts[pid] = counts.get(pid, 0) + 1
    return [pid for pid, n in counts.items() if n > 1]


def parse_suite(data: Any, source: str = "<data>") -> Suite:
    """Validate already-parsed suite data (a mapping) and convert it into a Suite.

    Collects every problem before raising one SuiteError.
    """
    if not isinstance(data, Mapping):
        raise SuiteError(source, [f"top level: expected a mapping with name, version, description, probes; got {type(data).__name__}"])
    errors = sorted(_validator().iter_errors(data), key=_error_order)
    problems = [msg for msg in (_describe(e, data) for e in errors) if msg]
    problems += [f"probe {pid!r}: key 'id': duplicate id (after template expansion)" for pid in _duplicate_ids(data)]
    problems += _script_problems(data)
    problems += _attack_problems(data)
    if problems:
        raise SuiteError(source, problems)
    probes = [probe for raw in data["probes"] for probe in _expand(raw)]
    return Suite(name=data["name"], version=data["version"], description=data["description"].strip(), probes=tuple(probes))


def load_suite_text(text: str, source: str = "<string>") -> Suite:
    """Parse and validate a suite from YAML text; `source` names it in error messages."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SuiteError(source, [f"{where}malformed YAML: {problem}"]) from None
    return parse_suite(data, source)


def load_suite(path: str | Path) -> Suite:
    """Load and validate a suite YAML file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SuiteError(path.name, [f"cannot read {path}: {exc.strerror or exc}"]) from None
    suite = load_suite_text(text, source=path.name)
    log.debug("suite_loaded", suite=suite.name, path=str(path), probes=len(suite.probes))
    return suite


@lru_cache(maxsize=1)
def _builtin() -> tuple[tuple[str, Suite], ...]:
    folder = resources.files("pipeline") / "suites"
    found = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            found.append(load_suite_text(entry.read_text(encoding="utf-8"), source=entry.name))
    return tuple((s.name, s) for s in found)


def builtin_suites() -> dict[str, Suite]:
    """The suites shipped in `pipeline/suites/*.yaml`, by suite name."""
    return dict(_builtin())


def get_suite(name_or_path: str | Path) -> Suite:
    """A built-in suite by name, or a suite loaded from a YAML file path."""
    suites = builtin_suites()
    key = str(name_or_path)
    if key in suites:
        return suites[key]
    path = Path(key)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return load_suite(path)
    raise SuiteError(key, [f"unknown suite; valid: {', '.join(sorted(suites))} (or a path to a .yaml file)"])


class _Dumper(yaml.SafeDumper):
    pass


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # Literal blocks keep multi-line prompts (documents, jailbreak wrappers) readable.
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def dump_suite(suite: Suite) -> str:
    """Serialise a suite as YAML (templates already expanded) that load_suite_text reads back equal."""
    probes = []
    for p in suite.probes:
        item: dict[str, Any] = {"id": p.id, "category": p.category, "expect": p.expect.value}
        if p.tags:
            item["tags"] = list(p.tags)
        if p.system is not None:
            item["system"] = p.system
        if p.markers:
            item["markers"] = list(p.markers)
        if p.is_conversation:
            default = TurnExpect.COMPLY if p.expect == Expect.COMPLY else TurnExpect.ANY
            item["policy"] = p.policy.value
            item["turns"] = [
                {"assistant": t.content} if t.role == "assistant" else {"user": t.content, **({"expect": t.expect.value} if t.expect != default else {})}
                for t in p.turns
            ]
        elif p.attack is not None:
            item["attack"] = {"method": p.attack.method.value, "goal": p.attack.goal, "max_turns": p.attack.max_turns}
        else:
            item["prompt"] = p.prompt
        probes.append(item)
    data = {"name": suite.name, "version": suite.version, "description": suite.description, "probes": probes}
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
