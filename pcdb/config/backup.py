"""Backups (§5.1, R-BAK-*): the window, the retention, the geo copy, the verification.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from pcdb.config.types import Clock, Duration, Model, Region, TimeZone
from pcdb.units import format_duration


class Window(Model):
    start: Clock
    end: Clock
    timezone: TimeZone

    @model_validator(mode="after")
    def _not_empty(self) -> Window:
        if self.start == self.end:
            raise ValueError(f"the window starts and ends at {self.start}: give it a length")
        return self

    @property
    def length(self) -> timedelta:
        """From start to end, past midnight when the end is earlier in the day."""
        def minutes(clock: str) -> int:
            hours, mins = clock.split(":")
            return int(hours) * 60 + int(mins)
        return timedelta(minutes=(minutes(self.end) - minutes(self.start)) % (24 * 60))


class LogBackup(Model):
    interval: Duration
    retention: Duration


class BackupVerification(Model):
    """Nightly verification (R-BAK-2). Not values of the document: its §8.1.1 says daily checks
    and a weekly restore test; these are the runbook's defaults."""

    max_age: Duration = Field(timedelta(hours=26), description="the latest backup must be younger")
    restore_test_weekday: Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday",
                                  "sunday"] = "sunday"
    window: Window = Field(Window(start="04:30", end="08:00", timezone="Asia/Seoul"), description=(
        "when the verification must be done by: a restore test projected past its length at the "
        "environment's size is a health warning"))
    heapallindexed: bool = Field(False, description=(
        "amcheck also proves every heap row has its index entries (heapallindexed). It costs most "
        "of the restore test (8.3 of 12 s at 1 GB, docs/benchmarks.md); without it every index "
        "page is still read, checksum-verified and checked for structure, and every row compared"))
    jobs: int = Field(2, ge=1, le=16, description=(
        "connections the restore test reads with at once, on the source (in one exported snapshot) "
        "and on the restored copy, and pg_amcheck's --jobs on the sandbox; more is faster and loads "
        "the source more during the verification window"))
    sample_percent: float = Field(10, gt=0, le=100, description=(
        "when the last restore test's projection did not fit the window, a restore test on another "
        "day than restore_test_weekday compares this share of each table's 8 MiB block ranges, "
        "chosen from the day (a seed the report gives); amcheck still checks every page, and the "
        "weekly restore-test day compares everything"))


class Backup(Model):
    verification: BackupVerification = BackupVerification()
    retention: Duration
    geo_redundant: bool
    geo_region: Region | None = None
    window: Window
    full_backup_time: Clock

    @field_validator("retention")
    @classmethod
    def _azure_retention(cls, value: timedelta) -> timedelta:
        days = value.total_seconds() / 86400
        if days != int(days) or not 7 <= days <= 35:
            raise ValueError(f"{format_duration(value)}: Azure keeps backups 7 to 35 days, in whole days")
        return value

    @model_validator(mode="after")
    def _geo(self) -> Backup:
        if self.geo_redundant and not self.geo_region:
            raise ValueError("geo_redundant backups need geo_region, the paired region (koreasouth)")
        return self
    log_backup: LogBackup
    pitr_granularity: Duration
    compression: bool
    encryption: str
