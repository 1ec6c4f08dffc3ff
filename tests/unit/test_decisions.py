"""Signed decisions without a server: OpenSSH signatures made by ssh-keygen verify in Python,
every way of getting a decision wrong is refused with its reason, and a stored decision is
checked again."""

from __future__ import annotations

import subprocess
from datetime import datetime, timedelta, timezone

import pytest

from pcdb import decisions
from pcdb.decisions import DecisionRefused, Request, plan_sha256
from pcdb.sshsig import PublicKey, Signature, SignatureError
from tests.conftest import Signers

NOW = datetime(2026, 12, 2, 7, 30, tzinfo=timezone.utc)
PEOPLE = Signers(["kim", "lee", "park"])
SPEC_KEYS = {name: PEOPLE.line(name) for name in ("kim", "lee")}          # park's key is in no spec


def request(**changes) -> Request:
    fields = {"environment": "prod", "run_id": "8c1f", "step": "drill-decision", "plan_sha256": plan_sha256({"a": 1}),
              "owners": ("kim",), "timeout": timedelta(hours=24)}
    return Request(**{**fields, **changes})


def signed(name: str, req: Request | None = None, signer: str | None = None, at: datetime = NOW) -> tuple[str, str]:
    message = (req or request()).message(signer or name, "approve", at)
    return message, PEOPLE.sign(name, message)


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa", "rsa"])
def test_ssh_keygens_signatures_verify_here_and_a_changed_byte_does_not(tmp_path, kind):
    key = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(key)], check=True, timeout=60)
    message = tmp_path / "m"
    message.write_bytes(b"pcdb decision v1\n")
    subprocess.run(["ssh-keygen", "-Y", "sign", "-n", "pcdb", "-f", str(key), str(message)], check=True,
                   capture_output=True, timeout=30)
    signature = Signature.parse((tmp_path / "m.sig").read_text())
    public = PublicKey.parse((tmp_path / "k.pub").read_text())
    assert signature.key == public
    assert signature.verifies(b"pcdb decision v1\n", "pcdb")
    assert not signature.verifies(b"pcdb decision v2\n", "pcdb") and not signature.verifies(b"pcdb decision v1\n", "git")
    printed = subprocess.run(["ssh-keygen", "-lf", str(tmp_path / "k.pub")], capture_output=True, text=True,
                             check=True).stdout.split()[1]
    assert public.fingerprint == printed


def test_the_owners_signature_over_this_run_step_and_plan_is_accepted():
    message, signature = signed("kim")
    made = decisions.verify(request(), message, signature, SPEC_KEYS, NOW + timedelta(minutes=1))
    assert made.signed and made.signer == "kim" and made.fingerprint == PublicKey.parse(SPEC_KEYS["kim"]).fingerprint
    assert decisions.recheck(made.as_json(), "prod") is None


@pytest.mark.parametrize("case, reason", [
    ("unsigned", "unsigned: this environment accepts only signed decisions"),
    ("not the owner", "'lee' is not an owner of step drill-decision"),
    ("an unknown key", "an unknown key"),
    ("another person's key", "signed with lee's key"),
    ("another run", "signed for another run"),
    ("another step", "signed for another step"),
    ("another environment", "signed for another environment"),
    ("another plan", "signed over another plan"),
    ("too old", "more than 1 day, 0:00:00 ago"),
    ("from the future", "in the future"),
    ("a changed message", "the signature does not verify"),
    ("not a signature", "the signature cannot be read"),
])
def test_a_wrong_decision_is_refused_with_its_reason(case, reason):
    req = request(owners=("kim", "lee")) if case == "another person's key" else request()
    message, signature = signed("kim", req)
    if case == "unsigned":
        signature = ""
    elif case == "not the owner":
        message, signature = signed("lee")
    elif case == "an unknown key":
        message, signature = signed("park", signer="kim")
    elif case == "another person's key":
        message, signature = signed("lee", req, signer="kim")
    elif case in ("another run", "another step", "another environment", "another plan"):
        field = {"another run": "run_id", "another step": "step", "another environment": "environment",
                 "another plan": "plan_sha256"}[case]
        message, signature = signed("kim", request(**{field: "x" * (64 if field == "plan_sha256" else 4)}))
    elif case == "too old":
        message, signature = signed("kim", at=NOW - timedelta(days=2))
    elif case == "from the future":
        message, signature = signed("kim", at=NOW + timedelta(hours=1))
    elif case == "a changed message":
        message = message.replace("decision: approve", "decision: reject")
    elif case == "not a signature":
        signature = "-----BEGIN SSH SIGNATURE-----\nAAAA\n-----END SSH SIGNATURE-----\n"
    with pytest.raises(DecisionRefused, match=reason):
        decisions.verify(req, message, signature, SPEC_KEYS, NOW)


def test_unsigned_decisions_are_claimed_where_the_spec_allows_them():
    made = decisions.verify(request(unsigned_allowed=True), request().message("kim", "approve", NOW), "", SPEC_KEYS, NOW)
    assert not made.signed and made.how == "claimed"
    assert decisions.recheck(made.as_json(), "prod") is None


def test_a_stored_decision_edited_afterwards_no_longer_checks():
    message, signature = signed("kim")
    stored = decisions.verify(request(), message, signature, SPEC_KEYS, NOW).as_json()
    assert decisions.recheck({**stored, "signer": "lee"}, "prod").startswith("its signed message says signer")
    assert decisions.recheck({**stored, "plan_sha256": "0" * 64}, "prod").startswith("its signed message says plan")
    forged = {**stored, "message": stored["message"].replace("approve", "reject"), "decision": "reject"}
    assert decisions.recheck(forged, "prod") == "its signature does not verify"
    assert decisions.recheck(stored, "test").startswith("its signed message says environment")


def test_a_spec_key_that_is_not_an_openssh_public_key_is_refused():
    with pytest.raises(SignatureError, match="not an OpenSSH public key"):
        PublicKey.parse("ssh-ed25519 not-base64!")
    with pytest.raises(SignatureError, match="holds a ssh-ed25519 key"):
        PublicKey.parse("ssh-rsa " + PEOPLE.line("kim").split()[1])
