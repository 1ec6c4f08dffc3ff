"""Notifications routed by severity to the channels the spec names (R-MON-4/5).

Each channel is a Prefect notification block named in the spec ("<block-type>/<name>"). A
channel that fails is logged and skipped: it never hides the runbook's own result.
"""

from __future__ import annotations

import logging

from prefect.blocks.core import Block

from pcdb.config import Environment

logger = logging.getLogger("pcdb.notify")


def notify(env: Environment, level: str, subject: str, body: str) -> dict[str, str]:
    """Send to every channel routed for ``level``; return channel -> 'sent' or the error."""
    outcome = {}
    for name in env.notifications.routing.get(level, []):
        channel = env.notifications.channels[name]
        try:
            block = Block.load(channel.block)
            block.notify(body=body, subject=subject)
            outcome[name] = "sent"
        except Exception as exc:  # noqa: BLE001 - a channel's failure must not mask the run's result
            outcome[name] = f"failed: {type(exc).__name__}: {exc}"
            logger.warning("notification channel %s (block %s) failed: %s", name, channel.block, exc)
    return outcome
