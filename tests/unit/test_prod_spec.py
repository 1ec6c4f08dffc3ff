"""deployments/prod.yaml equals the client's document, value by value (cited by requirement ID)."""

from datetime import timedelta

import pytest

from pcdb.config import load_environment
from pcdb.units import parse_size

PROD = load_environment("prod")
GB = parse_size("1GB")


def _alert(name):
    return next(a for a in PROD.monitoring.azure_metric_alerts if a.name == name)


def _rule(name):
    return next(r for r in PROD.monitoring.alert_rules if r.name == name)


def _role(name):
    return next(r for r in PROD.security.roles if r.name == name)


def _metric(name):
    return next(m for m in PROD.monitoring.system_metrics if m.metric == name)


CASES = [
    ("R-SYS-1", lambda: PROD.service.database, "product_change_db"),
    ("R-SYS-1", lambda: PROD.service.schema_name, "product_change"),
    ("R-SYS-2", lambda: PROD.server.location, "koreacentral"),
    ("R-SYS-2", lambda: PROD.server.version, "14"),
    ("R-SYS-2", lambda: PROD.server.tier, "GeneralPurpose"),
    ("R-SYS-2", lambda: PROD.server.sku, "Standard_D4s_v3"),
    ("R-SYS-2", lambda: (PROD.server.vcores, PROD.server.memory), (4, 16 * GB)),
    ("R-SYS-2", lambda: PROD.server.storage.size, 256 * GB),
    ("R-SYS-2", lambda: (PROD.server.storage.auto_grow, PROD.server.storage.auto_grow_at_percent), (True, 80)),
    ("R-SYS-2", lambda: (PROD.server.storage.auto_grow_step, PROD.server.storage.max_size), (64 * GB, 16 * 1024 * GB)),
    ("R-SYS-2", lambda: PROD.server.storage.iops, 1280),
    ("R-SYS-3", lambda: PROD.server.high_availability.mode, "ZoneRedundant"),
    ("R-SYS-3", lambda: (PROD.server.high_availability.primary_zone, PROD.server.high_availability.standby_zone), ("1", "2")),
    ("R-SYS-3", lambda: PROD.server.high_availability.failover_within, timedelta(seconds=60)),
    ("R-SYS-3", lambda: PROD.server.high_availability.sla_percent, 99.95),
    ("R-SYS-4", lambda: (PROD.replica.name, PROD.replica.location, PROD.replica.sku),
     ("phonebill-postgresql-replica", "koreasouth", "Standard_D2s_v3")),
    ("R-SYS-4", lambda: PROD.replica.max_lag, timedelta(minutes=1)),
    ("R-SYS-5", lambda: PROD.azure.resource_group, "rg-phonebill-prod"),
    ("R-SYS-5", lambda: (PROD.network.vnet.name, PROD.network.vnet.address_prefix), ("vnet-phonebill-prod", "10.0.0.0/16")),
    ("R-SYS-5", lambda: (PROD.network.subnet.name, PROD.network.subnet.address_prefix, PROD.network.subnet.delegation),
     ("subnet-database", "10.0.2.0/24", "Microsoft.DBforPostgreSQL/flexibleServers")),
    ("R-SYS-5", lambda: PROD.server.name, "phonebill-postgresql-prod"),
    ("R-SYS-5", lambda: PROD.server.admin.user, "dbadmin"),
    ("R-SYS-5", lambda: PROD.azure.log_analytics_workspace, "law-phonebill-prod"),
    ("R-SYS-6", lambda: (PROD.server.connection.sslmode, PROD.server.connection.connect_timeout, PROD.server.connection.port),
     ("require", timedelta(seconds=30), 5432)),
    ("R-SYS-6", lambda: PROD.service.concurrent_users, 1000),
    ("C-7", lambda: PROD.network.private_dns_zone, "phonebill-prod.private.postgres.database.azure.com"),
    ("R-IDX-1", lambda: PROD.indexes, {
        "pc_product_change_history": ["idx_pc_history_line_status_date", "idx_pc_history_customer_date",
                                      "idx_pc_history_status_date", "idx_pc_history_kos_request_gin",
                                      "idx_pc_history_kos_response_gin"],
        "pc_kos_integration_log": ["idx_kos_log_request_type_date", "idx_kos_log_type_success_date",
                                   "idx_kos_log_response_time"]}),
    ("R-SEC-1", lambda: (_role("product_change_app").connection_limit, _role("product_change_app").attributes), (150, [])),
    ("R-SEC-1", lambda: _role("product_change_readonly").connection_limit, 20),
    ("R-SEC-1", lambda: (_role("product_change_admin").connection_limit, _role("product_change_admin").attributes),
     (10, ["CREATEDB"])),   # CREATEROLE refused on PG 14/15 (C-8)
    ("R-SEC-3", lambda: (PROD.security.password_policy.min_length, PROD.security.password_policy.expiry,
                         PROD.security.password_policy.history), (12, timedelta(days=90), 5)),
    ("R-SEC-3", lambda: PROD.security.password_policy.require, ["upper", "lower", "digit", "special"]),
    ("R-SEC-4", lambda: (PROD.security.tls.min_version, PROD.security.tls.require_secure_transport), ("TLSv1.3", True)),
    ("R-SEC-5", lambda: [s.cidr for s in PROD.network.allowed_subnets], ["10.0.1.0/24", "10.0.4.0/24"]),
    ("R-SEC-7", lambda: (PROD.security.encryption_at_rest.algorithm, PROD.security.encryption_at_rest.key_rotation),
     ("AES-256", timedelta(days=365))),
    ("R-BAK-1", lambda: (PROD.backup.retention, PROD.backup.geo_redundant, PROD.backup.geo_region),
     (timedelta(days=35), True, "koreasouth")),
    ("R-BAK-1", lambda: (PROD.backup.window.start, PROD.backup.window.end, PROD.backup.window.timezone),
     ("02:00", "04:00", "Asia/Seoul")),
    ("R-BAK-1", lambda: PROD.backup.pitr_granularity, timedelta(minutes=5)),
    ("R-DR-1", lambda: (PROD.dr.zone_failure.rto, PROD.dr.zone_failure.rpo), (timedelta(minutes=2), timedelta(0))),
    ("R-DR-2", lambda: (PROD.dr.region_failure.rto, PROD.dr.region_failure.rpo), (timedelta(minutes=30), timedelta(hours=1))),
    ("R-DR-2", lambda: [s.owner for s in PROD.dr.region_failover_steps],
     ["DBA/ops", "DBA", "DBA", "dev team", "network team", "ops"]),
    ("R-DR-3", lambda: (PROD.dr.data_corruption.rto, PROD.dr.data_corruption.rpo),
     (timedelta(hours=4), "moment-before-corruption")),
    ("R-MON-1", lambda: [(_metric(m).value, _metric(m).level) for m in
                         ("cpu_percent", "memory_percent", "storage_percent", "iops_percent",
                          "active_connections", "replica_lag_seconds")],
     [(80, "warning"), (85, "warning"), (75, "warning"), (80, "warning"), (150, "critical"), (300, "critical")]),
    ("R-MON-2", lambda: [(p.metric, p.target, p.alarm) for p in PROD.monitoring.performance_targets], [
        ("avg_query_time", "< 100ms", "> 500ms"), ("transactions_per_second", "> 100", "< 50"),
        ("buffer_cache_hit_ratio", "> 95%", "< 90%"), ("deadlock_rate", "0", "> 5/hour"),
        ("slow_query_percentage", "< 1%", "> 5%")]),
    ("R-MON-3", lambda: [(b.target, b.warning, b.critical) for b in PROD.monitoring.business_metrics],
     [("> 95%", "< 90%", "< 80%"), ("> 98%", "< 95%", "< 90%"), ("< 5s", "> 10s", "> 30s")]),
    ("R-MON-4", lambda: (_rule("database-connection-failure").duration, _rule("database-connection-failure").channels),
     (timedelta(minutes=1), ["teams", "sms"])),
    ("R-MON-4", lambda: (_rule("replica-lag-exceeded").condition.value, _rule("replica-lag-exceeded").duration,
                         _rule("replica-lag-exceeded").channels), (300, timedelta(minutes=2), ["teams", "email"])),
    ("R-MON-4", lambda: _rule("failover-event").channels, ["teams", "sms", "email"]),
    ("R-MON-4", lambda: (_rule("high-cpu").condition.value, _rule("high-cpu").duration, _rule("high-cpu").channels),
     (80, timedelta(minutes=5), ["teams"])),
    ("R-MON-4", lambda: (_rule("high-storage").condition.value, _rule("high-storage").duration,
                         _rule("high-storage").channels), (75, timedelta(minutes=10), ["teams", "email"])),
    ("R-MON-4", lambda: (_rule("slow-queries-increasing").condition.value, _rule("slow-queries-increasing").duration),
     (10, timedelta(minutes=5))),
    ("R-MON-5", lambda: sorted(c.kind for c in PROD.notifications.channels.values()), ["email", "sms", "teams"]),
    ("R-MON-6", lambda: (_alert("alert-high-cpu").severity, _alert("alert-high-cpu").window,
                         _alert("alert-high-cpu").frequency, _alert("alert-high-cpu").threshold),
     (2, timedelta(minutes=5), timedelta(minutes=1), 80)),
    ("R-MON-6", lambda: (_alert("alert-high-connections").severity, _alert("alert-high-connections").window,
                         _alert("alert-high-connections").threshold), (1, timedelta(minutes=1), 150)),
    ("R-MON-6", lambda: (PROD.azure.diagnostic_setting.logs, PROD.azure.diagnostic_setting.metrics),
     (["PostgreSQLLogs"], ["AllMetrics"])),
    ("R-INS-4", lambda: [a.name for a in PROD.install.approval.approvers], ["김기획", "이개발", "정테스트", "최운영"]),
    ("R-INS-4", lambda: PROD.install.approval.required, True),
    ("§11.1", lambda: [(p.number, p.depends_on, p.duration) for p in PROD.install.phases],
     [(1, [], timedelta(hours=2)), (2, [1], timedelta(hours=1)), (3, [2], timedelta(hours=2)),
      (4, [3], timedelta(hours=1)), (5, [4], timedelta(hours=2)), (6, [5], timedelta(hours=2)),
      (7, [6], timedelta(hours=4)), (8, [7], timedelta(hours=2))]),
    ("R-OPS-3", lambda: PROD.operations.log_partition_retention_months, 12),
    ("R-OPS-3", lambda: (PROD.operations.cost.monthly_budget_usd, PROD.operations.cost.alert_monthly_usd,
                         PROD.operations.cost.alert_increase_percent), (1400, 1600, 20)),
    ("R-OPS-4", lambda: [(s.level, s.response) for s in PROD.operations.incident_severities],
     [("P1", timedelta(minutes=15)), ("P2", timedelta(hours=1)), ("P3", timedelta(hours=4)), ("P4", timedelta(hours=24))]),
]

