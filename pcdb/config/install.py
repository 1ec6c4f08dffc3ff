"""The install (§11, §13): its phases, the approvals, the review checklist.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import (
    Field,
    model_validator,
)

from pcdb.config.types import Duration, Model


class Approver(Model):
    role: str
    name: str
    approves: str


class Approval(Model):
    required: bool
    approvers: list[Approver] = []
    timeout: Duration = timedelta(hours=24)


class Phase(Model):
    number: int = Field(ge=1, le=8)
    name: str
    duration: Duration
    owner: str
    depends_on: list[int]


class Install(Model):
    approval: Approval
    phases: list[Phase]
    review_checklist: list[str]

    @model_validator(mode="after")
    def _phases_ordered(self) -> Install:
        numbers = [p.number for p in self.phases]
        if numbers != list(range(1, len(numbers) + 1)):
            raise ValueError(f"phases must be numbered 1..{len(numbers)} in order, got {numbers}")
        for phase in self.phases:
            late = [d for d in phase.depends_on if d >= phase.number]
            if late:
                raise ValueError(f"phase {phase.number} depends on later phase(s) {late}")
        return self
