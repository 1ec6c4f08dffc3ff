"""What a mutating operation did: created, updated, unchanged (or a conflict), with the diff."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Action = Literal["created", "updated", "unchanged", "started", "deleted", "conflict"]


@dataclass(frozen=True)
class Change:
    """One resource's outcome. ``diff`` maps a property to (current, desired)."""

    resource: str
    name: str
    action: Action
    diff: dict[str, tuple[object, object]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return self.action not in ("unchanged", "conflict")

    def as_dict(self) -> dict:
        return {"resource": self.resource, "name": self.name, "action": self.action,
                "diff": {k: {"current": a, "desired": b} for k, (a, b) in self.diff.items()},
                "notes": list(self.notes)}
