"""The orchestrator's own secrets: generated once into the home (0600), adopted from a Prefect
database that kept its block key beside the blocks, read from Key Vault with the runbook's identity."""

from __future__ import annotations

import json
import os
import sqlite3
import stat

import pytest
from azure.core.pipeline.transport import HttpTransport

from pcdb.config import KeyVaultRef, SecretRef
from pcdb.errors import SecretError
from pcdb.orchestrator import ServerConfig
from tests.azure.fake_arm import FakeCredential, _response
from tests.conftest import wait_until


def config(home, **refs) -> ServerConfig:
    return ServerConfig(home, "127.0.0.1", 4200, None, "sqlite", False, **refs)


def test_generated_credentials_are_made_once_readable_by_their_owner_only(tmp_path):
    auth, key = config(tmp_path).credentials()
    assert auth.startswith("pcdb:") and len(auth) > 30
    for name in ("prefect-auth", "prefect-encryption-key"):
        assert stat.S_IMODE((tmp_path / "secrets" / name).stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "secrets").stat().st_mode) == 0o700
    assert config(tmp_path).credentials() == (auth, key)                      # the same next time


def test_a_key_prefect_kept_in_its_database_is_moved_out_of_it(tmp_path):
    kept = "Xq7Pq3m6cZ2m2Y0sS0n3Qm1dX3pW6xY9eK2bL4nH8jE="
    with sqlite3.connect(tmp_path / "prefect.db") as db:
        db.execute("CREATE TABLE configuration (key text, value text)")
        db.execute("INSERT INTO configuration VALUES ('ENCRYPTION_KEY', ?)", (json.dumps({"fernet_key": kept}),))
    assert config(tmp_path).credentials()[1] == kept                           # the blocks stay readable
    with sqlite3.connect(tmp_path / "prefect.db") as db:
        assert db.execute("SELECT count(*) FROM configuration").fetchone()[0] == 0   # and no longer beside them


def test_a_secret_file_others_can_read_or_a_wrong_form_is_refused(tmp_path):
    loose = tmp_path / "auth"
    loose.write_text("pcdb:secret-value\n")
    os.chmod(loose, 0o644)
    with pytest.raises(SecretError, match="readable by others"):
        config(tmp_path, auth=SecretRef(file=str(loose))).credentials()
    os.chmod(loose, 0o600)
    loose.write_text("no-colon-here\n")
    with pytest.raises(SecretError, match="must be 'user:password'"):
        config(tmp_path, auth=SecretRef(file=str(loose))).credentials()


class KeyVault(HttpTransport):
    """Key Vault's GET /secrets/{name} as its REST API answers (api-version 7.4)."""

    def __init__(self, secrets: dict[str, str], forbidden: set[str] = frozenset()):
        self.secrets, self.forbidden, self.seen = secrets, forbidden, []

    def __enter__(self):
        return self

    def __exit__(self, *args):
        pass

    def open(self):
        pass

    def close(self):
        pass

    def send(self, request, **kwargs):
        self.seen.append((request.url, request.headers.get("Authorization", "")))
        name = request.url.split("/secrets/")[1].split("?")[0]
        if name in self.forbidden:
            return _response(request, 403, {"error": {"code": "Forbidden", "message": "no access"}})
        if name not in self.secrets:
            return _response(request, 404, {"error": {"code": "SecretNotFound", "message": name}})
        return _response(request, 200, {"value": self.secrets[name], "id": request.url.split("?")[0]})


def test_key_vault_secrets_are_read_with_the_runbooks_identity_and_failures_say_what_to_do():
    from pcdb.keyvault import read_secret

    vault = KeyVault({"pcdb-prefect-auth": "pcdb:from-the-vault"}, forbidden={"locked"})
    assert read_secret("kv-pcdb-prod", "pcdb-prefect-auth", FakeCredential(), vault) == "pcdb:from-the-vault"
    url, authorization = vault.seen[0]
    assert url == "https://kv-pcdb-prod.vault.azure.net/secrets/pcdb-prefect-auth?api-version=7.4"
    assert authorization == "Bearer " + FakeCredential().get_token("https://vault.azure.net/.default").token
    with pytest.raises(SecretError, match="has no secret missing"):
        read_secret("kv-pcdb-prod", "missing", FakeCredential(), vault)
    with pytest.raises(SecretError, match="Key Vault Secrets User"):
        read_secret("kv-pcdb-prod", "locked", FakeCredential(), vault)
    reader = lambda v, n: read_secret(v, n, FakeCredential(), vault)      # noqa: E731 - what pcdb passes
    ref = SecretRef(key_vault=KeyVaultRef(vault="kv-pcdb-prod", secret="pcdb-prefect-auth"))
    assert config_with_vault(ref).credentials(reader)[0] == "pcdb:from-the-vault"


def config_with_vault(ref):
    import tempfile
    from pathlib import Path

    return config(Path(tempfile.mkdtemp()), auth=ref)


def test_processes_that_ignore_sigterm_are_killed_together_and_each_is_reported(tmp_path):
    """`server down` stops every worker and the sink at once: one that ignores SIGTERM (busy
    with a run) is killed at the shared deadline, and each that ran is named as stopped."""
    import subprocess

    from pcdb.orchestrator import _stop_pids
    from pcdb.process import alive

    told, ready = tmp_path / "told", tmp_path / "ready"
    stubborn = [subprocess.Popen(["sh", "-c", f"trap 'echo TERM >> {told}' TERM; echo up >> {ready}; "
                                              f"while :; do sleep 0.05; done"],
                                 start_new_session=True) for _ in range(2)]
    # Asked before its trap is set, a shell just dies of the SIGTERM: both must be listening first.
    wait_until(lambda: ready.exists() and ready.read_text().split() == ["up", "up"], "both shells' traps", timeout=30)
    polite = subprocess.Popen(["sleep", "60"], start_new_session=True)
    gone = subprocess.Popen(["true"], start_new_session=True)
    gone.wait()
    pids = [p.pid for p in (*stubborn, polite)]
    assert _stop_pids([*pids, gone.pid], timeout=0.5) == set(pids)
    assert not any(alive(pid) for pid in pids)                 # the two that went on were killed
    assert told.read_text().split() == ["TERM", "TERM"]       # after both were asked, once
