"""Environment specs (deployments/*.yaml) as typed models, validated before anything runs.

``load_environment`` returns an :class:`Environment` or raises :class:`ConfigError` listing
every problem with the file, the line, the field path, the bad value and what is allowed.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

from pcdb import params, specfile
from pcdb.errors import ConfigError, Problem
from pcdb.paths import DEPLOYMENTS, project_root
from pcdb.units import UnitError, format_duration, format_size, parse_duration, parse_size


def _duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0:
        return timedelta(0)
    try:
        return parse_duration(str(value))
    except UnitError as exc:
        raise ValueError(str(exc)) from None


def _size(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(f"{value!r} has no unit; write a size such as '256GB'")
    try:
        return parse_size(str(value))
    except UnitError as exc:
        raise ValueError(str(exc)) from None


def _cidr(value: Any) -> str:
    try:
        return str(ipaddress.ip_network(str(value), strict=True))
    except ValueError as exc:
        try:
            near = ipaddress.ip_network(str(value), strict=False)
            raise ValueError(f"{value!r} has host bits set; did you mean {near}?") from None
        except ValueError as inner:
            if "host bits" in str(inner):
                raise
        raise ValueError(f"{value!r} is not a CIDR block such as 10.0.2.0/24 ({exc})") from None


def _timezone(value: Any) -> str:
    text = str(value)
    try:
        ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{text!r} is not an IANA time zone such as Asia/Seoul or UTC") from None
    return text


def _clock(value: Any) -> str:
    text = str(value)
    if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", text):
        raise ValueError(f"{text!r} is not a time of day as HH:MM, 00:00 to 23:59")
    return text


Duration = Annotated[timedelta, BeforeValidator(_duration), PlainSerializer(format_duration)]
TimeZone = Annotated[str, BeforeValidator(_timezone)]
Clock = Annotated[str, BeforeValidator(_clock)]
Size = Annotated[int, BeforeValidator(_size), PlainSerializer(format_size)]
Cidr = Annotated[str, BeforeValidator(_cidr)]


def _named(pattern: str, rule: str) -> Any:
    """A string field that must match ``pattern``, refused with ``rule`` in words (not a regex)."""
    compiled = re.compile(pattern)

    def check(value: Any) -> str:
        if not isinstance(value, str) or not compiled.fullmatch(value):
            raise ValueError(rule)
        return value
    return Annotated[str, BeforeValidator(check)]


# Azure's naming rules (Microsoft.DBforPostgreSQL, Microsoft.Network, Microsoft.Resources): a name
# outside them is refused by ARM, and a quote or a semicolon must never reach a plan.
ServerName = _named(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]", "an Azure server name is 3-63 lower-case letters, digits "
                    "and hyphens, not starting or ending with a hyphen")
NetworkName = _named(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,78}[A-Za-z0-9_]", "an Azure network name is 2-80 letters, "
                     "digits, underscores, periods and hyphens, starting with a letter or digit")
ResourceName = _named(r"[A-Za-z0-9_.()-]{0,89}[A-Za-z0-9_()-]", "an Azure resource name is 1-90 letters, digits, "
                      "underscores, periods, hyphens and parentheses, not ending with a period")
Region = _named(r"[a-z][a-z0-9]{2,30}", "an Azure region is a lower-case word such as koreacentral")
Location = _named(r"loopback|[a-z][a-z0-9]{2,30}", "an Azure region such as koreacentral (loopback on the sandbox)")


class Model(BaseModel):
    """Base of every spec model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class KeyVaultRef(Model):
    """A secret of an Azure Key Vault, read with the runbook's Entra ID identity."""

    vault: str = Field(pattern=r"^[a-zA-Z][a-zA-Z0-9-]{1,22}[a-zA-Z0-9]$", description="the vault's name (3-24)")
    secret: str = Field(pattern=r"^[0-9a-zA-Z-]{1,127}$", description="the secret's name")


