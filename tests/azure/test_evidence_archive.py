"""The Azure evidence archive: the storage account, container and immutability policy go
through ARM (the in-process fake, like every Azure resource here); the reports are uploaded
through the Blob REST API with an Entra ID bearer token to Azurite, Microsoft's Azure Storage
emulator (real, installed by ./dev test), over TLS."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from azure.core.credentials import AccessToken

from pcdb import clock, ledger
from pcdb.anchors import AnchorConflict
from pcdb.config import load_environment
from pcdb.errors import TargetError
from pcdb.maintenance import archive_name
from pcdb.targets.factory import make_target
from tests.azure.fake_arm import FakeArm
from tests.conftest import new_sandbox_root

PROD = load_environment("prod")
SECRETS = {"azure-subscription": "11111111-2222-3333-4444-555555555555", "dbadmin": "Example-Only-Passw0rd!",
           "teams-webhook": "https://example.webhook.office.com/webhookb2/test-key"}
AZURITE = Path(__file__).resolve().parents[2] / ".venv" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
ACCOUNT = "devstoreaccount1"  # Azurite's account; path-style URLs


class EntraToken:
    """A credential whose token looks as Entra ID's does to Azurite's basic OAuth check
    (issuer, audience, lifetime; Azurite does not check signatures)."""

    def __init__(self, audience: str = "https://storage.azure.com"):
        self.audience = audience
        self.scopes: list[str] = []

    def get_token(self, *scopes, **kwargs) -> AccessToken:
        self.scopes += scopes
        now = int(clock.wall().timestamp())      # Azurite checks the lifetime on its own clock
        part = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
        tenant = "ab1f708d-50f6-404c-a006-d71b2ac7a606"
        claims = {"aud": self.audience, "iss": f"https://sts.windows.net/{tenant}/", "tid": tenant, "oid": "pcdb",
                  "iat": now, "nbf": now - 60, "exp": now + 3600}
        return AccessToken(f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2ln", now + 3600)


@pytest.fixture(scope="module")
def azurite():
    assert AZURITE.exists(), f"{AZURITE} is missing: ./dev test installs it (scripts/setup.sh ensure_azurite)"
    folder = new_sandbox_root()
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=30)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--oauth", "basic",
                               "--cert", str(cert), "--key", str(key), "--location", str(folder / "data"),
                               "--disableTelemetry", "--silent"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"azurite did not start: {server.stdout.read().decode()[-2000:]}") from None
            time.sleep(0.1)
    yield f"https://127.0.0.1:{port}/{ACCOUNT}", str(cert)
    server.terminate()
    server.wait(timeout=30)
    shutil.rmtree(folder, ignore_errors=True)


def target_with(endpoint: str, cert: str, credential, arm=None):
    return make_target(PROD, lambda ref, owner: SECRETS[owner], credential=credential, transport=arm or FakeArm(),
                       polling_interval=0, blob_endpoint=endpoint, blob_verify=cert)


def create_container(endpoint: str, cert: str, name: str) -> None:
    """What ARM's PUT of the container does in the real service: the container exists."""
    import ssl
    import urllib.error
    import urllib.request

    token = EntraToken().get_token("https://storage.azure.com/.default").token
    request = urllib.request.Request(f"{endpoint}/{name}?restype=container", method="PUT",
                                     headers={"Authorization": f"Bearer {token}", "x-ms-version": "2023-11-03"})
    try:
        urllib.request.urlopen(request, context=ssl.create_default_context(cafile=cert)).close()
    except urllib.error.HTTPError as exc:
        if exc.code != 409:      # created by an earlier test of the module
            raise


def read_blob(url: str, cert: str) -> bytes:
    import ssl
    import urllib.request

    token = EntraToken().get_token("https://storage.azure.com/.default").token
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}", "x-ms-version": "2023-11-03"})
    with urllib.request.urlopen(request, context=ssl.create_default_context(cafile=cert)) as reply:
        assert reply.headers["x-ms-meta-sha256"]
        return reply.read()


def test_the_archive_is_created_through_arm_with_an_immutability_policy():
    arm = FakeArm()
    target = target_with("https://unused", "", EntraToken(), arm)
    assert target.ensure_monitoring().action == "updated"
    def sent(suffix: str) -> dict:
        return next(body for path, body in arm.bodies if path.endswith(suffix))
    account = sent("/storageAccounts/stphonebillpcdbprod")
    assert account["sku"] == {"name": "Standard_ZRS"} and account["properties"]["allowSharedKeyAccess"] is False
    assert account["properties"]["allowBlobPublicAccess"] is False
    assert sent("/containers/pcdb-run-reports")["properties"] == {"publicAccess": "None"}
    assert sent("/containers/pcdb-partition-archives")["properties"] == {"publicAccess": "None"}  # maintenance
    policy = sent("/containers/pcdb-run-reports/immutabilityPolicies/default")
    assert policy["properties"] == {"immutabilityPeriodSinceCreationInDays": 1095, "allowProtectedAppendWrites": False}
    archives = sent("/containers/pcdb-partition-archives/immutabilityPolicies/default")   # customer rows: write-once
    assert archives["properties"] == policy["properties"]
    writes = len(arm.writes)
    assert target.ensure_monitoring().action == "unchanged" and len(arm.writes) == writes


