"""The whole environment spec: every section, and what the runbooks ask of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    model_validator,
)

from pcdb import params
from pcdb.config.azure import Azure
from pcdb.config.backup import Backup
from pcdb.config.decisions import Decisions
from pcdb.config.dr import Dr, DrStep
from pcdb.config.install import Install
from pcdb.config.monitoring import Monitoring
from pcdb.config.network import Network
from pcdb.config.notifications import Notifications
from pcdb.config.operations import Operations
from pcdb.config.orchestrator import OrchestratorSpec
from pcdb.config.sandbox import SandboxSpec
from pcdb.config.security import Security
from pcdb.config.server import Replica, Server, Service
from pcdb.config.types import Model
from pcdb.paths import project_root


class Environment(Model):
    """One environment: what the runbooks install and keep healthy."""

    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,30}$")
    production: bool
    target: Literal["azure", "sandbox"]
    reports_dir: str
    service: Service
    server: Server
    replica: Replica
    network: Network
    azure: Azure | None = None
    sandbox: SandboxSpec | None = None
    parameters: dict[str, Any]
    indexes: dict[str, list[str]] = Field(description="table -> index names (R-IDX-1)")
    security: Security
    backup: Backup
    dr: Dr
    monitoring: Monitoring
    notifications: Notifications
    install: Install
    operations: Operations
    orchestrator: OrchestratorSpec = OrchestratorSpec()
    decisions: Decisions = Decisions()

    @property
    def reports_path(self) -> Path:
        """Where reports go: reports_dir, a relative one inside the project (wherever pcdb was
        started from); the spec check keeps it inside the project or a data folder."""
        path = Path(self.reports_dir)
        return path if path.is_absolute() else project_root() / path

    def approvers(self) -> tuple[str, ...]:
        """The people who approve a production change (§13.2) and decide drills and failovers."""
        return tuple(a.name for a in self.install.approval.approvers)

    def team_members(self, teams: list[str] | tuple[str, ...]) -> tuple[str, ...]:
        """The people of these incident teams, each once."""
        members: dict[str, None] = {}
        for team in teams:
            members.update(dict.fromkeys(self.operations.incident.teams.get(team, [])))
        return tuple(members)

    def confirming_teams(self, step: DrStep) -> list[str]:
        """The teams whose members confirm a region-failover step."""
        return step.teams if step.teams is not None else [step.owner]

    @property
    def work_pool(self) -> str:
        """The environment's work pool: one per environment, one worker polling it."""
        return f"pcdb-{self.name}"

    @model_validator(mode="after")
    def _target_section(self) -> Environment:
        if self.target == "azure" and self.azure is None:
            raise ValueError("target 'azure' needs an 'azure' section")
        if self.target == "sandbox" and self.sandbox is None:
            raise ValueError("target 'sandbox' needs a 'sandbox' section")
        return self

    def valid_parameters(self) -> dict[str, params.ParamValue]:
        """The spec's parameters that are valid, made canonical (for checks across them)."""
        out = {}
        for name, value in {**self.parameters, **self.security.audit}.items():
            try:
                out[name] = params.canonical(name, value)
            except ValueError:
                continue
        return out

    def desired_parameters(self) -> dict[str, params.ParamValue]:
        """Every server parameter the spec sets (performance + audit), made canonical."""
        merged = {**self.parameters, **self.security.audit}
        return {name: params.canonical(name, value) for name, value in merged.items()}