class SecretRef(Model):
    """Where a secret comes from. Exactly one source; never the secret itself."""

    env: str | None = Field(None, pattern=r"^[A-Z_][A-Z0-9_]*$", description="environment variable holding the secret")
    prefect_secret: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9-]*$", description="name of a Prefect Secret block")
    file: str | None = Field(None, description="an absolute path to a file only its owner can read (0600)")
    key_vault: KeyVaultRef | None = Field(None, description="a secret of an Azure Key Vault")
    generate: bool = Field(False, description="sandbox only: generate a strong one and keep it in "
                                              "a file only its owner can read")

    @model_validator(mode="before")
    @classmethod
    def _not_a_literal(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError("a spec never holds a secret; name its source instead: {env: VARIABLE}, "
                             "{prefect_secret: block-name}, {file: /path}, {key_vault: {vault, secret}} or "
                             "{generate: true}")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        chosen = [k for k in ("env", "prefect_secret", "file", "key_vault") if getattr(self, k)] + (
            ["generate"] if self.generate else [])
        if len(chosen) != 1:
            raise ValueError("give exactly one secret source: env, prefect_secret, file, key_vault or generate: true")
        if self.file is not None and (not self.file.startswith("/") or ".." in Path(self.file).parts):
            raise ValueError(f"file {self.file!r}: give an absolute path without '..'")
        return self

    def describe(self) -> str:
        """Where the secret comes from, for messages (never the value)."""
        if self.env:
            return f"environment variable {self.env}"
        if self.prefect_secret:
            return f"Prefect Secret block {self.prefect_secret!r}"
        if self.file:
            return f"file {self.file}"
        if self.key_vault:
            return f"Key Vault {self.key_vault.vault} secret {self.key_vault.secret}"
        return "a generated password file"


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


class Vnet(Model):
    name: NetworkName
    address_prefix: Cidr


class Subnet(Model):
    name: NetworkName
    address_prefix: Cidr
    delegation: str


class WiderOverride(Model):
    """A network rule wider than the plan's application subnets, kept on purpose: why, and which
    approver agreed (recorded in the plan and the install's ledger row)."""

    reason: str = Field(min_length=10, description="why this wider rule is needed")
    approved_by: str = Field(description="the approver (install.approval.approvers) who agreed")


class AllowedSubnet(Model):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")
    cidr: Cidr
    description: str = ""
    wider: WiderOverride | None = Field(None, description="production: a rule wider than one application subnet "
                                                          "(/24) inside the VNet needs this recorded override")


class Network(Model):
    mode: Literal["vnet", "public"] = Field(description="vnet: delegated subnet, access by NSG (C-2); "
                                                        "public: firewall rules")
    vnet: Vnet | None = None
    subnet: Subnet | None = None
    private_dns_zone: str | None = Field(None, max_length=253, pattern=r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$",
                                         description="a DNS zone name such as x.private.postgres.database.azure.com")
    allowed_subnets: list[AllowedSubnet]

    @model_validator(mode="after")
    def _subnet_inside_vnet(self) -> Network:
        if self.mode == "vnet" and not (self.vnet and self.subnet and self.private_dns_zone):
            raise ValueError("network mode 'vnet' needs vnet, subnet and private_dns_zone")
        if self.vnet and self.subnet:
            outer = ipaddress.ip_network(self.vnet.address_prefix)
            inner = ipaddress.ip_network(self.subnet.address_prefix)
            if not inner.subnet_of(outer):
                raise ValueError(f"subnet {inner} is not inside the VNet {outer}")
        return self


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


TablePrivilege = Literal["SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER", "ALL"]


class Grants(Model):
    """What a role may do (§4.1.2, R-SEC-2); anything else is revoked."""

    database: list[Literal["CONNECT", "CREATE", "TEMPORARY", "ALL"]]
    schema_: list[Literal["USAGE", "CREATE", "ALL"]] = Field(alias="schema")
    tables: dict[str, list[TablePrivilege]] = Field(default_factory=dict,
                                                    description="per table, by name")
    all_tables: list[TablePrivilege] = Field(default_factory=list,
                                             description="on every table of the schema, also future ones")
    sequences: list[Literal["USAGE", "SELECT", "UPDATE", "ALL"]] = Field(default_factory=list)


class Role(Model):
    name: str = Field(pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    purpose: str
    connection_limit: int = Field(ge=-1)
    attributes: list[Literal["CREATEDB", "CREATEROLE"]] = []
    password: SecretRef
    grants: Grants


class PasswordPolicy(Model):
    min_length: int = Field(ge=8)
    require: list[Literal["upper", "lower", "digit", "special"]]
    expiry: Duration
    history: int = Field(ge=0)


class ConnectionPolicy(Model):
    max_failed_attempts: int = Field(gt=0)
    lockout: Duration
    session_timeout: Duration
    idle_timeout: Duration
    rate_limit_per_minute: int = Field(gt=0)


class Tls(Model):
    min_version: Literal["TLSv1.2", "TLSv1.3"]
    require_secure_transport: bool
    verify_server_certificate: bool


class EncryptionAtRest(Model):
    algorithm: str
    key_management: str
    customer_managed_key: bool
    key_rotation: Duration


def _roles_by_name(value: Any) -> Any:
    # The YAML keys roles by name so an extending spec can override one field of one role.
    if isinstance(value, dict):
        return [{"name": name, **(body or {})} for name, body in value.items()]
    return value


class Security(Model):
    roles: Annotated[list[Role], BeforeValidator(_roles_by_name)]
    password_policy: PasswordPolicy
    connection_policy: ConnectionPolicy
    tls: Tls
    audit: dict[str, Any] = Field(description="audit logging parameters (§4.3.1, R-SEC-6)")
    encryption_at_rest: EncryptionAtRest


class Window(Model):
    start: Clock
    end: Clock
    timezone: TimeZone

    @model_validator(mode="after")
    def _not_empty(self) -> Window:
        if self.start == self.end:
            raise ValueError(f"the window starts and ends at {self.start}: give it a length")
        return self


class LogBackup(Model):
    interval: Duration
    retention: Duration


class BackupVerification(Model):
    """Nightly verification (R-BAK-2). Not values of the document: its §8.1.1 says daily checks
    and a weekly restore test; these are the runbook's defaults."""

    max_age: Duration = Field(timedelta(hours=26), description="the latest backup must be younger")
    restore_test_weekday: Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday",
                                  "sunday"] = "sunday"


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


Operator = Literal[">", "<", ">=", "<=", "=="]
Level = Literal["info", "warning", "critical"]


class Threshold(Model):
    metric: str
    operator: Operator
    value: float
    unit: str = ""
    level: Level


class PerformanceTarget(Model):
    metric: str
    target: str
    alarm: str


class BusinessMetric(Model):
    metric: str
    target: str
    warning: str
    critical: str
    measurement: str
    probe: str | None = Field(None, description="the metric's own SQL instead of pcdb's: exactly one read-only SELECT "
                              "returning one number; $1 is the start of the business window (timestamptz). It runs "
                              "on the primary in a READ ONLY transaction under a 5 s statement_timeout")

    @field_validator("probe")
    @classmethod
    def _read_only(cls, value: str | None) -> str | None:
        if value is None:
            return value
        from pcdb.sqlcheck import read_only_select

        problem = read_only_select(value)
        if problem:
            raise ValueError(problem)
        return value


class Condition(Model):
    metric: str
    operator: Operator
    value: float
    unit: str = ""


class AlertRule(Model):
    name: str
    title: str
    condition: Condition
    duration: Duration
    level: Level
    channels: list[str]


class AzureMetricAlert(Model):
    name: str
    description: str
    severity: int = Field(ge=0, le=4)
    scope: Literal["server", "replica"] = "server"
    metric: str
    aggregation: Literal["Average", "Maximum", "Minimum", "Total", "Count"]
    operator: Literal["GreaterThan", "GreaterThanOrEqual", "LessThan", "LessThanOrEqual", "Equals"]
    threshold: float
    window: Duration
    frequency: Duration


class HealthRule(Model):
    """A health rule of one's own: what the best monitors check and the plan forgot."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    title: str
    metric: str
    operator: Operator
    warning: float | None = None
    critical: float | None = None
    duration: Duration = timedelta(0)
    channels: list[str] | None = Field(None, description="default: the routing of the severity it reached")

    @model_validator(mode="after")
    def _a_threshold(self) -> HealthRule:
        if self.warning is None and self.critical is None:
            raise ValueError(f"rule {self.name}: give a warning or a critical threshold (or both)")
        return self


def _best_monitor_rules() -> list[HealthRule]:
    gib = 2**30
    return [HealthRule(name="xid-wraparound", title="transaction ID age (wraparound)", metric="xid_age",
                       operator=">", warning=1.0e9, critical=1.5e9, duration=timedelta(minutes=5)),
            HealthRule(name="long-transaction", title="a transaction open for long", metric="longest_transaction_seconds",
                       operator=">", warning=3600, critical=4 * 3600, duration=timedelta(minutes=5)),
            HealthRule(name="idle-in-transaction", title="a session idle in a transaction",
                       metric="idle_in_transaction_seconds", operator=">", warning=600, duration=timedelta(minutes=2)),
            HealthRule(name="slot-retaining-wal", title="a replication slot retains WAL",
                       metric="slot_retained_bytes", operator=">", warning=1 * gib, critical=10 * gib,
                       duration=timedelta(minutes=30)),
            HealthRule(name="invalid-index", title="an invalid index", metric="invalid_indexes", operator=">",
                       warning=0, duration=timedelta(hours=1)),
            HealthRule(name="sequence-exhaustion", title="a sequence near its maximum", metric="sequence_used_percent",
                       operator=">", warning=75, critical=90, duration=timedelta(0)),
            HealthRule(name="tls-certificate-expiry", title="the server's TLS certificate expires soon",
                       metric="tls_days_left", operator="<", warning=30, critical=7, duration=timedelta(0)),
            HealthRule(name="kos-log-partitions", title="fewer than 2 future monthly partitions of the KOS log",
                       metric="partitions_ahead", operator="<", critical=2, duration=timedelta(0)),
            HealthRule(name="role-escalation", title="a role with more power than the spec gives (SUPERUSER, "
                       "CREATEROLE, REPLICATION, BYPASSRLS or a membership such as pg_execute_server_program)",
                       metric="escalated_roles", operator=">", critical=0, duration=timedelta(0))]


# The health rules that say the application cannot write: one outage, one incident (§8.2: P1).
WRITES_DOWN = ("database-connection-failure", "no-writable-primary", "read-only-primary")


def outage_rules() -> list[HealthRule]:
    """The outages the application feels at once: always in the catalog (a spec's extra_rules do
    not replace them; disabled_rules can), critical in the first run that sees them."""
    return [HealthRule(name="no-writable-primary", title="no writable primary: writes are down (the HA failover "
                       "promotes the synchronous standby: the sandbox's supervisor within sandbox.auto_failover_after, "
                       "Azure within 60-120 s; if nothing answers after that, fail over by hand)",
                       metric="writable_primary", operator="<", critical=1, duration=timedelta(0)),
            HealthRule(name="read-only-primary", title="the primary is read-only: the application cannot write "
                       "(storage at 95 % on Azure and on the sandbox's guard; free space or grow the disk)",
                       metric="primary_read_only", operator=">", critical=0, duration=timedelta(0)),
            HealthRule(name="no-synchronous-standby", title="the primary runs without its synchronous copy: RPO 0 is "
                       "not held (the standby is rejoined or copied afresh by the supervisor; on Azure, HA is not "
                       "Healthy)", metric="sync_standby", operator="<", critical=1, duration=timedelta(0))]


class HealthSettings(Model):
    """How the health runbook evaluates the rules (R-MON-1..5)."""

    every: Duration = Field(timedelta(minutes=1), description="how often the health deployment runs")
    reminder_every: Duration = Field(timedelta(hours=4), description="a firing alert is notified again this often")
    hysteresis_percent: float = Field(5, ge=0, le=50, description="an alert resolves only once its value is this "
                                      "far back on the good side of the threshold")
    business_window: Duration = Field(timedelta(hours=1), description="the business rates are over this window")
    alarm_duration: Duration = Field(timedelta(minutes=5), description="how long a §6.1 threshold, performance or "
                                     "business alarm must hold before it fires (§6.2.2 rules have their own)")
    dead_man_after: Duration = Field(timedelta(minutes=5), description="no health report for this long: critical")
    history_minutes: Duration = Field(timedelta(days=14), description="per-minute samples are kept this long; "
                                      "hourly averages and maxima for 400 days (the capacity analysis)")
    disabled_rules: list[str] = Field(default_factory=list, description="rule names not evaluated here")
    extra_rules: list[HealthRule] = Field(default_factory=_best_monitor_rules)


class Monitoring(Model):
    system_metrics: list[Threshold]
    performance_targets: list[PerformanceTarget]
    business_metrics: list[BusinessMetric]
    alert_rules: list[AlertRule]
    azure_metric_alerts: list[AzureMetricAlert]
    dashboard: dict[str, list[str]]
    health: HealthSettings = Field(default_factory=HealthSettings)


class Channel(Model):
    kind: Literal["teams", "email", "sms", "webhook"]
    purpose: str
    audience: list[str]
    block: str = Field(pattern=r"^[a-z0-9-]+/[a-z0-9-]+$",
                       description="the Prefect notification block that delivers it, as "
                                   "'<block-type>/<name>', e.g. ms-teams-webhook/pcdb-prod-teams")
    recipients: list[str] = []


class Notifications(Model):
    channels: dict[str, Channel]
    routing: dict[Level, list[str]]
    local_sink: bool = Field(False, description="`pcdb server up` starts a local sink and points every channel's "
                                                "custom-webhook block at it: alerts land in <orchestrator home>/"
                                                "notifications.log (a sandbox before real channels exist; never "
                                                "production)")


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


class Severity(Model):
    level: Literal["P1", "P2", "P3", "P4"]
    description: str
    response: Duration


class CostComponent(Model):
    """One row of §9.1.1's monthly cost table."""

    component: str
    category: Literal["compute", "storage", "backup_storage", "network", "monitoring"]
    monthly_usd: float = Field(ge=0)
    spec: str = ""


class Cost(Model):
    monthly_budget_usd: float = Field(gt=0)
    alert_monthly_usd: float = Field(gt=0)
    alert_increase_percent: float = Field(gt=0)
    price_table: list[CostComponent] = Field(default_factory=list, description="§9.1.1: what each component costs "
                                             "a month; the sandbox's cost model (Azure reports its own)")
    reserved_instance_saving_percent: float = Field(30, ge=0, lt=100, description="§9.1.2: what a reserved "
                                                    "instance saves on compute")
    storage_usd_per_gib_month: float | None = Field(None, gt=0, description="provisioned storage's price, to "
                                                    "value what the partition retention freed; unset: bytes only")


_CRON_FIELDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))   # minute hour day-of-month month day-of-week
_CRON_ITEM = re.compile(r"^(\*|(\d+)(?:-(\d+))?)(?:/(\d+))?$")


