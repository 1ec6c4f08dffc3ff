"""Notifications (R-MON-4/5): the channels (Prefect blocks) and the routing by severity.
"""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
)

from pcdb.config.monitoring import Level
from pcdb.config.types import Model


class Channel(Model):
    kind: Literal["teams", "email", "sms", "webhook"]
    purpose: str
    audience: list[str]
    block: str = Field(pattern=r"^[a-z0-9-]+/[a-z0-9-]+$",
                       description="the Prefect notification block that delivers it, as "
                                   "'<block-type>/<name>', e.g. ms-teams-webhook/pcdb-prod-teams")
    recipients: list[str] = []


class Notifications(Model):
    channels: dict[str, Channel]
    routing: dict[Level, list[str]]
    local_sink: bool = Field(False, description="`pcdb server up` starts a local sink and points every channel's "
                                                "custom-webhook block at it: alerts land in <orchestrator home>/"
                                                "notifications.log (a sandbox before real channels exist; never "
                                                "production)")
