"""Where a secret comes from (secrets.*, the passwords' sources): an environment variable, a file,
Key Vault, a Prefect Secret block, or generated; never the value itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import (
    Field,
    model_validator,
)

from pcdb.config.types import Model


class KeyVaultRef(Model):
    """A secret of an Azure Key Vault, read with the runbook's Entra ID identity."""

    vault: str = Field(pattern=r"^[a-zA-Z][a-zA-Z0-9-]{1,22}[a-zA-Z0-9]$", description="the vault's name (3-24)")
    secret: str = Field(pattern=r"^[0-9a-zA-Z-]{1,127}$", description="the secret's name")


class SecretRef(Model):
    """Where a secret comes from. Exactly one source; never the secret itself."""

    env: str | None = Field(None, pattern=r"^[A-Z_][A-Z0-9_]*$", description="environment variable holding the secret")
    prefect_secret: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9-]*$", description="name of a Prefect Secret block")
    file: str | None = Field(None, description="an absolute path to a file only its owner can read (0600)")
    key_vault: KeyVaultRef | None = Field(None, description="a secret of an Azure Key Vault")
    generate: bool = Field(False, description="sandbox only: generate a strong one and keep it in "
                                              "a file only its owner can read")

    @model_validator(mode="before")
    @classmethod
    def _not_a_literal(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError("a spec never holds a secret; name its source instead: {env: VARIABLE}, "
                             "{prefect_secret: block-name}, {file: /path}, {key_vault: {vault, secret}} or "
                             "{generate: true}")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        chosen = [k for k in ("env", "prefect_secret", "file", "key_vault") if getattr(self, k)] + (
            ["generate"] if self.generate else [])
        if len(chosen) != 1:
            raise ValueError("give exactly one secret source: env, prefect_secret, file, key_vault or generate: true")
        if self.file is not None and (not self.file.startswith("/") or ".." in Path(self.file).parts):
            raise ValueError(f"file {self.file!r}: give an absolute path without '..'")
        return self

    def describe(self) -> str:
        """Where the secret comes from, for messages (never the value)."""
        if self.env:
            return f"environment variable {self.env}"
        if self.prefect_secret:
            return f"Prefect Secret block {self.prefect_secret!r}"
        if self.file:
            return f"file {self.file}"
        if self.key_vault:
            return f"Key Vault {self.key_vault.vault} secret {self.key_vault.secret}"
        return "a generated password file"