def cron_is_valid(value: str) -> bool:
    """Five numeric cron fields (``*``, ``a``, ``a-b``, lists, ``/step``) within their ranges: the
    schedules pcdb writes; Prefect parses the same text when the deployment is registered."""
    fields = value.split()
    if len(fields) != 5:
        return False
    for text, (low, high) in zip(fields, _CRON_FIELDS):
        for item in text.split(","):
            match = _CRON_ITEM.match(item)
            if not match or (match.group(4) is not None and int(match.group(4)) == 0):
                return False
            first, last = match.group(2), match.group(3)
            if first is not None and not (low <= int(first) <= high and (last is None or int(first) <= int(last) <= high)):
                return False
    return True


def _cron(value: str) -> str:
    if not cron_is_valid(value):
        raise ValueError(f"{value!r} is not a cron expression (minute hour day-of-month month day-of-week, "
                         "e.g. '0 5 1-7 * 0' for the first Sunday at 05:00, '0 8 * * 1' for Mondays at 08:00)")
    return value


Cron = Annotated[str, AfterValidator(_cron)]


class MaintenanceSpec(Model):
    """The monthly maintenance runbook (§8.3.1, R-OPS-3): when it runs and its thresholds."""

    cron: Cron = Field("0 5 1-7 * 0", description="first Sunday of the month, 05:00 business time: after "
                                                 "the 02:00-04:00 backup window and the 04:30 verification")
    archive_min_retention_months: int = Field(
        12, ge=2, description="the archive policy: no KOS-log partition is archived and dropped younger than this")
    lock_timeout: Duration = Field(timedelta(seconds=2), description="every DDL statement gives up after this "
                                   "rather than queue behind the application; the step is retried next run")
    analyze_modified_fraction: float = Field(0.10, gt=0, le=1, description="ANALYZE when this share of rows "
                                             "changed since the last analyze")
    vacuum_dead_fraction: float = Field(0.20, gt=0, le=1, description="plain VACUUM above this dead-tuple ratio")
    min_rows: int = Field(1000, ge=0, description="tables with fewer changed/dead rows are left to autovacuum")
    unused_index_min_stats_days: int = Field(30, ge=0, description="idx_scan = 0 counts only when the "
                                             "statistics are at least this old")
    keep_plan_indexes: bool = Field(True, description="never report the plan's own §3.2.1 indexes as unused")
    reindex_bloat_percent: float = Field(50, gt=0, le=100, description="REINDEX CONCURRENTLY above this "
                                         "estimated bloat")
    reindex_min_size: Size = Field(10 * 2**20, description="smaller indexes are never rebuilt")
    slow_query_regression_percent: float = Field(50, gt=0, description="a statement whose mean time grew by "
                                                 "more than this since last month is flagged")