def test_a_report_is_uploaded_once_with_its_hash_and_a_second_upload_keeps_the_first(azurite, tmp_path):
    endpoint, cert = azurite
    create_container(endpoint, cert, "pcdb-run-reports")
    credential = EntraToken()
    target = target_with(endpoint, cert, credential)
    report = tmp_path / "drill-zone-prod-20261127T040000Z.md"
    report.write_text("# DR drill: zone (forced) on `prod`\n\n| RTO | 120 s | 64.2 s | met |\n")
    sha = ledger.file_sha256(report)
    with clock.fixed(datetime(2026, 11, 27, 4, 0, tzinfo=timezone.utc)):   # archived in the year of the run
        url = target.archive_report(report, sha)
    assert url == f"{endpoint}/pcdb-run-reports/prod/2026/drill-zone-prod-20261127T040000Z.{sha[:12]}.md"
    assert read_blob(url, cert) == report.read_bytes()
    assert credential.scopes == ["https://storage.azure.com/.default"]
    assert target.archive_report(report, sha) == url       # the same report again: already there, kept
    assert read_blob(url, cert) == report.read_bytes()


def test_a_token_for_the_wrong_audience_is_a_clear_error(azurite, tmp_path):
    endpoint, cert = azurite
    target = target_with(endpoint, cert, EntraToken(audience="https://management.azure.com"))
    report = tmp_path / "report.md"
    report.write_text("x\n")
    with pytest.raises(TargetError, match="archiving report.md into stphonebillpcdbprod/pcdb-run-reports failed: HTTP"):
        target.archive_report(report, ledger.file_sha256(report))


def test_a_partition_archive_goes_to_its_container_comes_back_byte_for_byte_and_is_never_written_over(
        azurite, tmp_path):
    endpoint, cert = azurite
    create_container(endpoint, cert, "pcdb-partition-archives")
    target = target_with(endpoint, cert, EntraToken())
    dump = tmp_path / "p.dump"
    dump.write_bytes(b"PGDMP" + bytes(range(256)) * 40)
    sha = ledger.file_sha256(dump)
    name = archive_name("pc_kos_integration_log_y2025m09", 1, sha)
    url = target.archive_partition(dump, name, sha)
    assert url == f"{endpoint}/pcdb-partition-archives/prod/partitions/{name}.dump"
    back = target.fetch_partition_archive(url, tmp_path / "back.dump")
    assert back.read_bytes() == dump.read_bytes()
    assert target.archive_partition(dump, name, sha) == url               # the same archive again: kept
    second = tmp_path / "second.dump"
    second.write_bytes(b"PGDMP the month re-created with other rows")
    other = archive_name("pc_kos_integration_log_y2025m09", 2, ledger.file_sha256(second))
    assert target.archive_partition(second, other, ledger.file_sha256(second)) != url    # a name of its own
    assert read_blob(url, cert) == dump.read_bytes()                      # the first archive untouched
    with pytest.raises(TargetError, match="could not read the archive"):
        target.fetch_partition_archive(url + ".missing", tmp_path / "none.dump")


def test_the_ledger_anchors_are_blobs_written_once_and_read_back_in_one_listing(azurite):
    endpoint, cert = azurite
    create_container(endpoint, cert, "pcdb-run-reports")
    anchors = target_with(endpoint, cert, EntraToken()).ledger_anchors()
    assert anchors.where == f"{endpoint}/pcdb-run-reports/prod/ledger/phonebill-postgresql-prod/"
    for seq in range(1, 4):
        anchors.put(seq, f"{seq:064x}")
    anchors.put(2, f"{2:064x}")                          # the same anchor again: kept, no error
    assert anchors.read() == {seq: f"{seq:064x}" for seq in range(1, 4)}
    with pytest.raises(AnchorConflict, match="row 2 of the ledger was anchored .* the chain was rewritten"):
        anchors.put(2, "f" * 64)
    assert anchors.read()[2] == f"{2:064x}"


def test_an_archived_report_is_read_back_only_from_the_evidence_container(azurite, tmp_path):
    endpoint, cert = azurite
    create_container(endpoint, cert, "pcdb-run-reports")
    target = target_with(endpoint, cert, EntraToken())
    report = tmp_path / "cost-prod-20261201T000000Z.md"
    report.write_text("# Cost of `prod`\n")
    url = target.archive_report(report, ledger.file_sha256(report))
    assert target.read_archived_report(url) == report.read_bytes()
    # A ledger row naming another host never gets this identity's token sent there.
    assert target.read_archived_report("https://attacker.example/pcdb-run-reports/prod/x.md") is None
