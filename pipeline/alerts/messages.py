"""Slack messages for alerts: a plain-text fallback plus Block Kit blocks, within Slack's limits."""

from __future__ import annotations

from collections.abc import Iterable

from pipeline.records import Alert, AlertKind, CategoryStat, Comparison, Sample, Source

# Slack's documented Block Kit limits (https://api.slack.com/reference/block-kit/blocks).
MAX_BLOCKS = 50
MAX_SECTION_TEXT = 3000
MAX_HEADER_TEXT = 150
MAX_CONTEXT_ELEMENTS = 10
MAX_CONTEXT_TEXT = 2000
MAX_BUTTON_TEXT = 75
MAX_URL = 3000
# Slack truncates message text above 40k characters; the fallback only has to be a summary.
MAX_FALLBACK_TEXT = 3000

MAX_SAMPLES = 3
SAMPLE_CHARS = 300

_KIND_PREFIX = {
    AlertKind.REGRESSION: ":rotating_light: Regression",
    AlertKind.RECOVERY: ":white_check_mark: Recovered",
    AlertKind.DATA_QUALITY: ":warning: Run unhealthy",
    AlertKind.DRIFT: ":chart_with_upwards_trend: Drift",
}
_ELLIPSIS = "…"


def build_message(alert: Alert) -> tuple[str, list[dict]]:
    """The top-level Slack message for `alert`: (fallback text, Block Kit blocks)."""
    shown = _shown_comparisons(alert)
    blocks: list[dict] = [
        {"type": "header", "text": {"type": "plain_text", "text": _cut(alert.title or alert.kind.value, MAX_HEADER_TEXT), "emoji": True}},
        _section(f"*{_KIND_PREFIX[alert.kind]}* · severity *{_escape(alert.severity)}*\n{_lead(alert)}"),
        _context(_context_lines(alert)),
    ]
    # Reserve room for the blocks that always follow the comparisons, so that those are the
    # ones dropped (with a note) when a message would exceed Slack's 50-block limit.
    tail = _tail_blocks(alert)
    room = MAX_BLOCKS - len(blocks) - len(tail) - 1
    comparison_blocks = [_section(_comparison_text(alert, c)) for c in shown]
    if len(comparison_blocks) > room:
        omitted = len(comparison_blocks) - room
        comparison_blocks = comparison_blocks[:room] + [_context([f"…and {omitted} more categories (see the SQL below)"])]
    others = len(alert.comparisons) - len(shown)
    if alert.kind is AlertKind.REGRESSION and shown and others > 0:
        comparison_blocks.append(_context([f"{others} other categories compared; none regressed"]))
    blocks += comparison_blocks[: MAX_BLOCKS - len(blocks) - len(tail)]
    blocks += tail
    return _fallback(alert, shown), blocks


def build_followup(alert: Alert) -> tuple[str, list[dict]]:
    """A short threaded reply to an earlier message for the same fingerprint: what changed in this run."""
    shown = _shown_comparisons(alert)
    verb = {
        AlertKind.REGRESSION: "Still regressed",
        AlertKind.RECOVERY: "Recovered",
        AlertKind.DATA_QUALITY: "Run unhealthy" if alert.source == Source.PROBE else "Still unhealthy",
        AlertKind.DRIFT: "Agreement still low" if alert.source == Source.JUDGE else "Drift persists",
    }[alert.kind]
    lines = [f"*{verb}* in run `{_escape(alert.run_id)}` ({_escape(alert.model_version)}): {_escape(alert.summary)}"]
    lines += [f"• {_comparison_line(c, alert.source)}" for c in shown]
    blocks: list[dict] = [_section("\n".join(lines))]
    if alert.link:
        blocks.append(_context([f"<{_link_target(alert.link)}|Open the run>"]))
    return _fallback(alert, shown), blocks


def _shown_comparisons(alert: Alert) -> list[Comparison]:
    if alert.kind is AlertKind.REGRESSION:
        return [c for c in alert.comparisons if c.regressed]
    if alert.kind is AlertKind.RECOVERY:
        return [c for c in alert.comparisons if not c.regressed]
    return list(alert.comparisons)


def _lead(alert: Alert) -> str:
    if alert.kind is AlertKind.DATA_QUALITY:
        return f"Run unhealthy: {_escape(alert.summary)}"
    if alert.kind is AlertKind.RECOVERY:
        return f"Recovered: {_escape(alert.summary)}"
    return _escape(alert.summary)


def _context_lines(alert: Alert) -> list[str]:
    model = f"model `{_escape(alert.model_version)}`"
    if alert.baseline_model_version:
        model += f" vs baseline `{_escape(alert.baseline_model_version)}`"
    runs = f"run `{_escape(alert.run_id)}`"
    if alert.baseline_run_id:
        runs += f" vs baseline run `{_escape(alert.baseline_run_id)}`"
    return [f"target *{_escape(alert.target)}*", f"suite *{_escape(alert.suite)}*" if alert.suite else f"source *{alert.source}*", model, runs]