class CapacitySettings(Model):
    """The weekly capacity analysis (§8.1.2, §8.3.1): its schedule, how much history it reads and
    how it judges. Every field has a default; an environment without ``operations.capacity``
    runs with them and its report says so."""

    cron: Cron = Field("0 8 * * 1", description="Monday 08:00 business time")
    weeks: int = Field(13, ge=2, le=57, description="weeks of history analysed (Azure Monitor keeps 93 days; "
                       "the sandbox's health store keeps hourly figures 400 days)")
    min_history_days: int = Field(14, ge=8, le=93, description="fewer days of history: no forecast, never a "
                                  "guessed date; the report says how much is needed")
    interval_percent: float = Field(90, gt=50, lt=100, description="the prediction interval of every forecast")
    top_tables: int = Field(10, ge=1, le=100, description="the top growing tables listed")
    cpu_scale_down_percent: float = Field(30, gt=0, lt=100, description="CPU p95 below this (now and projected) "
                                          "with memory below memory_scale_down_percent: recommend a smaller SKU")
    memory_scale_down_percent: float = Field(50, gt=0, lt=100)
    alert_within_days: int = Field(90, ge=1, description="a limit reached sooner than this makes the "
                                   "notification a warning (otherwise info)")
    storage_price_usd_per_gib_month: float | None = Field(None, gt=0, description="the provisioned storage's "
                                                          "price, to cost the next autogrow step; unset: not costed")


