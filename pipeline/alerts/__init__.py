"""Alert delivery: Block Kit messages and the Slack sink."""

from pipeline.alerts.messages import build_followup, build_message
from pipeline.alerts.slack import Delivery, SlackDeliveryError, SlackSink, configured

__all__ = ["Delivery", "SlackDeliveryError", "SlackSink", "build_followup", "build_message", "configured"]
