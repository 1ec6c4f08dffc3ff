"""Decisions a person makes in a runbook, bound to what they decide: an OpenSSH signature
(``ssh-keygen -Y sign -n pcdb``) over a canonical message naming the environment, the run, the
step, the SHA-256 of the plan or diff shown, the decision, the signer and a time.

A decision is accepted only when each of these holds, and refused naming the first that does
not: the message is for this environment, run, step and plan; the signer is an owner of the
step; the signature's key is the signer's key in the spec (an unknown key, or another person's,
is refused); the signature verifies; it is not older than the step's timeout (nor from the
future). Unsigned decisions exist only where the spec allows them (never on production); they
are recorded as *claimed*. The ledger keeps every decision with its message, signature and key,
and ``history verify`` checks each stored signature again (:func:`recheck`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone

from pcdb import clock
from pcdb.errors import PcdbError
from pcdb.sshsig import PublicKey, Signature, SignatureError

NAMESPACE = "pcdb"
HEADER = "pcdb decision v1"
FIELDS = ("environment", "run", "step", "plan-sha256", "decision", "signer", "signed-at")
CLOCK_SKEW = timedelta(minutes=5)


class DecisionRefused(PcdbError):
    """A decision that is not accepted; the message says why."""


def plan_sha256(plan: object) -> str:
    """The SHA-256 of a plan, diff or set of facts: its canonical JSON."""
    text = json.dumps(plan, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _utc(at: datetime) -> str:
    return at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Request:
    """A decision a run waits for."""

    environment: str
    run_id: str
    step: str                       # e.g. install-approval, drill-decision, confirm-switch_dns, incident-ack
    plan_sha256: str                # of the plan, diff or facts shown to the decider
    owners: tuple[str, ...]         # who may decide
    timeout: timedelta              # a signature older than this is refused
    unsigned_allowed: bool = False  # the spec allows unsigned decisions (never production)

    def message(self, signer: str, decision: str = "approve", signed_at: datetime | None = None) -> str:
        """The exact text to sign (LF line endings, a final newline)."""
        values = {"environment": self.environment, "run": self.run_id, "step": self.step,
                  "plan-sha256": self.plan_sha256, "decision": decision, "signer": signer,
                  "signed-at": _utc(signed_at or clock.now())}
        return HEADER + "\n" + "".join(f"{k}: {values[k]}\n" for k in FIELDS)

    def as_json(self) -> dict:
        return {**asdict(self), "timeout": self.timeout.total_seconds(), "owners": list(self.owners)}

    @classmethod
    def from_json(cls, data: dict) -> Request:
        return cls(**{**data, "timeout": timedelta(seconds=data["timeout"]), "owners": tuple(data["owners"])})


@dataclass(frozen=True)
class Decision:
    """An accepted decision, as the ledger keeps it."""

    step: str
    run_id: str
    environment: str
    decision: str                  # approve | reject
    signer: str
    signed_at: str
    plan_sha256: str
    signed: bool                   # False: claimed (an unsigned decision the spec allowed, or by flag)
    fingerprint: str | None = None
    key: str | None = None
    signature: str | None = None
    message: str | None = None
    how: str = "signed"            # signed | claimed | flag

    def as_json(self) -> dict:
        return asdict(self)


def parse_message(text: str) -> dict[str, str]:
    """The fields of a decision message.

    Raises:
        DecisionRefused: not a decision message of this format.
    """
    lines = text.replace("\r\n", "\n").split("\n")
    if not lines or lines[0] != HEADER:
        raise DecisionRefused(f"not a pcdb decision message: its first line must be {HEADER!r}")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(": ")
        if not sep or name not in FIELDS or name in fields:
            raise DecisionRefused(f"not a pcdb decision message: unexpected line {line!r}")
        fields[name] = value
    missing = [f for f in FIELDS if f not in fields]
    if missing:
        raise DecisionRefused(f"the decision message lacks {', '.join(missing)}")
    return fields


def verify(request: Request, message: str, signature: str | None, signers: dict[str, str],
           now: datetime | None = None) -> Decision:
    """Accept a decision for ``request``, or refuse it naming why.

    Args:
        message: the text the person signed (or, unsigned, the text they confirmed).
        signature: the armored SSH signature; empty for an unsigned decision.
        signers: the spec's people and their OpenSSH public keys.

    Raises:
        DecisionRefused: see the module's list.
    """
    now = now or clock.now()
    fields = parse_message(message)
    for name, want in (("environment", request.environment), ("run", request.run_id), ("step", request.step)):
        if fields[name] != want:
            raise DecisionRefused(f"signed for another {name}: {fields[name]!r}, not {want!r}")
    if fields["plan-sha256"] != request.plan_sha256:
        raise DecisionRefused(f"signed over another plan (sha256 {fields['plan-sha256'][:12]}…); the plan shown is "
                              f"{request.plan_sha256[:12]}…: read the plan again and sign it")
    if fields["decision"] not in ("approve", "reject"):
        raise DecisionRefused(f"decision {fields['decision']!r}: approve or reject")
    signer = fields["signer"]
    if signer not in request.owners:
        raise DecisionRefused(f"{signer!r} is not an owner of step {request.step} (owners: {', '.join(request.owners)})")
    try:
        signed_at = datetime.strptime(fields["signed-at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        raise DecisionRefused(f"signed-at {fields['signed-at']!r} is not a UTC time like 2026-12-02T07:30:00Z") from None
    if signed_at < now - request.timeout:
        raise DecisionRefused(f"signed at {fields['signed-at']}, more than {request.timeout} ago (the step's timeout): "
                              "sign again now")
    if signed_at > now + CLOCK_SKEW:
        raise DecisionRefused(f"signed at {fields['signed-at']}, in the future: check the signer's clock")
    common = {"step": request.step, "run_id": request.run_id, "environment": request.environment,
              "decision": fields["decision"], "signer": signer, "signed_at": fields["signed-at"],
              "plan_sha256": request.plan_sha256}
    if not signature or not signature.strip():
        if not request.unsigned_allowed:
            raise DecisionRefused("unsigned: this environment accepts only signed decisions; sign the message with "
                                  "`pcdb approve` (ssh-keygen -Y sign -n pcdb) and send the signature")
        return Decision(**common, signed=False, message=message, how="claimed")
    try:
        parsed = Signature.parse(signature)
    except SignatureError as exc:
        raise DecisionRefused(f"the signature cannot be read: {exc}") from None
    known = {PublicKey.parse(line).fingerprint: name for name, line in signers.items() if line}
    holder = known.get(parsed.key.fingerprint)
    if holder is None:
        raise DecisionRefused(f"an unknown key ({parsed.key.fingerprint}): it is no one's key in the spec's signers")
    if holder != signer:
        raise DecisionRefused(f"signed with {holder}'s key ({parsed.key.fingerprint}), not {signer}'s: the message "
                              "names another signer")
    if not parsed.verifies(message.encode(), NAMESPACE):
        raise DecisionRefused(f"the signature does not verify for this message and namespace {NAMESPACE!r} with "
                              f"{signer}'s key ({parsed.key.fingerprint})")
    return Decision(**common, signed=True, fingerprint=parsed.key.fingerprint, key=parsed.key.line,
                    signature=signature.strip(), message=message)


def by_flag(request: Request, who: str) -> Decision:
    """A decision given by flag (--yes), where the spec allows unsigned decisions."""
    if not request.unsigned_allowed:
        raise DecisionRefused(f"--yes: {request.environment} accepts only signed decisions")
    return Decision(request.step, request.run_id, request.environment, "approve", who,
                    _utc(clock.now()), request.plan_sha256, signed=False, how="flag")


def recheck(stored: dict, environment: str) -> str | None:
    """What is wrong with a decision the ledger keeps (None: its signature verifies again over
    its message, the message names what the row says, and its key is the fingerprint kept)."""
    if not stored.get("signed"):
        return None
    try:
        fields = parse_message(stored["message"])
        key = PublicKey.parse(stored["key"])
        parsed = Signature.parse(stored["signature"])
    except (DecisionRefused, SignatureError, KeyError, TypeError) as exc:
        return f"its signature cannot be read again: {exc}"
    expected = {"environment": environment, "run": stored.get("run_id"), "step": stored.get("step"),
                "plan-sha256": stored.get("plan_sha256"), "signer": stored.get("signer"),
                "decision": stored.get("decision"), "signed-at": stored.get("signed_at")}
    for name, value in expected.items():
        if fields[name] != value:
            return f"its signed message says {name} {fields[name]!r}, the row says {value!r}"
    if key.fingerprint != stored.get("fingerprint") or parsed.key.blob != key.blob:
        return "its key is not the one that signed"
    if not parsed.verifies(stored["message"].encode(), NAMESPACE):
        return "its signature does not verify"
    return None


@dataclass
class Collected:
    """The decisions a run received (accepted ones go to the ledger; refusals are listed)."""

    accepted: list[Decision] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def as_json(self) -> list[dict]:
        return [d.as_json() for d in self.accepted]

    def triggered_by(self) -> str | None:
        """Who decided, from the first signed decision (None: no signed decision)."""
        signed = next((d for d in self.accepted if d.signed), None)
        return f"signed by {signed.signer} ({signed.fingerprint})" if signed else None