class IncidentStep(Model):
    """One step of the P1 timeline (§8.2.2)."""

    key: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    name: str
    owner: str = Field(description="the team that confirms it (a key of operations.incident.teams)")
    within: Duration | None = Field(None, description="its time, counted from the step it follows")
    after: str | None = Field(None, description="the step it follows (default: the one before it)")
    every: Duration | None = Field(None, description="a recurring step (status updates)")
    condition: str = Field("", description="when it applies; a conditional step may be confirmed as not needed")

    @model_validator(mode="after")
    def _timed(self) -> IncidentStep:
        if (self.within is None) == (self.every is None):
            raise ValueError(f"step {self.key}: give either within (a deadline) or every (a recurring step)")
        return self


def _p1_steps() -> list[IncidentStep]:
    """§8.2.2's P1 timeline: each step's time counts from the step it follows."""
    m = timedelta(minutes=1)
    return [
        IncidentStep(key="triage", name="assess and confirm the outage", owner="ops team", within=5 * m),
        IncidentStep(key="call", name="management and developers called", owner="ops team", within=timedelta(0)),
        IncidentStep(key="analysis", name="first analysis of the cause", owner="DBA", within=10 * m),
        IncidentStep(key="ha_check", name="automatic HA failover checked (Zone Redundant HA)", owner="DBA",
                     within=2 * m),
        IncidentStep(key="manual_failover", name="manual failover decided", owner="DBA", within=5 * m,
                     condition="only when the automatic failover failed (pcdb failover zone --real)"),
        IncidentStep(key="region_switch", name="switched to the read replica", owner="DBA", within=10 * m,
                     condition="only when the whole primary region is down (pcdb failover region --real)"),
        IncidentStep(key="customer_notice", name="customer notice sent", owner="CS team", within=30 * m,
                     after="triage"),
        IncidentStep(key="status_update", name="status update", owner="ops team", every=30 * m),
    ]


class IncidentSettings(Model):
    """Who answers an incident (§8.2, R-OPS-4): the teams with the people who may confirm their
    steps, and the P1 timeline of §8.2.2 (its deadlines may be shortened, e.g. in a test)."""

    teams: dict[str, list[str]] = Field(default_factory=dict,
                                        description="team -> the people (on-call ids) who confirm its steps")
    responder: str = Field("ops team", description="the team told when an incident is not acknowledged in time")
    p1_steps: list[IncidentStep] = Field(default_factory=_p1_steps)
    auto_open: dict[str, Literal["P1", "P2", "P3", "P4"]] = Field(
        default_factory=lambda: {rule: "P1" for rule in WRITES_DOWN},
        description="health rule -> the severity of the incident its critical alert opens; any other critical "
                    "alert opens a P2. The rules of one outage (writes down: no connection, no writable "
                    "primary, a read-only primary) share one open incident")

    @model_validator(mode="after")
    def _owners_known(self) -> IncidentSettings:
        keys = [s.key for s in self.p1_steps]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise ValueError(f"p1_steps: key {', '.join(twice)} given twice")
        for step in self.p1_steps:
            if self.teams and step.owner not in self.teams:
                raise ValueError(f"p1_steps {step.key}: owner {step.owner!r} is not a team of operations.incident.teams "
                                 f"({', '.join(self.teams)})")
            if step.after and step.after not in keys[:keys.index(step.key)]:
                raise ValueError(f"p1_steps {step.key}: after {step.after!r} names no earlier step")
        if self.teams and self.responder not in self.teams:
            raise ValueError(f"responder {self.responder!r} is not a team of operations.incident.teams")
        return self

    def teams_of(self, person: str) -> set[str]:
        return {team for team, members in self.teams.items() if person in members}


class Operations(Model):
    incident_severities: list[Severity]
    log_partition_retention_months: int = Field(gt=0)
    capacity_forecast_months: int = Field(gt=0)
    cost: Cost
    maintenance: MaintenanceSpec = Field(default_factory=MaintenanceSpec)
    capacity: CapacitySettings | None = Field(None, description="the weekly capacity analysis; absent: defaults")
    incident: IncidentSettings = Field(default_factory=IncidentSettings)

    @model_validator(mode="after")
    def _retention_within_archive_policy(self) -> Operations:
        floor = self.maintenance.archive_min_retention_months
        if self.log_partition_retention_months < floor:
            raise ValueError(
                f"log_partition_retention_months is {self.log_partition_retention_months}, shorter than the archive "
                f"policy allows (operations.maintenance.archive_min_retention_months: {floor}); KOS-log partitions "
                f"are kept at least {floor} months: raise the retention, or lower the policy if the client changed it")
        return self


