"""A bad spec fails before anything runs, naming the file, the line, the field and what to do."""

from pathlib import Path

import pytest
import yaml

from pcdb import secrets
from pcdb.config import DEPLOYMENTS, load_environment
from pcdb.errors import ConfigError, SecretError


def spec_with(tmp_path: Path, override: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(f"extends: {DEPLOYMENTS / 'local.yaml'}\n{override}")
    return path


def problems_of(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_environment(path)
    return str(caught.value)


def test_both_shipped_specs_are_valid():
    assert load_environment("prod").target == "azure"
    assert load_environment("local").target == "sandbox"


def test_unknown_parameter_is_rejected_with_the_c4_explanation(tmp_path):
    message = problems_of(spec_with(tmp_path, "parameters:\n  log_slow_queries: on\n"))
    assert "bad.yaml:3: parameters.log_slow_queries:" in message
    assert "MySQL's parameter" in message and "log_min_duration_statement" in message
    assert "nothing was changed" in message


def test_bad_unit_names_field_value_and_allowed_units(tmp_path):
    message = problems_of(spec_with(tmp_path, "parameters:\n  work_mem: 32mb\n"))
    assert "parameters.work_mem" in message and "'32mb'" in message and "write 'MB'" in message


def test_unit_less_size_in_a_model_field(tmp_path):
    message = problems_of(spec_with(tmp_path, "server:\n  storage:\n    size: 256\n"))
    assert "server.storage.size" in message and "no unit" in message


def test_unknown_field_is_rejected(tmp_path):
    message = problems_of(spec_with(tmp_path, "server:\n  sku_name: Standard_D4s_v3\n"))
    assert "bad.yaml:3: server.sku_name: unknown field" in message


@pytest.mark.parametrize("cidr, expected", [
    ("10.0.1.0/33", "not a CIDR block"),
    ("10.0.1.7/24", "did you mean 10.0.1.0/24"),
    ("banana", "not a CIDR block"),
])
def test_invalid_cidrs_are_rejected(tmp_path, cidr, expected):
    message = problems_of(spec_with(tmp_path, f"network:\n  allowed_subnets:\n    - {{name: x, cidr: '{cidr}'}}\n"))
    assert "network.allowed_subnets.0.cidr" in message and expected in message


def test_subnet_outside_the_vnet_is_rejected(tmp_path):
    message = problems_of(spec_with(tmp_path, "network:\n  subnet: {address_prefix: 10.9.2.0/24}\n"))
    assert "not inside the VNet 10.0.0.0/16" in message


def test_a_password_written_into_a_spec_is_refused_without_echoing_it(tmp_path):
    message = problems_of(spec_with(tmp_path, "server:\n  admin:\n    password: Sup3r-Secret-Value\n"))
    assert "server.admin.password" in message and "never holds a secret" in message
    assert "Sup3r-Secret-Value" not in message


def test_two_secret_sources_are_ambiguous(tmp_path):
    message = problems_of(spec_with(tmp_path, "server:\n  admin:\n    password: {env: A, prefect_secret: b}\n"))
    assert "exactly one secret source" in message


def test_alert_rule_naming_an_unknown_channel(tmp_path):
    base = yaml.safe_load((DEPLOYMENTS / "prod.yaml").read_text())
    rules = base["monitoring"]["alert_rules"]
    rules[0]["channels"] = ["teams", "pager"]
    message = problems_of(spec_with(tmp_path, yaml.safe_dump({"monitoring": {"alert_rules": rules}},
                                                             allow_unicode=True)))
    assert "monitoring.alert_rules.0.channels" in message and "'pager' is not a channel" in message


def test_every_problem_is_reported_at_once(tmp_path):
    message = problems_of(spec_with(tmp_path, "parameters:\n  log_slow_queries: on\n  work_mem: 3\n"))
    assert "2 problem(s)" in message


def test_missing_file_lists_known_environments():
    with pytest.raises(ConfigError, match="known: local, prod"):
        load_environment("staging")


def test_broken_yaml_names_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nserver: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken.yaml:\d+: \(top level\): not valid YAML"):
        load_environment(path)


def test_missing_secret_names_the_variable(monkeypatch):
    monkeypatch.delenv("PCDB_TEST_SECRET", raising=False)
    with pytest.raises(SecretError, match="PCDB_TEST_SECRET is not set"):
        secrets.from_env("PCDB_TEST_SECRET")


@pytest.mark.parametrize("weak, lacking", [
    ("short1!A", "at least 12 characters"),
    ("alllowercase1!", "an upper-case letter"),
    ("NoDigitsHere!!", "a digit"),
    ("NoSpecials1234", "a special character"),
])
def test_weak_passwords_are_refused_without_being_shown(weak, lacking):
    with pytest.raises(SecretError) as caught:
        secrets.check_policy("environment variable X", weak)
    assert lacking in str(caught.value) and weak not in str(caught.value)


def test_generated_passwords_pass_the_policy_and_are_owner_only(tmp_path):
    path = tmp_path / "s" / "app.password"
    first = secrets.read_or_create(path)
    assert not secrets.policy_violations(first)
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    assert secrets.read_or_create(path) == first
    path.chmod(0o644)
    with pytest.raises(SecretError, match="readable by others"):
        secrets.read_or_create(path)


def test_health_and_maintenance_settings_are_checked_with_their_field(tmp_path):
    message = problems_of(spec_with(tmp_path, (
        "monitoring:\n  health:\n    every: soon\n    disabled_rules: [cpu-too-high]\n"
        "    extra_rules:\n      - {name: wal, title: w, metric: slot_retained_bytes, operator: '>', warning: 1,"
        " channels: [pager]}\n"
        "operations:\n  maintenance:\n    cron: '0 25 * * *'\n")))
    assert "monitoring.health.every" in message and "soon" in message
    assert "operations.maintenance.cron" in message and "is not a cron expression" in message


def test_an_unknown_rule_channel_or_disabled_rule_and_an_smtp_channel_without_recipients(tmp_path):
    message = problems_of(spec_with(tmp_path, (
        "monitoring:\n  health:\n    disabled_rules: [cpu-too-high]\n"
        "    extra_rules:\n      - {name: wal, title: w, metric: slot_retained_bytes, operator: '>', warning: 1,"
        " channels: [pager]}\n"
        "notifications:\n  local_sink: false\n"
        "  channels:\n    email: {block: email-server-credentials/pcdb-mail, recipients: []}\n")))
    assert "monitoring.health.extra_rules.0.channels" in message and "'pager' is not a channel" in message
    assert "'cpu-too-high' is not a health rule" in message and "high-cpu" in message
    assert "notifications.channels.email.recipients" in message


def test_a_health_rule_without_a_threshold_is_refused(tmp_path):
    message = problems_of(spec_with(tmp_path, (
        "monitoring:\n  health:\n    extra_rules:\n      - {name: x, title: x, metric: xid_age, operator: '>'}\n")))
    assert "monitoring.health.extra_rules.0" in message and "give a warning or a critical threshold" in message


def test_the_spec_cron_check_agrees_with_prefects_parser_on_the_schedules_pcdb_writes():
    from prefect._vendor.croniter import croniter

    from pcdb.config import cron_is_valid

    for text in ("0 5 1-7 * 0", "* * * * *", "*/5 * * * *", "30 4 * * 1,2,3,4,5,6", "0 9 * * *",
                 "0 25 * * *", "61 * * * *", "soon", "*/0 * * * *", "0 5 * * 8"):
        assert cron_is_valid(text) == croniter.is_valid(text), text


def test_the_local_sink_is_never_production_and_takes_only_webhook_blocks(tmp_path):
    message = problems_of(spec_with(tmp_path, "production: true\n"))
    assert "notifications.local_sink" in message and "true on production" in message
    message = problems_of(spec_with(tmp_path, "notifications:\n  channels:\n"
                                              "    email: {block: email-server-credentials/pcdb-mail, recipients: [a@b.c]}\n"))
    assert "notifications.channels.email.block" in message and "only a custom-webhook block" in message
    assert load_environment("prod").notifications.local_sink is False
    assert load_environment("local").notifications.local_sink is True
