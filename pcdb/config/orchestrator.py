"""The orchestrator (Prefect server): where it runs, its credential, its key, TLS, run limits.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from pcdb import runbooks
from pcdb.config.secrets import SecretRef
from pcdb.config.types import Duration, Model


def _orchestrator_secret() -> SecretRef:
    return SecretRef(generate=True)


class OrchestratorTls(Model):
    """TLS for the orchestration API and UI: served by the Prefect server itself (``cert_file``
    and ``key_file``), or by a reverse proxy in front of a server that listens on loopback only
    (``proxy_url``; docs/operations show one)."""

    cert_file: str | None = Field(None, description="the server's certificate (PEM), served by the server itself")
    key_file: str | None = Field(None, description="its private key (PEM, 0600)")
    ca_file: str | None = Field(None, description="the CA clients verify the server with (default: cert_file)")
    proxy_url: str | None = Field(None, pattern=r"^https://[^/\s]+(/.*)?$",
                                  description="the https address of the reverse proxy in front of the server")

    @model_validator(mode="after")
    def _one_way(self) -> OrchestratorTls:
        served = self.cert_file is not None or self.key_file is not None
        if served and (self.cert_file is None or self.key_file is None):
            raise ValueError("give both cert_file and key_file to serve TLS from the Prefect server itself")
        if served == (self.proxy_url is not None):
            raise ValueError("choose one: cert_file and key_file (the server serves TLS), or proxy_url (a reverse "
                             "proxy does, in front of a server on loopback)")
        return self


class OrchestratorSpec(Model):
    """The Prefect server the runbooks report to (`pcdb server up`), and how long a run may last."""

    home: str | None = Field(None, description="its database, logs and pid files; default /var/lib/pcdb/prefect "
                                               "as root, ~/.local/state/pcdb/prefect otherwise")
    host: str = Field("127.0.0.1", description="address the API and UI listen on (anything but loopback needs tls)")
    auth: SecretRef = Field(default_factory=_orchestrator_secret,
                            description="the API's credential, 'user:password' (Prefect's basic auth): the server "
                                        "asks every client and the UI for it; generated into the home on the sandbox")
    encryption_key: SecretRef = Field(default_factory=_orchestrator_secret,
                                      description="the key Prefect encrypts blocks with (Fernet), kept apart from "
                                                  "its database; generated into the home on the sandbox")
    tls: OrchestratorTls | None = None
    port: int = Field(4200, gt=0, lt=65536)
    database: Literal["sqlite", "sandbox-postgres"] = Field(
        "sqlite", description="sqlite: a file in home (a laptop); sandbox-postgres: a small PostgreSQL cluster "
                              "of its own under home (never the service database). "
                              "$PREFECT_API_DATABASE_CONNECTION_URL names any other PostgreSQL")
    run_limits: dict[str, Duration] = Field(
        default_factory=dict,
        description="runbook -> how long a run may be Running before it is cancelled and reported (an "
                    "automation); every runbook has a default in the registry (pcdb/runbooks.py), these override it")
    worker_poll: Duration = Field(timedelta(seconds=2), description="how often the worker asks for scheduled runs "
                                  "and cancellations: a run started from the UI waits at most this before it is "
                                  "picked up, then starts in about 2.3 s (./dev bench run-start); Prefect's own "
                                  "default is 10s")

    @field_validator("run_limits")
    @classmethod
    def _registered(cls, value: dict[str, timedelta]) -> dict[str, timedelta]:
        unknown = sorted(set(value) - set(runbooks.NAMES))
        if unknown:
            raise ValueError(f"{', '.join(unknown)}: not a runbook; use one of {', '.join(runbooks.NAMES)}")
        if any(limit <= timedelta(0) for limit in value.values()):
            raise ValueError("a run limit must be longer than 0s")
        return value

    def limits(self) -> dict[str, timedelta]:
        """Every runbook's run limit: the registry's default unless the spec overrides it."""
        return runbooks.run_limits() | self.run_limits

    @model_validator(mode="after")
    def _guarded(self) -> OrchestratorSpec:
        for name in ("auth", "encryption_key"):
            if getattr(self, name).prefect_secret:
                raise ValueError(f"{name}: the orchestrator's own secret cannot be a Prefect block (it is what "
                                 "unlocks them); give env, file, key_vault or generate")
        loopback = self.host in ("127.0.0.1", "::1", "localhost")
        served = self.tls is not None and self.tls.cert_file is not None
        if not loopback and not served:
            raise ValueError(f"host {self.host}: the API would answer beyond this machine without TLS; listen on "
                             "127.0.0.1, or give tls.cert_file and tls.key_file (or put a TLS proxy in front of a "
                             "server on 127.0.0.1: tls.proxy_url)")
        return self