class SandboxSpec(Model):
    root: str | None = Field(None, description="folder of the sandbox; default /var/lib/pcdb/<env> "
                                               "as root, ~/.local/state/pcdb/<env> otherwise")
    ports: dict[Literal["node1", "node2", "replica"], Annotated[int, Field(ge=0, le=65535)]] = Field(
        default_factory=dict, description="fixed ports (1024-65535 unless root); absent or 0 = a free port is chosen")
    storage_quota: Size = Field(description="stands for the server's storage size in metrics")
    extra_preload_libraries: list[Literal["pgaudit", "auto_explain", "pg_prewarm", "pg_hint_plan"]] = Field(
        default_factory=list,
                                               description="loaded when installed (e.g. pgaudit)")
    fsync: bool = True
    start_timeout: Duration = timedelta(seconds=60)
    auto_failover_after: Duration = Field(
        timedelta(seconds=10), description="the supervisor `pcdb sandbox up` leaves running promotes the "
                                           "synchronous standby when the primary has been unreachable this long "
                                           "(Azure's ZoneRedundant HA does it in 60-120 s); 0 turns it off")


class Decisions(Model):
    """Who may decide in a runbook, and how a decision is proven: an OpenSSH signature over the
    run, the step and the plan's SHA-256 (``pcdb approve``), checked against these keys."""

    unsigned: Literal["allowed", "refused"] = Field(
        "refused", description="allowed: a typed name (or --yes) is taken as the decision, recorded as claimed; "
                               "never on production")
    signers: dict[str, str] = Field(default_factory=dict, description="person (an approver, an incident team member) "
                                                                     "-> their OpenSSH public key; never a private key")

    @field_validator("signers")
    @classmethod
    def _keys(cls, value: dict[str, str]) -> dict[str, str]:
        from pcdb.sshsig import PublicKey, SignatureError

        seen: dict[str, str] = {}
        for person, line in value.items():
            try:
                fingerprint = PublicKey.parse(line).fingerprint
            except SignatureError as exc:
                raise ValueError(f"{person}: {exc}") from None
            if fingerprint in seen:
                raise ValueError(f"{person} and {seen[fingerprint]} have the same key ({fingerprint}): one key is one "
                                 "person, or a decision cannot say who made it")
            seen[fingerprint] = person
        return value


def _orchestrator_secret() -> SecretRef:
    return SecretRef(generate=True)


class OrchestratorTls(Model):
    """TLS for the orchestration API and UI: served by the Prefect server itself (``cert_file``
    and ``key_file``), or by a reverse proxy in front of a server that listens on loopback only
    (``proxy_url``; docs/operations show one)."""

    cert_file: str | None = Field(None, description="the server's certificate (PEM), served by the server itself")
    key_file: str | None = Field(None, description="its private key (PEM, 0600)")
    ca_file: str | None = Field(None, description="the CA clients verify the server with (default: cert_file)")
    proxy_url: str | None = Field(None, pattern=r"^https://[^/\s]+(/.*)?$",
                                  description="the https address of the reverse proxy in front of the server")

    @model_validator(mode="after")
    def _one_way(self) -> OrchestratorTls:
        served = self.cert_file is not None or self.key_file is not None
        if served and (self.cert_file is None or self.key_file is None):
            raise ValueError("give both cert_file and key_file to serve TLS from the Prefect server itself")
        if served == (self.proxy_url is not None):
            raise ValueError("choose one: cert_file and key_file (the server serves TLS), or proxy_url (a reverse "
                             "proxy does, in front of a server on loopback)")
        return self


class OrchestratorSpec(Model):
    """The Prefect server the runbooks report to (`pcdb server up`), and how long a run may last."""

    home: str | None = Field(None, description="its database, logs and pid files; default /var/lib/pcdb/prefect "
                                               "as root, ~/.local/state/pcdb/prefect otherwise")
    host: str = Field("127.0.0.1", description="address the API and UI listen on (anything but loopback needs tls)")
    auth: SecretRef = Field(default_factory=_orchestrator_secret,
                            description="the API's credential, 'user:password' (Prefect's basic auth): the server "
                                        "asks every client and the UI for it; generated into the home on the sandbox")
    encryption_key: SecretRef = Field(default_factory=_orchestrator_secret,
                                      description="the key Prefect encrypts blocks with (Fernet), kept apart from "
                                                  "its database; generated into the home on the sandbox")
    tls: OrchestratorTls | None = None
    port: int = Field(4200, gt=0, lt=65536)
    database: Literal["sqlite", "sandbox-postgres"] = Field(
        "sqlite", description="sqlite: a file in home (a laptop); sandbox-postgres: a small PostgreSQL cluster "
                              "of its own under home (never the service database). "
                              "$PREFECT_API_DATABASE_CONNECTION_URL names any other PostgreSQL")
    run_limits: dict[Literal["install", "backup-verification", "dr-drill", "maintenance", "health", "capacity"],
                     Duration] = Field(
        default_factory=lambda: {"install": timedelta(hours=12), "backup-verification": timedelta(hours=5),
                                 "dr-drill": timedelta(hours=6), "maintenance": timedelta(hours=8),
                                 "health": timedelta(minutes=5), "capacity": timedelta(hours=1)},
        description="a run Running longer than this is cancelled and reported (an automation)")
    worker_poll: Duration = Field(timedelta(seconds=10), description="how often the worker asks for scheduled runs "
                                  "and cancellations (Prefect's default 10s; a deployment run starts within this)")

    @model_validator(mode="after")
    def _guarded(self) -> OrchestratorSpec:
        for name in ("auth", "encryption_key"):
            if getattr(self, name).prefect_secret:
                raise ValueError(f"{name}: the orchestrator's own secret cannot be a Prefect block (it is what "
                                 "unlocks them); give env, file, key_vault or generate")
        loopback = self.host in ("127.0.0.1", "::1", "localhost")
        served = self.tls is not None and self.tls.cert_file is not None
        if not loopback and not served:
            raise ValueError(f"host {self.host}: the API would answer beyond this machine without TLS; listen on "
                             "127.0.0.1, or give tls.cert_file and tls.key_file (or put a TLS proxy in front of a "
                             "server on 127.0.0.1: tls.proxy_url)")
        return self


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


