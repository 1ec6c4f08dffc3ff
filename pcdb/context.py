"""What every runbook step needs: the spec, the target, and where secrets come from."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg

from pcdb import secrets as pw
from pcdb.config import Environment, SecretRef
from pcdb.errors import SecretError, TargetError
from pcdb.targets.base import Connection, Target

PORT = Connection   # the one role of the target port used here (tests/unit/test_port_roles.py checks it)


@dataclass
class RunbookContext:
    """What every step needs: the spec, the target, and where secrets come from."""

    env: Environment
    target: Target
    secret_loader: pw.SecretLoader | None = None  # Prefect Secret blocks, given by the flow layer
    key_vault: pw.KeyVaultReader = field(default=lambda vault, name: _key_vault(vault, name))
    remove_unknown_roles: bool = False  # the install drops roles the spec does not name (explicit flag)
    spec_source: str | None = None  # the --env the run was given (a name or a spec file), for the hints it prints
    reverify: bool = False  # Phase 7 repeats its disruptive checks even when this configuration passed them
    verified_configuration: str | None = None  # set by Phase 7 when its disruptive checks ran and passed
    verified_server: dict | None = None        # ... on this server (target.server_identity())

    @property
    def env_arg(self) -> str:
        """What to pass to --env to run this again: the spec file when one was given."""
        return self.spec_source or self.env.name

    def __post_init__(self) -> None:
        # Not a dataclass field: serializers (dataclasses.asdict, Prefect's parameter encoder)
        # only see fields, so resolved secrets never leave this object.
        self._secrets: dict[str, str] = {}

    def secret(self, ref: SecretRef, owner: str) -> str:
        """Resolve a secret reference (cached for the run; never logged)."""
        key = f"{owner}:{ref.describe()}"
        if key not in self._secrets:
            if ref.env:
                value = pw.from_env(ref.env)
            elif ref.prefect_secret:
                if self.secret_loader is None:
                    raise SecretError(f"the password of {owner} comes from Prefect Secret block "
                                      f"{ref.prefect_secret!r}, which can only be read inside a Prefect run")
                value = self.secret_loader(ref.prefect_secret)
            elif ref.file:
                value = pw.from_file(ref.file)
            elif ref.key_vault:
                value = self.key_vault(ref.key_vault.vault, ref.key_vault.secret)
            else:
                value = self.target.generated_secret(owner)
            self._secrets[key] = value
        return self._secrets[key]

    def admin_password(self) -> str:
        return self.secret(self.env.server.admin.password, self.env.server.admin.user)

    def role_passwords(self) -> dict[str, str]:
        """Every role's password, each checked against the policy before anything uses it."""
        policy = self.env.security.password_policy
        out = {}
        for role in self.env.security.roles:
            value = self.secret(role.password, role.name)
            pw.check_policy(f"{role.password.describe()} (role {role.name})", value, policy.min_length)
            out[role.name] = value
        return out

    def secret_values(self) -> list[str]:
        """Every secret resolved in this run (to scan reports and logs for leaks)."""
        return list(self._secrets.values())

    @contextmanager
    def connect(self, user: str | None = None, password: str | None = None,
                dbname: str | None = None) -> Iterator[psycopg.Connection]:
        user = user or self.env.server.admin.user
        endpoint = self.target.endpoint("primary")  # first: no server, no password generated for it
        password = password if password is not None else self.admin_password()
        info = endpoint.conninfo(user, password, dbname=dbname)
        try:
            conn = psycopg.connect(info, autocommit=True)
        except psycopg.OperationalError as exc:
            explained = unreachable(self.env, endpoint.host, exc)
            if explained is None:
                raise
            raise explained from exc
        with conn:
            yield conn

    @contextmanager
    def connect_to(self, endpoint) -> Iterator[psycopg.Connection]:
        """The admin on another server of this environment (a restored one: ``endpoint`` is the
        target's Endpoint for it)."""
        with psycopg.connect(endpoint.conninfo(self.env.server.admin.user, self.admin_password()),
                             autocommit=True) as conn:
            yield conn

    def can_log_in(self, user: str, password: str) -> bool:
        try:
            with self.connect(user, password):
                return True
        except psycopg.OperationalError:
            return False


def _key_vault(vault: str, name: str) -> str:
    from pcdb.keyvault import read_secret

    return read_secret(vault, name)


_NETWORK_FAILURES = ("could not translate host name", "timeout expired", "No route to host",
                     "Network is unreachable", "Connection timed out")


def unreachable(env: Environment, host: str, exc: psycopg.OperationalError) -> TargetError | None:
    """A clear error when a VNet-integrated server cannot be reached from where pcdb runs."""
    text = str(exc)
    if env.target != "azure" or env.network.mode != "vnet" or not any(s in text for s in _NETWORK_FAILURES):
        return None
    allowed = ", ".join(f"{s.cidr} ({s.name})" for s in env.network.allowed_subnets)
    return TargetError(f"cannot reach {host}: the server has private access only (VNet "
                       f"{env.network.vnet.name}, DNS zone {env.network.private_dns_zone}); run pcdb from a "
                       f"network allowed to reach it ({allowed}) or through the VPN/bastion. "
                       f"({text.strip().splitlines()[0]})")
