"""Environment specs (deployments/*.yaml) as typed models, validated before anything runs.

One module per section of the spec (types, secrets, server, network, azure, security, backup, dr,
monitoring, notifications, install, operations, sandbox, decisions, orchestrator), the whole
``Environment``, and the ``loader``: ``load_environment`` returns an :class:`Environment` or
raises :class:`ConfigError` listing every problem with the file, the line, the field path, the
bad value and what is allowed. Everything is importable from ``pcdb.config``.
"""

from pcdb.config.azure import ActionGroup, Azure, DiagnosticSetting, EvidenceArchive
from pcdb.config.backup import Backup, BackupVerification, LogBackup, Window
from pcdb.config.decisions import Decisions
from pcdb.config.dr import Dr, DrRole, DrScenario, DrStep
from pcdb.config.environment import Environment
from pcdb.config.install import Approval, Approver, Install, Phase
from pcdb.config.loader import load_environment, spec_path, validate
from pcdb.config.monitoring import (
    WRITES_DOWN,
    AlertRule,
    AzureMetricAlert,
    BusinessMetric,
    Condition,
    HealthRule,
    HealthSettings,
    Level,
    Monitoring,
    Operator,
    PerformanceTarget,
    Threshold,
    outage_rules,
)
from pcdb.config.network import AllowedSubnet, Network, Subnet, Vnet, WiderOverride
from pcdb.config.notifications import Channel, Notifications
from pcdb.config.operations import (
    CapacitySettings,
    Cost,
    CostComponent,
    IncidentSettings,
    IncidentStep,
    MaintenanceSpec,
    Operations,
    Severity,
)
from pcdb.config.orchestrator import OrchestratorSpec, OrchestratorTls
from pcdb.config.sandbox import SandboxSpec
from pcdb.config.secrets import KeyVaultRef, SecretRef
from pcdb.config.security import ConnectionPolicy, EncryptionAtRest, Grants, PasswordPolicy, Role, Security, TablePrivilege, Tls
from pcdb.config.server import Admin, Connection, HighAvailability, Replica, Server, Service, Storage
from pcdb.config.types import (
    Cidr,
    Clock,
    Cron,
    Duration,
    Location,
    Model,
    NetworkName,
    Region,
    ResourceName,
    ServerName,
    Size,
    TimeZone,
    cron_is_valid,
)
from pcdb.paths import DEPLOYMENTS

__all__ = [
    "ActionGroup",
    "Admin",
    "AlertRule",
    "AllowedSubnet",
    "Approval",
    "Approver",
    "Azure",
    "AzureMetricAlert",
    "Backup",
    "BackupVerification",
    "BusinessMetric",
    "CapacitySettings",
    "Channel",
    "Cidr",
    "Clock",
    "Condition",
    "Connection",
    "ConnectionPolicy",
    "Cost",
    "CostComponent",
    "Cron",
    "DEPLOYMENTS",
    "Decisions",
    "DiagnosticSetting",
    "Dr",
    "DrRole",
    "DrScenario",
    "DrStep",
    "Duration",
    "EncryptionAtRest",
    "Environment",
    "EvidenceArchive",
    "Grants",
    "HealthRule",
    "HealthSettings",
    "HighAvailability",
    "IncidentSettings",
    "IncidentStep",
    "Install",
    "KeyVaultRef",
    "Level",
    "Location",
    "LogBackup",
    "MaintenanceSpec",
    "Model",
    "Monitoring",
    "Network",
    "NetworkName",
    "Notifications",
    "Operations",
    "Operator",
    "OrchestratorSpec",
    "OrchestratorTls",
    "PasswordPolicy",
    "PerformanceTarget",
    "Phase",
    "Region",
    "Replica",
    "ResourceName",
    "Role",
    "SandboxSpec",
    "SecretRef",
    "Security",
    "Server",
    "ServerName",
    "Service",
    "Severity",
    "Size",
    "Storage",
    "Subnet",
    "TablePrivilege",
    "Threshold",
    "TimeZone",
    "Tls",
    "Vnet",
    "WRITES_DOWN",
    "WiderOverride",
    "Window",
    "cron_is_valid",
    "load_environment",
    "outage_rules",
    "spec_path",
    "validate",
]