# ---------------------------------------------------------------------------------------------
# Loading


def spec_path(env: str | Path) -> Path:
    """Resolve an environment name ('local') or a path to its YAML file."""
    candidate = Path(env)
    if candidate.suffix in (".yaml", ".yml"):
        return candidate
    return DEPLOYMENTS / f"{env}.yaml"


def load_environment(env: str | Path) -> Environment:
    """Load and validate an environment spec (following ``extends:`` to its parent spec).

    Raises:
        ConfigError: the file is missing, not YAML, or has any invalid field.
    """
    path = spec_path(env)
    data, lines = _load_raw(path, seen=())
    return validate(data, _shown(path), lines)


def _load_raw(path: Path, seen: tuple[Path, ...], referrer: tuple[str, int | None] | None = None
              ) -> tuple[dict, dict[str, tuple[str, int]]]:
    shown = _shown(path)
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in DEPLOYMENTS.glob("*.yaml")))
        what = "is a folder, not a spec file" if path.exists() else "does not exist"
        if referrer is not None:  # name the file that refers to it, at its extends: line
            raise ConfigError(referrer[0], [Problem("extends", f"the parent spec {shown} {what}; "
                                                    f"known environments: {known}", referrer[1])])
        raise ConfigError(shown, [Problem("", f"no such environment spec ({what}); known: {known}")])
    try:
        data, index = specfile.read(path)
    except specfile.SpecFileError as exc:
        raise ConfigError(shown, exc.problems) from None
    except OSError as exc:
        raise ConfigError(shown, [Problem("", f"cannot read the file: {exc.strerror}")]) from None
    lines = {k: (shown, v) for k, v in index.items()}
    if not isinstance(data, dict):
        raise ConfigError(shown, [Problem("", "the spec must be a mapping of sections (server:, security:, ...)", 1)])
    parent_name = data.pop("extends", None)
    if parent_name is None:
        return data, lines
    if not isinstance(parent_name, str) or not parent_name.strip():
        raise ConfigError(shown, [Problem("extends", "name the parent spec: an environment name (prod) or "
                                                     "a spec file path", index.get("extends"))])
    parent = spec_path(parent_name) if "/" not in parent_name else path.parent / parent_name
    if parent.resolve() in seen or parent.resolve() == path.resolve():
        raise ConfigError(shown, [Problem("extends", f"{parent_name!r} extends itself in a loop",
                                          index.get("extends"))])
    base, base_lines = _load_raw(parent, (*seen, path.resolve()), (shown, index.get("extends")))
    # What the child replaces whole (a list, a scalar, a secret reference) keeps none of the parent's
    # lines below it: a problem inside it is the child's.
    replaced = _replaced_paths(data)
    base_lines = {k: v for k, v in base_lines.items() if not any(k.startswith(r + ".") for r in replaced)}
    return _merge(base, data), {**base_lines, **lines}


def _replaced_paths(data: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and not (_SECRET_KEYS & set(value)):
            out += _replaced_paths(value, path)
        else:
            out.append(path)
    return out


_SECRET_KEYS = {"env", "prefect_secret", "file", "key_vault", "generate"}


def _merge(base: dict, override: dict) -> dict:
    """Deep-merge: mappings merge key by key, lists and scalars replace, null removes.

    A secret reference ({env: ...}, {generate: true}) replaces the parent's whole: a merge
    would leave two sources.
    """
    merged = dict(base)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict) and not (
                _SECRET_KEYS & set(value)):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def validate(data: dict, file: str = "<spec>",
             lines: dict[str, tuple[str, int]] | None = None) -> Environment:
    """Validate a parsed spec; raise ConfigError with every problem found."""
    lines = lines or {}
    problems = _parameter_problems(data, lines)  # also when other fields are wrong: every problem at once
    problems += _duplicate_entries(data, lines)
    environment = None
    try:
        environment = Environment.model_validate(data)
    except ValidationError as exc:
        problems = [_problem(err, lines) for err in exc.errors()
                    if not str(err["loc"][0]).startswith("parameters")] + problems
    if environment is not None:
        from pcdb import specchecks

        problems += _semantic_problems(environment, lines)
        problems += specchecks.problems(environment, lambda path: _line_of(path, lines))
    if problems:
        raise ConfigError(file, problems)
    return environment


# Lists of mappings and the fields that tell their entries apart: an entry whose identity is
# written twice is refused, as a key written twice is (the second would win, or both would run).
_IDENTITIES = {
    "install.approval.approvers": (("name",),), "install.phases": (("number",),),
    "network.allowed_subnets": (("name",), ("cidr",)), "monitoring.system_metrics": (("metric", "level"),),
    "monitoring.performance_targets": (("metric",),), "monitoring.business_metrics": (("metric",),),
    "monitoring.alert_rules": (("name",),), "monitoring.azure_metric_alerts": (("name",),),
    "monitoring.health.extra_rules": (("name",),), "operations.incident_severities": (("level",),),
    "operations.cost.price_table": (("component",),), "dr.region_failover_steps": (("step",),),
    "security.roles": (("name",),)}


