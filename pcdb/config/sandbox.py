"""The local sandbox: where it lives and how it stands for production's disk.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from pydantic import (
    Field,
)

from pcdb.config.types import Duration, Model, Size


class SandboxSpec(Model):
    root: str | None = Field(None, description="folder of the sandbox; default /var/lib/pcdb/<env> "
                                               "as root, ~/.local/state/pcdb/<env> otherwise")
    ports: dict[Literal["node1", "node2", "replica"], Annotated[int, Field(ge=0, le=65535)]] = Field(
        default_factory=dict, description="fixed ports (1024-65535 unless root); absent or 0 = a free port is chosen")
    storage_quota: Size = Field(description="stands for the server's storage size in metrics")
    extra_preload_libraries: list[Literal["pgaudit", "auto_explain", "pg_prewarm", "pg_hint_plan"]] = Field(
        default_factory=list,
                                               description="loaded when installed (e.g. pgaudit)")
    fsync: bool = True
    start_timeout: Duration = timedelta(seconds=60)
    auto_failover_after: Duration = Field(
        timedelta(seconds=10), description="the supervisor `pcdb sandbox up` leaves running promotes the "
                                           "synchronous standby when the primary has been unreachable this long "
                                           "(Azure's ZoneRedundant HA does it in 60-120 s); 0 turns it off")
