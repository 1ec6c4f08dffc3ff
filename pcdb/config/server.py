"""The service and the server (§2, §3): the database, the flexible server, its storage, HA, the
connection limits, and the read replica.
"""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from pcdb.config.secrets import SecretRef
from pcdb.config.types import Duration, Location, Model, ServerName, Size, TimeZone
from pcdb.units import format_size


class Service(Model):
    name: str
    platform: str
    database: str = Field(pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    schema_name: str = Field(alias="schema", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    concurrent_users: int = Field(gt=0)
    availability_target_percent: float = Field(gt=0, le=100)
    timezone: TimeZone = Field("Asia/Seoul", description="business time zone: schedules, monthly partitions")
    log_partitions_ahead: int = Field(3, ge=1, le=24, description="monthly KOS-log partitions kept ready")


class Storage(Model):
    size: Size
    type: str
    iops: int = Field(gt=0)
    auto_grow: bool
    auto_grow_at_percent: int = Field(gt=0, le=100)
    auto_grow_step: Size
    max_size: Size

    @field_validator("size", "auto_grow_step", "max_size")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value <= 0:
            raise ValueError(f"{format_size(value) if value else '0'}: a size must be more than 0 bytes")
        return value

    @field_validator("size")
    @classmethod
    def _azure_minimum(cls, value: int) -> int:
        if 0 < value < 32 * 2**30:
            raise ValueError(f"{format_size(value)}: Azure's smallest storage is 32GB")
        return value

    @model_validator(mode="after")
    def _sizes(self) -> Storage:
        if self.max_size < self.size:
            raise ValueError(f"max_size {format_size(self.max_size)} is smaller than size {format_size(self.size)}")
        return self


class Admin(Model):
    user: str = Field(pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    password: SecretRef


class HighAvailability(Model):
    mode: Literal["ZoneRedundant", "SameZone", "Disabled"]
    primary_zone: Literal["1", "2", "3"]
    standby_zone: Literal["1", "2", "3"]
    replication: Literal["synchronous"]
    failover_within: Duration
    sla_percent: float = Field(gt=0, le=100)

    @model_validator(mode="after")
    def _zones(self) -> HighAvailability:
        if self.mode == "ZoneRedundant" and self.primary_zone == self.standby_zone:
            raise ValueError(f"ZoneRedundant puts the standby in another zone: standby_zone {self.standby_zone} "
                             f"is the primary's; use SameZone, or another zone")
        if self.mode == "SameZone" and self.primary_zone != self.standby_zone:
            raise ValueError("SameZone keeps the standby in the primary's zone: make the two zones equal")
        return self


class Connection(Model):
    port: int = Field(gt=0, lt=65536)
    sslmode: Literal["require", "verify-ca", "verify-full"]
    connect_timeout: Duration
    ca_bundle: str | None = Field(None, description="root CA file for verify-full; default on Azure: the roots "
                                                    "Microsoft lists (pcdb/data/azure-postgresql-roots.pem)")


class Server(Model):
    name: ServerName
    location: Location
    version: str
    tier: Literal["Burstable", "GeneralPurpose", "MemoryOptimized"]
    sku: str
    vcores: int = Field(gt=0)
    memory: Size
    storage: Storage
    admin: Admin
    high_availability: HighAvailability
    connection: Connection


class Replica(Model):
    name: ServerName
    location: Location
    sku: str
    vcores: int = Field(gt=0)
    memory: Size
    max_lag: Duration
    purpose: list[str]
