"""Posting alerts to Slack: a bot token (chat.postMessage) or, failing that, an incoming webhook.

With a bot token an alert can carry a trend chart, uploaded with `files_upload_v2` into the
alert's thread; incoming webhooks cannot upload files, so webhook alerts have no picture.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import structlog
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from slack_sdk.http_retry.handler import RetryHandler
from slack_sdk.webhook import WebhookClient

from pipeline.alerts.messages import build_followup, build_message
from pipeline.records import Alert
from pipeline.settings import Settings

log = structlog.get_logger(__name__)

TIMEOUT_S = 15


class SlackDeliveryError(RuntimeError):
    """An alert could not be delivered to Slack after retries. The message never holds a secret."""


@dataclass(frozen=True)
class Delivery:
    """Where a message landed. Webhooks report neither, so a webhook delivery cannot be threaded on."""

    channel: str | None
    ts: str | None
    chart_file_id: str | None = None  # the uploaded trend chart, when there was one


def configured(settings: Settings) -> bool:
    """Whether `settings` name a usable Slack destination (bot token + channel, or a webhook)."""
    return _uses_bot(settings) or settings.slack_webhook_url is not None


def _uses_bot(settings: Settings) -> bool:
    return settings.slack_bot_token is not None and bool(settings.slack_channel)


def _retry_handlers() -> list[RetryHandler]:
    # 429s wait for Slack's Retry-After; dropped connections and 500/503 get one backed-off retry.
    return [
        RateLimitErrorRetryHandler(max_retry_count=2),
        ConnectionErrorRetryHandler(max_retry_count=1),
        ServerErrorRetryHandler(max_retry_count=1),
    ]


class SlackSink:
    """Sends alerts to one Slack destination chosen from Settings.

    With `slack_bot_token` and `slack_channel` it posts through the Web API and returns the
    message's `ts`, so later alerts for the same fingerprint can reply in its thread. With
    only `slack_webhook_url` it posts to the incoming webhook; webhooks return no `ts`, so
    threading is not possible there and `thread_ts` is ignored.
    """

    def __init__(self, settings: Settings) -> None:
        if not configured(settings):
            raise ValueError("Slack is not configured: set SAFEMON_SLACK_BOT_TOKEN and SAFEMON_SLACK_CHANNEL, or SAFEMON_SLACK_WEBHOOK_URL")
        self._channel = settings.slack_channel if _uses_bot(settings) else None
        self._web: WebClient | None = None
        self._webhook: WebhookClient | None = None
        # Values that must never appear in an error message or a log line.
        self._secrets = [s.get_secret_value() for s in (settings.slack_bot_token, settings.slack_webhook_url) if s is not None]
        if self._channel is not None:
            assert settings.slack_bot_token is not None
            self._web = WebClient(
                token=settings.slack_bot_token.get_secret_value(),
                base_url=settings.slack_api_url,
                timeout=TIMEOUT_S,
                retry_handlers=_retry_handlers(),
            )
        else:
            assert settings.slack_webhook_url is not None
            self._webhook = WebhookClient(
                url=settings.slack_webhook_url.get_secret_value(),
                timeout=TIMEOUT_S,
                retry_handlers=_retry_handlers(),
            )

    @property
    def threads(self) -> bool:
        """Whether deliveries return a `ts` that replies can thread on (bot token only)."""
        return self._web is not None

    def post(self, alert: Alert, thread_ts: str | None = None, chart: bytes | None = None) -> Delivery:
        """Post `alert`; with `thread_ts`, as a short follow-up in that message's thread.

        `chart` (a PNG) is uploaded into the alert's thread after the message (bot token
        only; a webhook delivery ignores it). A failed upload is logged and does not fail
        the delivery: the message is out, and retrying it would post it twice.
        """
        text, blocks = build_followup(alert) if thread_ts else build_message(alert)
        logger = log.bind(alert_id=alert.alert_id, kind=alert.kind.value, run_id=alert.run_id, threaded=bool(thread_ts))
        if self._web is not None:
            delivery = self._post_web(text, blocks, thread_ts)
            if chart is not None and delivery.channel and delivery.ts:
                delivery = replace(delivery, chart_file_id=self._upload_chart(alert, chart, delivery.channel, thread_ts or delivery.ts))
        else:
            delivery = self._post_webhook(text, blocks)
        logger.info("slack.posted", channel=delivery.channel, ts=delivery.ts, via="web" if self._web else "webhook", chart=delivery.chart_file_id)
        return delivery

    def _upload_chart(self, alert: Alert, chart: bytes, channel: str, thread_ts: str) -> str | None:
        assert self._web is not None
        try:
            response = self._web.files_upload_v2(
                channel=channel,
                thread_ts=thread_ts,
                file=chart,
                filename=f"trend-{alert.alert_id}.png",
                title=f"Trend: {', '.join(alert.categories) or alert.kind.value}",
            )
        except (SlackApiError, SlackClientError, OSError) as exc:
            log.warning("slack.chart_upload_failed", alert_id=alert.alert_id, error=self._redact(_reason(exc)))
            return None
        files = response.get("files") or [response.get("file") or {}]
        return files[0].get("id") if files else None

    def _post_web(self, text: str, blocks: list[dict], thread_ts: str | None) -> Delivery:
        assert self._web is not None and self._channel is not None
        try:
            response = self._web.chat_postMessage(channel=self._channel, text=text, blocks=blocks, thread_ts=thread_ts)
        except SlackApiError as exc:
            status = exc.response.status_code
            error = exc.response.get("error") if isinstance(exc.response.data, dict) else None
            raise SlackDeliveryError(self._redact(f"chat.postMessage to {self._channel} failed: HTTP {status}, error={error}")) from None
        except (SlackClientError, OSError) as exc:
            raise SlackDeliveryError(self._redact(f"chat.postMessage to {self._channel} failed: {_reason(exc)}")) from None
        return Delivery(channel=response.get("channel"), ts=response.get("ts"))

    def _post_webhook(self, text: str, blocks: list[dict]) -> Delivery:
        assert self._webhook is not None
        try:
            response = self._webhook.send(text=text, blocks=blocks)
        except (SlackClientError, OSError) as exc:
            raise SlackDeliveryError(self._redact(f"webhook post failed: {_reason(exc)}")) from None
        if response.status_code != 200 or response.body != "ok":
            raise SlackDeliveryError(self._redact(f"webhook post failed: HTTP {response.status_code}, body={response.body[:200]!r}"))
        return Delivery(channel=None, ts=None)

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def _reason(exc: BaseException) -> str:
    # urllib's URLError keeps the socket error in `reason`; other errors say it in str().
    reason = getattr(exc, "reason", None)
    return f"{type(exc).__name__}: {reason if reason is not None else exc or 'connection failed'}"
