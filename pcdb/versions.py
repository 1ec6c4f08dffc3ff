"""PostgreSQL's version lifecycle as data: for each major, the community's end of life and Azure's
standard and extended support, from ``pcdb/data/postgresql-versions.json`` (each date's source is
noted there). ``support(major, day)`` says where a major stands on a day; the spec check, the plan,
the cost review and the ``version-support`` health rule all read it, so one edit of the table moves
every warning.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from functools import cache
from typing import Literal

from pcdb.paths import PACKAGE

TABLE = PACKAGE / "data" / "postgresql-versions.json"
WARN_DAYS = 90          # a production spec is warned this long before its version leaves standard support
UPGRADE_DOC = "docs/operations/upgrade.md"

Status = Literal["standard", "ending", "extended", "unsupported", "unknown"]


@dataclass(frozen=True)
class Major:
    major: int
    community_eol: date
    azure_standard_end: date
    azure_extended_start: date | None
    azure_extended_end: date | None
    preview: bool


@dataclass(frozen=True)
class Support:
    """Where one major stands on one day. ``days_left``: days until the last day of Azure's
    standard support (0 on that day, negative after it); None for a major the table lacks."""

    major: int
    day: date
    status: Status
    days_left: int | None
    facts: Major | None

    @property
    def billed_extended(self) -> bool:
        """Azure bills Extended Support on top of the server on this day."""
        f = self.facts
        return bool(f and f.azure_extended_start and f.azure_extended_end
                    and f.azure_extended_start <= self.day <= f.azure_extended_end)

    def sentence(self) -> str:
        """What a DBA must know, one paragraph: the date, the consequence, where to go."""
        f = self.facts
        if f is None and self.status == "unsupported":
            return (f"PostgreSQL {self.major} is older than every major in pcdb's version table: past the "
                    f"community's and Azure's support long ago. Plan the major upgrade: {UPGRADE_DOC}")
        if f is None:
            return (f"PostgreSQL {self.major} is not in pcdb's version table ({TABLE.name}): its support dates are "
                    "unknown; add them with their source")
        if self.status in ("standard", "ending"):
            head = (f"PostgreSQL {self.major} leaves Azure's standard support on {f.azure_standard_end} "
                    f"(in {self.days_left} days): after it")
        else:
            head = f"PostgreSQL {self.major} left Azure's standard support on {f.azure_standard_end}:"
        tail = " no new server can be created on it (Azure would refuse an install's Phase 1)"
        if self.status == "unsupported" and f.azure_extended_end:
            tail += f", and Azure's Extended Support for it ended on {f.azure_extended_end}"
        elif f.azure_extended_start and f.azure_extended_end:
            tail += (f", and an existing server is enrolled in Extended Support, billed on top of the server from "
                     f"{f.azure_extended_start} until {f.azure_extended_end} (security fixes only, no new minor "
                     "versions)")
        else:
            tail += ", and no Extended Support is announced for it"
        return f"{head}{tail}. Plan the major upgrade: {UPGRADE_DOC}"


@cache
def table() -> dict[int, Major]:
    raw = json.loads(TABLE.read_text())["majors"]

    def day(value: str | None) -> date | None:
        return date.fromisoformat(value) if value else None

    return {int(k): Major(int(k), date.fromisoformat(v["community_eol"]), date.fromisoformat(v["azure_standard_end"]),
                          day(v.get("azure_extended_start")), day(v.get("azure_extended_end")),
                          bool(v.get("azure_preview"))) for k, v in raw.items()}


def major_of(version: str | int) -> int:
    """'14', '14.9', 140009 (server_version_num) or 14 -> 14."""
    if isinstance(version, int):
        return version // 10000 if version >= 10000 else version
    return int(str(version).strip().split(".")[0])


def support(version: str | int, day: date) -> Support:
    major = major_of(version)
    facts = table().get(major)
    if facts is None:
        # Older than every row: long past every support; newer: not announced yet.
        status: Status = "unsupported" if major < min(table()) else "unknown"
        return Support(major, day, status, None, None)
    left = (facts.azure_standard_end - day).days
    if left >= 0:
        status = "ending" if left <= WARN_DAYS else "standard"
    elif facts.azure_extended_end and day <= facts.azure_extended_end:
        status = "extended"
    else:
        status = "unsupported"
    return Support(major, day, status, left, facts)
