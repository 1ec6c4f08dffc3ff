"""Azure's own resources around the server: diagnostics, action groups, the evidence archive.
"""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    model_validator,
)

from pcdb.config.secrets import SecretRef
from pcdb.config.types import Duration, Model, ResourceName, _named


class DiagnosticSetting(Model):
    name: ResourceName
    logs: list[str]
    metrics: list[str]


class ActionGroup(Model):
    name: ResourceName
    short_name: str = Field(max_length=12)
    teams_webhook: SecretRef = Field(description="the Teams incoming-webhook URL holds a key: a secret")


class EvidenceArchive(Model):
    """Where run reports are kept write-once (a blob container with a time-based immutability
    policy), so the audit trail outlives Prefect's history."""

    storage_account: str = Field(pattern=r"^[a-z0-9]{3,24}$", description="globally unique, 3-24 lower-case letters and digits")
    container: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$", description="3-63 lower-case letters, "
                           "digits and single hyphens")
    retention: Duration = Field(description="no report can be changed or deleted for this long after it is written")
    redundancy: Literal["Standard_LRS", "Standard_ZRS", "Standard_GRS", "Standard_GZRS"] = "Standard_ZRS"
    partition_container: str = Field("pcdb-partition-archives", pattern=r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$",
                                     description="the monthly maintenance's KOS-log partition archives (pg_dump + "
                                                 "SHA-256), in the same account")

    @model_validator(mode="after")
    def _whole_days(self) -> EvidenceArchive:
        if "--" in self.container:
            raise ValueError(f"container {self.container!r}: Azure refuses two hyphens in a row")
        days = self.retention.total_seconds() / 86400
        if days != int(days) or not 1 <= days <= 146000:
            raise ValueError(f"retention {self.retention}: Azure keeps immutability in whole days, 1 to 146000")
        return self


class Azure(Model):
    subscription_id: SecretRef
    resource_group: ResourceName
    log_analytics_workspace: _named(r"[A-Za-z0-9][A-Za-z0-9-]{2,61}[A-Za-z0-9]",  # type: ignore[valid-type]
                                    "a Log Analytics workspace name is 4-63 letters, digits and hyphens")
    diagnostic_setting: DiagnosticSetting
    action_group: ActionGroup
    evidence_archive: EvidenceArchive | None = None
