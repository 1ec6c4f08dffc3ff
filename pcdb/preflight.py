"""The preflight's findings: one check of what must hold before Phase 1 (a region that offers the
SKU, a quota with room, a free name, the permissions, the secrets), what was found, and what to do
when it does not hold. Read only: a preflight never changes anything."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""

    def as_dict(self) -> dict:
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "fix": None if self.ok else self.fix}


def as_json(checks: list[Check]) -> dict:
    """The contract of `pcdb preflight --json`: {ok, checks: [{name, ok, detail, fix}]}."""
    return {"ok": all(c.ok for c in checks), "checks": [c.as_dict() for c in checks]}


def refusal(checks: list[Check]) -> str | None:
    """None when every check holds; otherwise one sentence per failing check, with what to do."""
    failed = [c for c in checks if not c.ok]
    if not failed:
        return None
    return (f"the preflight found {len(failed)} problem(s) before Phase 1; nothing was changed: "
            + " / ".join(f"{c.name}: {c.detail}; what to do: {c.fix}" for c in failed))
