"""The prod spec on the sandbox-backed ARM (tests/azure/sandbox_arm.py), for the test modules that
run runbooks through Azure's API on real servers: the spec, the ARM, and the runbooks' context
factory that builds the Azure target on it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from flows.runbook import load_secret_block
from pcdb.config import load_environment
from pcdb.context import RunbookContext
from pcdb.keyvault import read_secret
from pcdb.targets.factory import make_target
from pcdb.targets.sandbox import SandboxTarget
from tests.azure.fake_arm import FakeCredential
from tests.azure.sandbox_arm import SandboxArm
from tests.conftest import Signers, new_sandbox_root

ROLE_SECRETS = {"pcdb-prod-app-password": "App-Test-Passw0rd!1", "pcdb-prod-readonly-password": "Read-Test-Passw0rd!2",
                "pcdb-prod-admin-role-password": "Adm-Test-Passw0rd!3",
                "pcdb-prod-teams-webhook-url": "https://example.webhook.office.com/webhookb2/test-key"}


@contextmanager
def azure_on_sandbox(servers: SandboxTarget, *flow_modules) -> Iterator[tuple[Path, SandboxArm, Callable]]:
    """The prod spec (approvals off, not marked production so runbooks may run unattended) over an
    ARM whose servers are ``servers``' sandbox (empty: the install creates them through ARM); the
    ``runbook_context`` of each of ``flow_modules`` builds the Azure target on it. The sandbox is
    destroyed after."""
    from prefect.blocks.system import Secret

    servers.ensure_resource_group()
    Secret(value=servers.admin_password()).save("pcdb-prod-admin-password", overwrite=True)
    for name, value in ROLE_SECRETS.items():
        Secret(value=value).save(name, overwrite=True)
    folder = new_sandbox_root()
    spec = folder / "prod-on-fake.yaml"
    spec.write_text(f"extends: prod\nproduction: false\nreports_dir: {folder / 'reports'}\n"
                    "install:\n  approval:\n    required: false\n"
                    "decisions:\n  unsigned: allowed\n  signers: null\n"   # a test environment: --yes is taken
                    # the evidence uploads are tested against Azurite (test_evidence_archive.py)
                    "azure:\n  evidence_archive: null\n")
    arm = SandboxArm(servers, load_environment(spec))

    def context(env) -> RunbookContext:
        ctx = RunbookContext(env, None, secret_loader=load_secret_block)  # type: ignore[arg-type]
        ctx.key_vault = lambda vault, name: read_secret(vault, name, FakeCredential(), arm)   # the ARM's vaults
        ctx.target = make_target(env, ctx.secret, credential=FakeCredential(), transport=arm, polling_interval=0,
                                 blob_endpoint="https://127.0.0.1:9",  # no blob store here: uploads refused at once
                                 endpoints=arm.endpoint)
        ctx.target.poll_seconds = 0.05
        # The fake's flexible servers are sandbox servers: their replication role is the sandbox's.
        ctx.target.own_roles = lambda: {"azuresu", "replication", "replicator"}
        return ctx
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("AZURE_SUBSCRIPTION_ID", "11111111-2222-3333-4444-555555555555")
            for module in flow_modules:
                patch.setattr(module, "runbook_context", context)
            yield spec, arm, context
    finally:
        servers.sandbox.destroy()


def production_spec(spec: Path) -> tuple[Path, Signers]:
    """The same servers under a spec marked production: runbooks that change them need a decision
    signed by an approver (keys made for the test's people)."""
    base = load_environment(spec)
    signers = Signers([*base.approvers(), *base.team_members(list(base.operations.incident.teams))])
    marked_spec = spec.with_name("prod-marked.yaml")
    marked = spec.read_text().replace("production: false", "production: true")
    marked = marked.replace("decisions:\n  unsigned: allowed\n  signers: null\n", "")
    marked = marked.replace("azure:\n  evidence_archive: null\n", "")        # production keeps its evidence archive
    marked_spec.write_text(marked + signers.yaml())
    return marked_spec, signers
