"""Every Azure resource the install creates in production (§7), as the SDK models that are sent.

``desired_resources`` is a pure function of the spec: the plan shows these bodies, and the
Azure target sends the very same models. Values come from the spec only; parameter values are
in each parameter's own unit (C-3: shared_buffers 4GB is 524288, not 4194304).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pcdb import clock, params
from pcdb.config import Environment
from pcdb.units import parse_size

PLACEHOLDER_SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
# The extensions the runbooks CREATE (pcdb/install.py, pcdb/backups.py): Azure allow-lists them.
RUNBOOK_EXTENSIONS = ("pg_stat_statements", "amcheck")
# Azure's own server parameters pcdb sets (not PostgreSQL's), applied with Phase 3's parameters.
PLATFORM_PARAMETERS = ("azure.extensions", "metrics.collector_database_activity")
# Azure Monitor metrics of a flexible server emitted only when metrics.collector_database_activity is on.
ENHANCED_METRICS = {"longest_transaction_time_sec", "longest_query_time_sec", "oldest_backend_xmin_age",
                    "sessions_by_state", "deadlocks", "physical_replication_delay_in_seconds",
                    "physical_replication_delay_in_bytes", "disk_iops_consumed_percentage"}
PG = "Microsoft.DBforPostgreSQL/flexibleServers"
ISO = {"1min": "PT1M", "2min": "PT2M", "5min": "PT5M", "10min": "PT10M", "15min": "PT15M", "1h": "PT1H"}


@dataclass(frozen=True)
class Desired:
    """One resource: its kind, ARM id, and the SDK model that is PUT."""

    type: str
    name: str
    id: str
    model: Any
    phase: int

    def body(self) -> dict:
        """The request body as sent to ARM (wire names)."""
        if hasattr(self.model, "as_dict") and not hasattr(self.model, "serialize"):
            return _plain(self.model.as_dict())
        if hasattr(self.model, "serialize"):
            return _plain(self.model.serialize(keep_readonly=False))
        return _plain(dict(self.model))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if hasattr(value, "as_dict"):
        return _plain(value.as_dict())
    if hasattr(value, "total_seconds"):
        return f"PT{int(value.total_seconds())}S"
    return value


def _iso(duration) -> str:
    seconds = int(duration.total_seconds())
    return f"PT{seconds // 60}M" if seconds % 60 == 0 else f"PT{seconds}S"


def desired_resources(env: Environment, subscription: str = PLACEHOLDER_SUBSCRIPTION) -> list[Desired]:
    """The production resources in install order (phases 1-3, 5, 6)."""
    from azure.mgmt.monitor import models as mon
    from azure.mgmt.network import models as net
    from azure.mgmt.postgresqlflexibleservers import models as pg
    from azure.mgmt.privatedns import models as dns
    from azure.mgmt.resource.resources import models as res

    if env.azure is None:
        raise ValueError(f"environment {env.name!r} has no azure section")
    az, server, network = env.azure, env.server, env.network
    rg_id = f"/subscriptions/{subscription}/resourceGroups/{az.resource_group}"
    server_id = f"{rg_id}/providers/{PG}/{server.name}"
    out = [Desired("resource_group", az.resource_group, rg_id,
                   res.ResourceGroup(location=server.location, tags={"service": env.service.name}), 1)]
    subnet_id = dns_id = None
    if network.mode == "vnet":
        vnet_id = f"{rg_id}/providers/Microsoft.Network/virtualNetworks/{network.vnet.name}"
        subnet_id = f"{vnet_id}/subnets/{network.subnet.name}"
        dns_id = f"{rg_id}/providers/Microsoft.Network/privateDnsZones/{network.private_dns_zone}"
        out += [
            Desired("virtual_network", network.vnet.name, vnet_id, net.VirtualNetwork(
                location=server.location, address_space=net.AddressSpace(address_prefixes=[network.vnet.address_prefix])), 2),
            Desired("subnet", network.subnet.name, subnet_id, net.Subnet(
                address_prefix=network.subnet.address_prefix,
                delegations=[net.Delegation(name="postgresql", service_name=network.subnet.delegation)]), 2),
            Desired("private_dns_zone", network.private_dns_zone, dns_id, dns.PrivateZone(location="global"), 2),
            Desired("private_dns_zone_link", f"{network.vnet.name}-link",
                    f"{dns_id}/virtualNetworkLinks/{network.vnet.name}-link",
                    dns.VirtualNetworkLink(location="global", virtual_network=dns.SubResource(id=vnet_id),
                                           registration_enabled=False), 2),
        ]
    ha = server.high_availability
    out.append(Desired("server", server.name, server_id, pg.Server(
        location=server.location, sku=pg.Sku(name=server.sku, tier=server.tier),
        administrator_login=server.admin.user, version=server.version,
        availability_zone=ha.primary_zone,
        storage=pg.Storage(storage_size_gb=server.storage.size // parse_size("1GB"),
                           auto_grow="Enabled" if server.storage.auto_grow else "Disabled"),
        backup=pg.Backup(backup_retention_days=env.backup.retention.days,
                         geo_redundant_backup="Enabled" if env.backup.geo_redundant else "Disabled"),
        high_availability=pg.HighAvailability(mode=ha.mode, standby_availability_zone=ha.standby_zone),
        network=pg.Network(delegated_subnet_resource_id=subnet_id, private_dns_zone_arm_resource_id=dns_id,
                           public_network_access="Disabled" if network.mode == "vnet" else "Enabled"),
        create_mode="Create"), 3))
    out.append(Desired("database", env.service.database, f"{server_id}/databases/{env.service.database}",
                       pg.Database(charset="UTF8"), 3))
    replica_id = f"{rg_id}/providers/{PG}/{env.replica.name}"
    out.append(Desired("replica", env.replica.name, replica_id, pg.Server(
        location=env.replica.location, sku=pg.Sku(name=env.replica.sku, tier=server.tier),
        create_mode="Replica", source_server_resource_id=server_id), 3))
    parameters = dict(env.desired_parameters())
    tls = env.security.tls
    parameters["ssl_min_protocol_version"] = params.canonical("ssl_min_protocol_version", tls.min_version, owned=True)
    # Azure's own parameter (not PostgreSQL's): TLS required on every connection (R-SEC-4).
    secure = "on" if tls.require_secure_transport else "off"
    parameters["require_secure_transport"] = params.ParamValue("require_secure_transport", secure, None, False, secure)
    # Azure refuses CREATE EXTENSION for what azure.extensions does not list: the extensions the
    # runbooks create (Phase 6: pg_stat_statements; the restore test: amcheck).
    allowed = ",".join(sorted(e.upper() for e in RUNBOOK_EXTENSIONS))
    parameters["azure.extensions"] = params.ParamValue("azure.extensions", allowed, None, False, allowed)
    if any(a.metric in ENHANCED_METRICS for a in env.monitoring.azure_metric_alerts):
        # Azure's enhanced metrics are emitted only with this on: without it those alerts never fire.
        parameters["metrics.collector_database_activity"] = params.ParamValue(
            "metrics.collector_database_activity", "on", None, False, "on")
    for name, value in parameters.items():
        phase = 5 if name in env.security.audit or name.startswith(("require_secure", "ssl_")) else 3
        out.append(Desired("configuration", name, f"{server_id}/configurations/{name}",
                           pg.Configuration(value=value.setting, source="user-override"), phase))
    if network.mode == "public":
        for subnet in network.allowed_subnets:
            first, last = _range(subnet.cidr)
            out.append(Desired("firewall_rule", f"allow-{subnet.name}", f"{server_id}/firewallRules/allow-{subnet.name}",
                               pg.FirewallRule(start_ip_address=first, end_ip_address=last), 5))
    law_id = f"{rg_id}/providers/Microsoft.OperationalInsights/workspaces/{az.log_analytics_workspace}"
    from azure.mgmt.loganalytics import models as la
    out.append(Desired("log_analytics_workspace", az.log_analytics_workspace, law_id,
                       la.Workspace(location=server.location), 6))
    diag = az.diagnostic_setting
    out.append(Desired("diagnostic_setting", diag.name,
                       f"{server_id}/providers/Microsoft.Insights/diagnosticSettings/{diag.name}",
                       res.GenericResource(properties={
                           "workspaceId": law_id,
                           "logs": [{"category": c, "enabled": True} for c in diag.logs],
                           "metrics": [{"category": c, "enabled": True} for c in diag.metrics]}), 6))
    from pcdb.azure import workbook as wb
    out.append(Desired("workbook", "pcdb-dashboard", f"{rg_id}/providers/Microsoft.Insights/workbooks/"
                       f"{wb.workbook_name(server_id)}", res.GenericResource(
                           location=server.location, kind="shared", properties={
                               "displayName": f"{env.service.name} database ({env.name}): §6.3 dashboard",
                               "category": "workbook", "sourceId": "azure monitor", "version": "Notebook/1.0",
                               "serializedData": wb.serialized(wb.workbook(env, server_id, replica_id, law_id))}), 6))
    groups = ActionGroups(env, rg_id)
    alerts = []
    for alert in env.monitoring.azure_metric_alerts:
        scope = server_id if alert.scope == "server" else replica_id
        group_id = groups.id_for(groups.channels_of_metric_alert(alert))
        alerts.append(Desired("metric_alert", alert.name, f"{rg_id}/providers/Microsoft.Insights/metricAlerts/{alert.name}",
                              mon.MetricAlertResource(
                                  location="global", description=alert.description, severity=alert.severity,
                                  enabled=True, scopes=[scope], evaluation_frequency=_iso(alert.frequency),
                                  window_size=_iso(alert.window),
                                  criteria=mon.MetricAlertSingleResourceMultipleMetricCriteria(all_of=[mon.MetricCriteria(
                                      name=alert.metric, metric_name=alert.metric, metric_namespace=PG,
                                      time_aggregation=alert.aggregation, operator=alert.operator,
                                      threshold=alert.threshold)]),
                                  actions=[mon.MetricAlertAction(action_group_id=group_id)]), 6))
    alerts += _event_alerts(env, rg_id, server_id, groups)
    alerts.append(_budget(env, rg_id, groups))
    out += groups.desired()    # before the alerts that name them
    out += alerts
    out += _evidence_archive(env, rg_id)
    return out


def _budget(env: Environment, rg_id: str, groups: ActionGroups) -> Desired:
    """§9.2.1 as an Azure budget on the resource group: the monthly budget, notifications to the
    warning channels' action group when actual cost passes the budget and when the forecast passes
    the alert threshold ($1,600). Its start date is the month it is created in (Azure requires
    it) and is kept as Azure has it afterwards (pcdb.azure.plan.ADOPTED). Each notification also
    names the warning channels' email recipients: the budget API requires contactEmails
    (consumption.json 2021-10-01), and a mail from Azure itself reaches the DBAs even if the action
    group is ever changed."""
    from azure.mgmt.resource.resources import models as res

    cost = env.operations.cost
    warning = env.notifications.routing.get("warning", [])
    group = groups.id_for(warning)
    channels = env.notifications.channels
    emails = sorted({r for c in warning if c in channels and channels[c].kind == "email" for r in channels[c].recipients})
    start = clock.now().replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    name = f"budget-{env.name}-monthly"
    return Desired("budget", name, f"{rg_id}/providers/Microsoft.Consumption/budgets/{name}", res.GenericResource(
        properties={"category": "Cost", "amount": cost.monthly_budget_usd, "timeGrain": "Monthly",
                    "timePeriod": {"startDate": start.strftime("%Y-%m-%dT%H:%M:%SZ")},
                    "notifications": {
                        "actual-over-budget": {"enabled": True, "operator": "GreaterThan", "threshold": 100,
                                               "thresholdType": "Actual", "contactEmails": emails,
                                               "contactGroups": [group]},
                        "forecast-over-alert": {"enabled": True, "operator": "GreaterThan",
                                                "threshold": round(100 * cost.alert_monthly_usd / cost.monthly_budget_usd, 1),
                                                "thresholdType": "Forecasted", "contactEmails": emails,
                                                "contactGroups": [group]}}}), 6)


def _evidence_archive(env: Environment, rg_id: str) -> list[Desired]:
    """A storage account (Entra ID only, no public blobs, TLS 1.2+), private containers for the
    reports (with the ledger's anchors) and for the partition archives, and a time-based
    immutability policy on each: a blob can be added, never changed or deleted within the
    retention (write-once evidence, and write-once archives of customer rows)."""
    from azure.mgmt.resource.resources import models as res

    archive = env.azure.evidence_archive
    if archive is None:
        return []
    account_id = f"{rg_id}/providers/Microsoft.Storage/storageAccounts/{archive.storage_account}"
    container_id = f"{account_id}/blobServices/default/containers/{archive.container}"
    partitions_id = f"{account_id}/blobServices/default/containers/{archive.partition_container}"
    days = int(archive.retention.total_seconds() // 86400)
    return [
        Desired("storage_account", archive.storage_account, account_id, res.GenericResource(
            location=env.server.location, kind="StorageV2", sku=res.Sku(name=archive.redundancy),
            properties={"minimumTlsVersion": "TLS1_2", "allowBlobPublicAccess": False,
                        "allowSharedKeyAccess": False, "supportsHttpsTrafficOnly": True,
                        "publicNetworkAccess": "Enabled"}), 6),
        Desired("blob_container", archive.container, container_id, res.GenericResource(
            properties={"publicAccess": "None"}), 6),
        Desired("blob_container", archive.partition_container, partitions_id,
                res.GenericResource(properties={"publicAccess": "None"}), 6),
        Desired("immutability_policy", f"{archive.container}/default", f"{container_id}/immutabilityPolicies/default",
                res.GenericResource(properties={"immutabilityPeriodSinceCreationInDays": days,
                                                "allowProtectedAppendWrites": False}), 6),
        Desired("immutability_policy", f"{archive.partition_container}/default",
                f"{partitions_id}/immutabilityPolicies/default",
                res.GenericResource(properties={"immutabilityPeriodSinceCreationInDays": days,
                                                "allowProtectedAppendWrites": False}), 6),
    ]


# The R-MON-4 rules Azure has no metric for: a failover is a Resource Health event of the server
# (an activity-log alert), slow queries are lines of the server log in Log Analytics (a log alert
# over the PostgreSQLLogs the diagnostic setting sends; log_min_duration_statement writes them).
SLOW_QUERY_KQL = ('AzureDiagnostics\n| where ResourceProvider == "MICROSOFT.DBFORPOSTGRESQL" '
                  'and Category == "PostgreSQLLogs"\n| where Message has "duration:"')


# The Azure metric an alert watches -> the §6.2.2 rule metric that gives its channels.
RULE_METRIC = {"connections_failed": "connection_failed", "physical_replication_delay_in_seconds": "replica_lag"}


class ActionGroups:
    """One action group per channel set (§6.2.2 gives each rule its channels): a CPU warning goes
    to Teams only and never texts the person on duty. Named ``<action_group.name>-<channels>``."""

    def __init__(self, env: Environment, rg_id: str):
        self.env, self.rg_id = env, rg_id
        self.used: dict[tuple[str, ...], str] = {}

    def channels_of_metric_alert(self, alert) -> tuple[str, ...]:
        wanted = RULE_METRIC.get(alert.metric, alert.metric)
        for rule in self.env.monitoring.alert_rules:
            if rule.condition.metric == wanted:
                return tuple(rule.channels)
        level = "critical" if alert.severity <= 1 else "warning" if alert.severity == 2 else "info"
        return tuple(self.env.notifications.routing.get(level, []))

    def name(self, channels: tuple[str, ...]) -> str:
        return f"{self.env.azure.action_group.name}-{'-'.join(sorted(set(channels)))}"

    def id_for(self, channels) -> str:
        key = tuple(sorted(set(channels)))
        self.used.setdefault(key, f"{self.rg_id}/providers/Microsoft.Insights/actionGroups/{self.name(key)}")
        return self.used[key]

    def desired(self) -> list[Desired]:
        from azure.mgmt.monitor import models as mon

        az, channels = self.env.azure, self.env.notifications.channels
        out = []
        for key, group_id in sorted(self.used.items()):
            kinds = {channels[c].kind: channels[c] for c in key if c in channels}
            email = [mon.EmailReceiver(name=f"email-{i}", email_address=a, use_common_alert_schema=True)
                     for i, a in enumerate(kinds["email"].recipients)] if "email" in kinds else []
            sms = [mon.SmsReceiver(name=f"sms-{i}", country_code=a.lstrip("+").split("-")[0],
                                   phone_number="".join(a.lstrip("+").split("-")[1:]))
                   for i, a in enumerate(kinds["sms"].recipients)] if "sms" in kinds else []
            webhook = [mon.WebhookReceiver(name="teams", service_uri="<secret: " + az.action_group.teams_webhook.describe()
                                           + ">", use_common_alert_schema=True)] if "teams" in kinds else []
            suffix = "".join(c[0] for c in key)
            short = f"{az.action_group.short_name[:12 - len(suffix) - 1]}-{suffix}"
            out.append(Desired("action_group", self.name(key), group_id, mon.ActionGroupResource(
                location="Global", group_short_name=short, enabled=True,
                email_receivers=email, sms_receivers=sms, webhook_receivers=webhook), 6))
        return out


def _event_alerts(env: Environment, rg_id: str, server_id: str, groups: ActionGroups) -> list[Desired]:
    from azure.mgmt.monitor import models as mon

    out = []
    rules = {r.condition.metric: r for r in env.monitoring.alert_rules}
    severity = {"critical": 1, "warning": 2, "info": 3}
    if "failover_event" in rules:
        rule, name = rules["failover_event"], "alert-failover-event"
        out.append(Desired("activity_log_alert", name, f"{rg_id}/providers/Microsoft.Insights/activityLogAlerts/{name}",
                           mon.ActivityLogAlertResource(
                               location="Global", scopes=[server_id], enabled=True,
                               description=f"{rule.title}: an HA failover, like any loss of availability, is a "
                                           "Resource Health event of the server",
                               condition=mon.AlertRuleAllOfCondition(all_of=[
                                   mon.AlertRuleAnyOfOrLeafCondition(field="category", equals="ResourceHealth")]),
                               actions=mon.ActionList(action_groups=[mon.ActionGroup(
                                   action_group_id=groups.id_for(rule.channels))])), 6))
    if "slow_query_count" in rules:
        rule, name = rules["slow_query_count"], "alert-slow-queries"
        minutes = max(1, int(rule.duration.total_seconds() // 60))
        out.append(Desired("log_alert", name, f"{rg_id}/providers/Microsoft.Insights/scheduledQueryRules/{name}",
                           mon.ScheduledQueryRuleResource(
                               location=env.server.location, kind="LogAlert", enabled=True,
                               description=f"{rule.title}: more than {rule.condition.value:g} statements slower than "
                                           f"log_min_duration_statement per minute, {minutes} minutes in a row",
                               severity=severity[rule.level], scopes=[server_id],
                               evaluation_frequency="PT1M", window_size="PT1M",
                               criteria=mon.ScheduledQueryRuleCriteria(all_of=[mon.Condition(
                                   query=SLOW_QUERY_KQL, time_aggregation="Count", operator="GreaterThan",
                                   threshold=rule.condition.value,
                                   failing_periods=mon.ConditionFailingPeriods(
                                       number_of_evaluation_periods=minutes, min_failing_periods_to_alert=minutes))]),
                               actions=mon.Actions(action_groups=[groups.id_for(rule.channels)])), 6))
    return out


def _range(cidr: str) -> tuple[str, str]:
    import ipaddress

    net = ipaddress.ip_network(cidr)
    return str(net.network_address), str(net.broadcast_address)
