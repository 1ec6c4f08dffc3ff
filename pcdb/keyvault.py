"""Secrets from Azure Key Vault, read over its REST API (``GET /secrets/{name}``, api-version
7.4) with the runbook's Entra ID identity: the one data-plane call pcdb makes to Key Vault, so
no SDK beyond azure-core and azure-identity."""

from __future__ import annotations

import json
from urllib.parse import quote

from pcdb.errors import SecretError

API_VERSION = "7.4"
SCOPE = "https://vault.azure.net/.default"


def read_secret(vault: str, name: str, credential=None, transport=None) -> str:
    """The current value of secret ``name`` in ``vault``.

    Raises:
        SecretError: the secret is missing, the identity may not read it, or the vault is out of reach.
    """
    from azure.core import PipelineClient
    from azure.core.pipeline.policies import BearerTokenCredentialPolicy, RetryPolicy
    from azure.core.rest import HttpRequest

    if credential is None:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    base = f"https://{vault}.vault.azure.net"
    policies = [RetryPolicy(), BearerTokenCredentialPolicy(credential, SCOPE)]
    client = PipelineClient(base, policies=policies, **({"transport": transport} if transport else {}))
    try:
        with client:
            reply = client.send_request(HttpRequest("GET", f"{base}/secrets/{quote(name)}?api-version={API_VERSION}"))
    except Exception as exc:  # noqa: BLE001 - the vault out of reach: said once, with the vault's name
        raise SecretError(f"Key Vault {vault} could not be reached to read secret {name}: {exc}") from None
    if reply.status_code == 404:
        raise SecretError(f"Key Vault {vault} has no secret {name}; create it, or name another source")
    if reply.status_code in (401, 403):
        raise SecretError(f"the identity running pcdb may not read secret {name} of Key Vault {vault} "
                          f"(HTTP {reply.status_code}); give it the Key Vault Secrets User role")
    if reply.status_code != 200:
        raise SecretError(f"Key Vault {vault} answered HTTP {reply.status_code} for secret {name}")
    value = json.loads(reply.text()).get("value")
    if not value:
        raise SecretError(f"secret {name} of Key Vault {vault} is empty")
    return value