def _duplicate_entries(data: Any, lines: dict[str, tuple[str, int]], path: str = "") -> list[Problem]:
    """Every list: a value written twice, or an entry whose identity (name, metric...) is."""
    problems: list[Problem] = []
    if isinstance(data, dict):
        for key, value in data.items():
            if path == "" and key == "parameters" or path == "security" and key == "audit":
                continue        # server parameters: their own check knows which lists they are
            problems += _duplicate_entries(value, lines, f"{path}.{key}" if path else str(key))
    elif isinstance(data, list):
        seen: dict = {}
        for i, item in enumerate(data):
            if isinstance(item, (str, int, float, bool)) and not isinstance(item, bool):
                if item in seen:
                    problems.append(Problem(f"{path}.{i}", f"{item!r} is written twice (also entry {seen[item]}): "
                                            "remove one; an entry written twice is refused like a key written twice",
                                            _line_of(f"{path}.{i}", lines) or _line_of(path, lines)))
                seen.setdefault(item, i)
            elif isinstance(item, dict):
                problems += _duplicate_entries(item, lines, f"{path}.{i}")
        for fields in _IDENTITIES.get(path, ()):
            ids: dict = {}
            for i, item in enumerate(data):
                if isinstance(item, dict) and all(f in item for f in fields):
                    identity = tuple(str(item[f]) for f in fields)
                    if identity in ids:
                        problems.append(Problem(f"{path}.{i}", f"{' '.join(fields)} {' '.join(identity)!r} is written "
                                                f"twice (also entry {ids[identity]}): each entry once",
                                                _line_of(f"{path}.{i}", lines) or _line_of(path, lines)))
                    ids.setdefault(identity, i)
    return problems


def _parameter_problems(data: dict, lines: dict[str, tuple[str, int]]) -> list[Problem]:
    """Each server parameter against PostgreSQL's catalog, read from the raw spec."""
    problems: list[Problem] = []
    security = data.get("security") if isinstance(data.get("security"), dict) else {}
    sections = (("parameters", data.get("parameters")), ("security.audit", security.get("audit")))
    for section, values in sections:
        if values is None:
            continue
        if not isinstance(values, dict):
            problems.append(Problem(section, "a mapping of parameter: value", _line_of(section, lines)))
            continue
        for name, value in values.items():
            path = f"{section}.{name}"
            if isinstance(value, (dict, type(None))):
                problems.append(Problem(path, "a parameter's value is a number, a word, or a list of words",
                                        _line_of(path, lines)))
                continue
            try:
                params.canonical(str(name), value)
            except ValueError as exc:
                problems.append(Problem(path, str(exc), _line_of(path, lines)))
    return problems


def _problem(err: dict, lines: dict[str, tuple[str, int]]) -> Problem:
    loc = [str(part) for part in err["loc"] if not str(part).startswith("function-")]
    path = ".".join(loc)
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = "unknown field; remove it or check its spelling"
    elif err["type"] == "missing":
        message = "required field is missing"
    elif "input" in err and not isinstance(err["input"], (dict, list)) and "secret" not in message:
        message = f"{err['input']!r}: {message}"
    return Problem(path, message, _line_of(path, lines))


def _semantic_problems(env: Environment, lines: dict[str, tuple[str, int]]) -> list[Problem]:
    problems: list[Problem] = []
    for name in set(env.parameters) & set(env.security.audit):
        a, b = env.parameters[name], env.security.audit[name]
        if str(a) != str(b):
            path = f"security.audit.{name}"
            problems.append(Problem(path, f"{b!r} contradicts parameters.{name} = {a!r}; keep one",
                                    _line_of(path, lines)))
    known = set(env.notifications.channels)
    routes = [(f"monitoring.alert_rules.{i}.channels", r.channels)
              for i, r in enumerate(env.monitoring.alert_rules)]
    routes += [(f"notifications.routing.{lvl}", chans) for lvl, chans in env.notifications.routing.items()]
    routes += [(f"monitoring.health.extra_rules.{i}.channels", r.channels or [])
               for i, r in enumerate(env.monitoring.health.extra_rules)]
    for name, channel in env.notifications.channels.items():
        if channel.block.startswith("email-server-credentials/") and not channel.recipients:
            path = f"notifications.channels.{name}.recipients"
            problems.append(Problem(path, "an SMTP channel sends to its recipients: name at least one",
                                    _line_of(f"notifications.channels.{name}", lines)))
    if env.monitoring.health.disabled_rules:
        from pcdb.health import catalog

        everything = {r.name for r in catalog(env.model_copy(update={"monitoring": env.monitoring.model_copy(
            update={"health": env.monitoring.health.model_copy(update={"disabled_rules": []})})}))}
        for name in env.monitoring.health.disabled_rules:
            if name not in everything:
                path = "monitoring.health.disabled_rules"
                problems.append(Problem(path, f"{name!r} is not a health rule; the rules are "
                                              f"{', '.join(sorted(everything))}", _line_of(path, lines)))
    for path, channels in routes:
        for channel in channels:
            if channel not in known:
                problems.append(Problem(path, f"{channel!r} is not a channel in notifications.channels "
                                              f"({', '.join(sorted(known))})", _line_of(path, lines)))
    return problems


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _line_of(path: str, lines: dict[str, tuple[str, int]]) -> tuple[str, int] | None:
    """The (file, line) where ``path`` or its nearest parent is written."""
    parts = path.split(".")
    while parts:
        found = lines.get(".".join(parts))
        if found:
            return found
        parts.pop()
    return None
