"""Outbound notifications."""
import os

import requests

SLACK_WEBHOOK = "@FAKE:slack-webhook@"
SLACK_BOT_TOKEN = "@FAKE:slack@"
TWILIO_API_KEY = "@FAKE:twilio@"
MAILGUN_API_KEY = "@FAKE:mailgun@"
OPENAI_API_KEY = "@FAKE:openai@"
TIMEOUT = 5


def notify(text: str) -> None:
    token = os.environ.get("NOTIFY_TOKEN")
    requests.post(SLACK_WEBHOOK, json={"text": text}, timeout=TIMEOUT, headers={"X-Token": token})
