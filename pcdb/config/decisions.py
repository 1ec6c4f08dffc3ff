"""Decisions: who may decide, with which OpenSSH key, and whether an unsigned one counts.
"""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    field_validator,
)

from pcdb.config.types import Model


class Decisions(Model):
    """Who may decide in a runbook, and how a decision is proven: an OpenSSH signature over the
    run, the step and the plan's SHA-256 (``pcdb approve``), checked against these keys."""

    unsigned: Literal["allowed", "refused"] = Field(
        "refused", description="allowed: a typed name (or --yes) is taken as the decision, recorded as claimed; "
                               "never on production")
    signers: dict[str, str] = Field(default_factory=dict, description="person (an approver, an incident team member) "
                                                                     "-> their OpenSSH public key; never a private key")

    @field_validator("signers")
    @classmethod
    def _keys(cls, value: dict[str, str]) -> dict[str, str]:
        from pcdb.sshsig import PublicKey, SignatureError

        seen: dict[str, str] = {}
        for person, line in value.items():
            try:
                fingerprint = PublicKey.parse(line).fingerprint
            except SignatureError as exc:
                raise ValueError(f"{person}: {exc}") from None
            if fingerprint in seen:
                raise ValueError(f"{person} and {seen[fingerprint]} have the same key ({fingerprint}): one key is one "
                                 "person, or a decision cannot say who made it")
            seen[fingerprint] = person
        return value