def _tail_blocks(alert: Alert) -> list[dict]:
    blocks = [_sample_section(s) for s in alert.samples[:MAX_SAMPLES]]
    if alert.sql:
        blocks.append(_section(_code_block("Reproduce with", alert.sql)))
    if alert.link:
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": _cut("Open the run", MAX_BUTTON_TEXT)},
                        "url": _link_target(alert.link),
                        "action_id": "open_run",
                    }
                ],
            }
        )
    blocks.append(_context([f"alert `{_escape(alert.alert_id)}` · fingerprint `{_escape(alert.fingerprint)}`"]))
    return blocks


def _metric(category: str, source: Source) -> str:
    """What a comparison's rate is: head-judge disagreement (the agreement audit), the share of
    samples flagged (the stream), over-refusal (refused benign prompts), or attack success."""
    if source == Source.JUDGE:
        return "Disagreement"
    if source == Source.STREAM:
        return "Violation rate"
    return "Over-refusal" if category == "over_refusal" else "ASR"


def _rate(stat: CategoryStat) -> str:
    return f"{stat.rate * 100:.1f}% [{stat.ci_low * 100:.1f}, {stat.ci_high * 100:.1f}] (n={stat.n})"


def _p(p: float) -> str:
    return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def _comparison_line(c: Comparison, source: Source) -> str:
    return f"*{_escape(c.category)}*: {_metric(c.category, source)} {_rate(c.baseline)} → {_rate(c.current)}, p={_p(c.p_value)}, p_adj={_p(c.p_adjusted)}"


def _comparison_text(alert: Alert, c: Comparison) -> str:
    change = f"{c.effect * 100:+.1f} pts"
    label = "recovered" if alert.kind is AlertKind.RECOVERY else change
    return f"{_comparison_line(c, alert.source)} ({label})"


def _sample_section(sample: Sample) -> dict:
    prompt = _escape_within(sample.prompt.strip(), SAMPLE_CHARS)
    response = _escape_within(sample.response.strip(), SAMPLE_CHARS)
    quoted = "\n".join(f">{line}" for line in response.splitlines() or [""])
    head = f"*Sample* `{_escape(sample.probe_id)}` ({_escape(sample.category)})\n_Prompt:_ {' '.join(prompt.split())}\n"
    return _section(head + quoted)


def _code_block(title: str, code: str) -> str:
    head, fence = f"*{title}:*\n```", "```"
    budget = MAX_SECTION_TEXT - len(head) - len(fence)
    return head + _escape_within(code.strip(), budget) + fence


def _fallback(alert: Alert, shown: Iterable[Comparison]) -> str:
    parts = [f"{_KIND_PREFIX[alert.kind].split(' ', 1)[1]}: {alert.title}", f"{alert.target} / {alert.scope} / {alert.model_version}"]
    if alert.kind is AlertKind.DATA_QUALITY:
        parts.append(f"run unhealthy: {alert.summary}" if alert.source == Source.PROBE else alert.summary)
    metric = "disagreement " if alert.source == Source.JUDGE else ""
    parts += [f"{c.category} {metric}{c.baseline.rate * 100:.1f}% → {c.current.rate * 100:.1f}% (p_adj={_p(c.p_adjusted)})" for c in shown]
    if alert.link:
        parts.append(alert.link)
    return _escape_within(" — ".join(parts), MAX_FALLBACK_TEXT)


def _section(mrkdwn: str) -> dict:
    return {"type": "section", "text": {"type": "mrkdwn", "text": _clip(mrkdwn, MAX_SECTION_TEXT)}}


def _context(lines: list[str]) -> dict:
    elements = [{"type": "mrkdwn", "text": _clip(line, MAX_CONTEXT_TEXT)} for line in lines[:MAX_CONTEXT_ELEMENTS]]
    return {"type": "context", "elements": elements}


def _link_target(url: str) -> str:
    # Inside <url|label> Slack ends the link at '|' or '>', so those must not appear raw.
    return url.replace("|", "%7C").replace(">", "%3E").replace("<", "%3C")[:MAX_URL]


def _escape(text: str) -> str:
    """Slack's mrkdwn control characters; user content must not open links or mentions."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _escape_within(text: str, limit: int) -> str:
    """Escape `text` and fit it into `limit` characters without cutting an entity in half."""
    escaped = _escape(text)
    if len(escaped) <= limit:
        return escaped
    out, size = [], 0
    for ch in text:
        piece = _escape(ch)
        if size + len(piece) > limit - len(_ELLIPSIS):
            break
        out.append(piece)
        size += len(piece)
    return "".join(out) + _ELLIPSIS


def _cut(text: str, limit: int) -> str:
    """Cut plain text (no entities) to `limit` characters."""
    return text if len(text) <= limit else text[: limit - len(_ELLIPSIS)] + _ELLIPSIS


def _clip(text: str, limit: int) -> str:
    """Cut already-escaped text to `limit` characters, backing off an entity cut in half."""
    if len(text) <= limit:
        return text
    cut = text[: limit - len(_ELLIPSIS)]
    amp = cut.rfind("&")
    if amp != -1 and ";" not in cut[amp:]:
        cut = cut[:amp]
    return cut + _ELLIPSIS
