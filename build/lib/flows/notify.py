"""Notifications routed by severity to the channels the spec names (R-MON-4/5).

Each channel is a Prefect notification block named in the spec ("<block-type>/<name>"). A
channel that fails is logged and skipped: it never hides the runbook's own result.
"""

from __future__ import annotations

import logging

from prefect.blocks.core import Block

from pcdb.config import Environment

logger = logging.getLogger("pcdb.notify")

SMTP_BLOCK = "email-server-credentials"   # prefect-email's SMTP credentials: mail to the channel's recipients


def _send_mail(channel, subject: str, body: str) -> None:
    """One message to every recipient of the channel through the SMTP server of its block."""
    from email.message import EmailMessage

    from prefect_email import EmailServerCredentials

    credentials = EmailServerCredentials.load(channel.block.split("/", 1)[1])
    if not channel.recipients:
        raise ValueError(f"channel {channel.block} has no recipients")
    message = EmailMessage()
    message["Subject"], message["To"] = subject, ", ".join(channel.recipients)
    message["From"] = credentials.username or "pcdb@localhost"
    message.set_content(body)
    with credentials.get_server() as server:
        server.send_message(message)


def notify(env: Environment, level: str, subject: str, body: str,
           channels: list[str] | None = None) -> dict[str, str]:
    """Send to ``channels`` (default: every channel routed for ``level``); return channel ->
    'sent' or the error."""
    outcome = {}
    for name in channels if channels is not None else env.notifications.routing.get(level, []):
        if name not in env.notifications.channels:
            outcome[name] = "failed: no such channel in notifications.channels"
            logger.warning("notification channel %s is not in the spec's channels", name)
            continue
        channel = env.notifications.channels[name]
        try:
            if channel.block.startswith(f"{SMTP_BLOCK}/"):
                _send_mail(channel, subject, body)
            else:
                Block.load(channel.block).notify(body=body, subject=subject)
            outcome[name] = "sent"
        except Exception as exc:  # noqa: BLE001 - a channel's failure must not mask the run's result
            outcome[name] = f"failed: {type(exc).__name__}: {exc}"
            logger.warning("notification channel %s (block %s) failed: %s", name, channel.block, exc)
    return outcome
