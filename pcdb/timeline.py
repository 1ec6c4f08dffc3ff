"""The timeline a runbook's result keeps: what it did, when (UTC, to the millisecond)."""

from __future__ import annotations

from pcdb import clock


class Timeline:
    """A mixin for a result dataclass with a ``timeline: list[tuple[str, str]]`` field."""

    timeline: list[tuple[str, str]]

    def mark(self, action: str) -> None:
        self.timeline.append((clock.now().isoformat(timespec="milliseconds"), action))

    def timeline_dicts(self) -> list[dict]:
        return [{"at": at, "action": action} for at, action in self.timeline]
