"""The whole install runbook against the production spec: Azure phases through the real SDK
clients and the in-process ARM; the database phases on a sandbox server standing in for the
Azure server's FQDN (they run for real). Failover and PITR checks are skipped with that reason:
they would act on the fake Azure server, not on the stand-in."""

from __future__ import annotations

import pytest
from prefect import flow

from flows.install import load_secret_block, run_install
from pcdb.config import load_environment
from pcdb.context import RunbookContext
from pcdb.targets.factory import make_target
from tests.azure.fake_arm import FakeArm, FakeCredential
from tests.conftest import new_sandbox_root, new_target

pytestmark = pytest.mark.integration
ROLE_SECRETS = {"pcdb-prod-app-password": "App-Test-Passw0rd!1", "pcdb-prod-readonly-password": "Read-Test-Passw0rd!2",
                "pcdb-prod-admin-role-password": "Adm-Test-Passw0rd!3",
                "pcdb-prod-teams-webhook-url": "https://example.webhook.office.com/webhookb2/test-key"}


@pytest.fixture(scope="module")
def setting(prefect_harness):
    from prefect.blocks.system import Secret

    stand_in = new_target()
    stand_in.ensure_server()
    stand_in.ensure_database()
    Secret(value=stand_in.admin_password()).save("pcdb-prod-admin-password", overwrite=True)
    for name, value in ROLE_SECRETS.items():
        Secret(value=value).save(name, overwrite=True)
    folder = new_sandbox_root()
    spec = folder / "prod-on-fake.yaml"
    spec.write_text(f"extends: prod\nreports_dir: {folder / 'reports'}\n"
                    "install:\n  approval:\n    required: false\n")
    yield stand_in, spec, FakeArm()
    stand_in.sandbox.destroy()


def run(setting, monkeypatch):
    stand_in, spec_path, arm = setting
    monkeypatch.setenv("AZURE_SUBSCRIPTION_ID", "11111111-2222-3333-4444-555555555555")
    env = load_environment(spec_path)

    @flow(name="install")
    def install_on_fake_arm() -> dict:
        ctx = RunbookContext(env, None, secret_loader=load_secret_block)  # type: ignore[arg-type]
        ctx.target = make_target(env, ctx.secret, credential=FakeCredential(), transport=arm, polling_interval=0)
        ctx.target._database_endpoint = stand_in.endpoint()
        return run_install(ctx, list(range(1, 9)))
    return install_on_fake_arm(return_state=True)


def test_the_whole_install_against_the_prod_spec_then_a_second_run_writes_nothing(setting, monkeypatch):
    stand_in, _, arm = setting
    first = run(setting, monkeypatch)
    assert first.is_completed(), first.message
    phases = first.result()["phases"]
    assert all(phases[n] != "unchanged" for n in (1, 2, 3, 4, 5, 6))
    assert phases[7] == "12/12 checks passed, 2 skipped"
    server = next(v for k, v in arm.resources.items() if k.endswith("/flexibleservers/phonebill-postgresql-prod"))
    assert server["sku"]["name"] == "Standard_D4s_v3" and server["properties"]["highAvailability"]["mode"] == "ZoneRedundant"
    assert next(v for k, v in arm.resources.items() if k.endswith("/configurations/shared_buffers"))["properties"]["value"] == "524288"
    assert len([k for k in arm.resources if "/metricalerts/" in k]) == 7
    assert not [r for r in arm.requests if "firewallrules" in r[1].lower()]
    report = open(first.result()["report"]).read()
    assert "| HA failover test | R-DR-1 | SKIPPED | skipped: the database phases ran on a stand-in" in report
    for secret in [*ROLE_SECRETS.values(), stand_in.admin_password()]:
        assert secret not in report

    writes = len(arm.writes)
    second = run(setting, monkeypatch)
    assert second.is_completed(), second.message
    assert [second.result()["phases"][n] for n in range(1, 7)] == ["unchanged"] * 6
    assert len(arm.writes) == writes  # the second run made no write call to Azure