PARAMETERS = [  # R-PAR-1 and R-SEC-6: declared value -> value in the parameter's own unit
    ("R-PAR-1", "shared_buffers", "4GB", "524288"),
    ("R-PAR-1", "effective_cache_size", "12GB", "1572864"),
    ("R-PAR-1", "work_mem", "32MB", "32768"),
    ("R-PAR-1", "maintenance_work_mem", "512MB", "524288"),
    ("R-PAR-1", "max_connections", "200", "200"),
    ("R-PAR-1", "idle_in_transaction_session_timeout", "30min", "1800000"),
    ("R-PAR-1", "checkpoint_completion_target", "0.9", "0.9"),
    ("R-PAR-1", "wal_buffers", "16MB", "2048"),
    ("R-PAR-1", "max_wal_size", "4GB", "4096"),
    ("R-PAR-1", "log_min_duration_statement", "1000ms", "1000"),
    ("R-PAR-1", "track_activities", "on", "on"),
    ("R-PAR-1", "track_counts", "on", "on"),
    ("R-PAR-1", "track_functions", "all", "all"),
    ("R-PAR-1", "shared_preload_libraries", "pg_stat_statements", "pg_stat_statements"),
    ("R-SEC-6", "log_statement", "all", "all"),
    ("R-SEC-6", "log_connections", "on", "on"),
    ("R-SEC-6", "log_disconnections", "on", "on"),
    ("R-SEC-6", "log_duration", "on", "on"),
    ("R-SEC-6", "log_hostname", "on", "on"),
    ("R-SEC-6", "log_line_prefix", "%t [%p]: user=%u,db=%d,app=%a,client=%h ", "%t [%p]: user=%u,db=%d,app=%a,client=%h "),
    ("R-SEC-6", "log_filename", "postgresql-%Y-%m-%d_%H%M%S.log", "postgresql-%Y-%m-%d_%H%M%S.log"),
    ("R-SEC-6", "log_file_mode", "0640", "416"),
    ("R-SEC-6", "log_rotation_age", "1d", "1440"),
    ("R-SEC-6", "log_rotation_size", "100MB", "102400"),
    ("R-SEC-6", "log_truncate_on_rotation", "off", "off"),
]


