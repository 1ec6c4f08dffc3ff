"""Build the target an environment spec names."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pcdb.config import Environment, SecretRef
from pcdb.errors import TargetError
from pcdb.targets.base import Target


def make_target(env: Environment, secret: Callable[[SecretRef, str], str] | None = None,
                **client_options: Any) -> Target:
    """The target an environment names.

    Args:
        secret: resolves a secret reference (the run context's resolver); needed for Azure.
        client_options: passed to every Azure management client (transport=, polling_interval=);
            ``endpoints`` (server name -> Endpoint or None) is taken out for the target: where a
            server's data plane answers when not at its FQDN (the Azure tests' sandbox servers).
    """
    if env.target == "sandbox":
        from pcdb.targets.sandbox import SandboxTarget

        return SandboxTarget(env)
    if secret is None or env.azure is None:
        raise TargetError(f"environment {env.name!r} targets Azure: the subscription and admin password "
                          "come from its secret sources, so build it inside a run context")
    from azure.identity import DefaultAzureCredential

    from pcdb.azure.apply import make_clients
    from pcdb.targets.azure import AzureTarget

    subscription = secret(env.azure.subscription_id, "azure-subscription")
    credential = client_options.pop("credential", None) or DefaultAzureCredential()
    endpoints = client_options.pop("endpoints", None)
    blob = {k: client_options.pop(k) for k in ("blob_endpoint", "blob_verify") if k in client_options}
    transport = client_options.get("transport")
    clients = make_clients(credential, subscription, **client_options)
    return AzureTarget(env, clients, subscription, lambda: secret(env.server.admin.password, env.server.admin.user),
                       endpoints=endpoints, teams_webhook=lambda: secret(env.azure.action_group.teams_webhook, "teams-webhook"),
                       credential=credential, transport=transport, **blob)
