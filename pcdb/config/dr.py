"""Disaster recovery (§5.2): the scenarios, their targets and the region failover's steps.
"""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    field_validator,
)

from pcdb.config.types import Duration, Model

DrRole = Literal["confirm_failure", "check_replica", "promote_replica", "switch_application", "switch_dns",
                 "check_service"]


class DrStep(Model):
    step: str
    owner: str
    teams: list[str] | None = Field(None, description="the teams of operations.incident.teams whose members confirm "
                                                       "the step (default: the team named by owner)")
    role: DrRole = Field(description="what the step does: the drills pick steps (and who confirms them) by "
                                     "role, never by their place in the list")


class DrScenario(Model):
    detection: str
    response: str
    rto: Duration
    rpo: Duration | Literal["moment-before-corruption"]


class Dr(Model):
    zone_failure: DrScenario
    region_failure: DrScenario
    data_corruption: DrScenario
    region_failover_steps: list[DrStep]
    application_record: str | None = Field(
        None, pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
        description="the record in network.private_dns_zone the application connects to (a CNAME to the primary "
                    "server's name); a real region failover points it at the promoted replica")

    @field_validator("region_failover_steps")
    @classmethod
    def _roles_once(cls, steps: list[DrStep]) -> list[DrStep]:
        roles = [s.role for s in steps]
        twice = sorted({r for r in roles if roles.count(r) > 1})
        if twice:
            raise ValueError(f"role {', '.join(twice)} is given to more than one step; each role once")
        missing = [r for r in ("promote_replica", "switch_application", "switch_dns") if r not in roles]
        if missing:
            raise ValueError(f"no step has role {', '.join(missing)}: the region drill needs it to know who confirms")
        return steps

    def step(self, role: str) -> DrStep:
        """The region-failover step of ``role``."""
        return next(s for s in self.region_failover_steps if s.role == role)
