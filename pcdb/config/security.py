"""Security (§4): roles and their grants, the password policy, TLS, encryption at rest, audit.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
)

from pcdb.config.secrets import SecretRef
from pcdb.config.types import Duration, Model

TablePrivilege = Literal["SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER", "ALL"]


class Grants(Model):
    """What a role may do (§4.1.2, R-SEC-2); anything else is revoked."""

    database: list[Literal["CONNECT", "CREATE", "TEMPORARY", "ALL"]]
    schema_: list[Literal["USAGE", "CREATE", "ALL"]] = Field(alias="schema")
    tables: dict[str, list[TablePrivilege]] = Field(default_factory=dict,
                                                    description="per table, by name")
    all_tables: list[TablePrivilege] = Field(default_factory=list,
                                             description="on every table of the schema, also future ones")
    sequences: list[Literal["USAGE", "SELECT", "UPDATE", "ALL"]] = Field(default_factory=list)


class Role(Model):
    name: str = Field(pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    purpose: str
    connection_limit: int = Field(ge=-1)
    attributes: list[Literal["CREATEDB", "CREATEROLE"]] = []
    password: SecretRef
    grants: Grants


class PasswordPolicy(Model):
    min_length: int = Field(ge=8)
    require: list[Literal["upper", "lower", "digit", "special"]]
    expiry: Duration
    history: int = Field(ge=0)


class ConnectionPolicy(Model):
    max_failed_attempts: int = Field(gt=0)
    lockout: Duration
    session_timeout: Duration
    idle_timeout: Duration
    rate_limit_per_minute: int = Field(gt=0)


class Tls(Model):
    min_version: Literal["TLSv1.2", "TLSv1.3"]
    require_secure_transport: bool
    verify_server_certificate: bool


class EncryptionAtRest(Model):
    algorithm: str
    key_management: str
    customer_managed_key: bool
    key_rotation: Duration


def _roles_by_name(value: Any) -> Any:
    # The YAML keys roles by name so an extending spec can override one field of one role.
    if isinstance(value, dict):
        return [{"name": name, **(body or {})} for name, body in value.items()]
    return value


class Security(Model):
    roles: Annotated[list[Role], BeforeValidator(_roles_by_name)]
    password_policy: PasswordPolicy
    connection_policy: ConnectionPolicy
    tls: Tls
    audit: dict[str, Any] = Field(description="audit logging parameters (§4.3.1, R-SEC-6)")
    encryption_at_rest: EncryptionAtRest