@pytest.mark.parametrize("rid, actual, expected", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_prod_spec_matches_the_document(rid, actual, expected):
    assert actual() == expected, rid


@pytest.mark.parametrize("rid, name, declared, setting", PARAMETERS, ids=[p[1] for p in PARAMETERS])
def test_prod_parameters_match_the_document_in_their_own_units(rid, name, declared, setting):
    applied = PROD.desired_parameters()[name]
    assert (applied.declared, applied.setting) == (declared, setting), rid


def test_prod_sets_exactly_the_documents_parameters_and_no_log_slow_queries():
    expected = {p[1] for p in PARAMETERS}
    assert set(PROD.desired_parameters()) == expected  # C-4: log_slow_queries is not sent


def test_prod_holds_no_secret_only_sources():
    refs = [PROD.server.admin.password, PROD.azure.subscription_id, *(r.password for r in PROD.security.roles)]
    assert all((r.env or r.prefect_secret) and not r.generate for r in refs)


def test_local_mirrors_prod_service_roles_and_rules():
    local = load_environment("local")
    assert local.service == PROD.service
    assert [(r.name, r.connection_limit, r.attributes) for r in local.security.roles] == \
        [(r.name, r.connection_limit, r.attributes) for r in PROD.security.roles]
    # The same rules, but an idle laptop does not page for TPS < 50.
    assert local.monitoring.model_copy(update={"health": PROD.monitoring.health}) == PROD.monitoring
    assert local.monitoring.health.disabled_rules == ["transactions-per-second"] and local.indexes == PROD.indexes
    assert local.security.audit == PROD.security.audit
    assert all(r.password.generate for r in local.security.roles)


@pytest.mark.parametrize("field", ["verify_server_certificate", "require_secure_transport"])
def test_a_production_spec_that_turns_tls_verification_off_is_refused(field):
    from pcdb.config import validate
    from pcdb.errors import ConfigError

    data = PROD.model_dump(mode="json", by_alias=True)
    data["security"]["tls"][field] = False
    with pytest.raises(ConfigError, match=f"security.tls.{field}.*false on production"):
        validate(data)
    data["production"] = False                        # a test environment may, and is told nothing
    validate(data)
