"""Reconcile Azure with the spec: GET each resource, PUT only what differs, report what was done.

Clients are built by ``make_clients`` from a credential and passed in; tests give them an
in-process transport that answers as ARM does. Azure errors are translated once, here, into
TargetError naming the code, the message, the resource and what to do.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pcdb.azure.desired import Desired, _plain
from pcdb.azure.plan import PlanItem, plan_one
from pcdb.changes import Change
from pcdb.errors import TargetError, TransientError

logger = logging.getLogger("pcdb.azure")

HINTS = {
    "QuotaExceeded": "ask for a quota increase for this SKU in the region, or choose another SKU",
    "AuthorizationFailed": "the identity running pcdb lacks a role on this scope (Contributor on the resource group)",
    "ServerNameAlreadyExists": "server names are global: choose another name in the spec",
    "NameAlreadyExists": "the name is taken: choose another in the spec",
    "SkuNotAvailable": "this SKU is not offered in the region: see `az postgres flexible-server list-skus`",
    "InvalidParameterValue": "the value is not accepted for this parameter: check the unit Azure reports for it",
}


@dataclass(frozen=True)
class AzureClients:
    resource: Any
    network: Any
    dns: Any
    postgres: Any
    loganalytics: Any
    monitor: Any
    cost: Any = None        # Cost Management (scope-based: no subscription in its constructor)
    # The flexible-server API at 2025-08-01, for what pcdb is checked against at that version
    # (tests/azure/arm_spec.py): the preflight's quota usages and name availability (first stable
    # then), a server's backups and its firewall rules (whose 2024-08-01 description files are
    # not in the specification copy pcdb is checked against).
    postgres_2025: Any = None


POSTGRES_API_VERSION = "2024-08-01"


def make_clients(credential, subscription: str, **options: Any) -> AzureClients:
    """Build every management client from one credential (``options``: transport, polling_interval, retry_*)."""
    from azure.mgmt.costmanagement import CostManagementClient
    from azure.mgmt.loganalytics import LogAnalyticsManagementClient
    from azure.mgmt.monitor import MonitorManagementClient
    from azure.mgmt.network import NetworkManagementClient
    from azure.mgmt.postgresqlflexibleservers import PostgreSQLManagementClient
    from azure.mgmt.privatedns import PrivateDnsManagementClient
    from azure.mgmt.resource.resources import ResourceManagementClient

    resources, network, dns = (cls(credential, subscription, **options) for cls in (
        ResourceManagementClient, NetworkManagementClient, PrivateDnsManagementClient))
    # The flexible-server client speaks the API version its requests are checked against
    # (Microsoft's published specification, tests/azure/arm_spec.py); the SDK's own default
    # (2026-10-01) is not in that specification.
    postgres = PostgreSQLManagementClient(credential, subscription, api_version=POSTGRES_API_VERSION, **options)
    logs, monitor = (cls(credential, subscription, **options) for cls in (
        LogAnalyticsManagementClient, MonitorManagementClient))
    from pcdb.azure.preflight import PREFLIGHT_API_VERSION

    postgres_2025 = PostgreSQLManagementClient(credential, subscription, api_version=PREFLIGHT_API_VERSION, **options)
    return AzureClients(resources, network, dns, postgres, logs, monitor, cost=CostManagementClient(credential, **options),
                        postgres_2025=postgres_2025)


def translate(exc: Exception, what: str) -> Exception:
    """The one translation of the Azure SDK's errors, for the reconciler and every target call:
    throttling (429), server errors (5xx) and an unreachable ARM are transient (the runbooks retry
    them); bad credentials say how to sign in; any other refusal is ARM's code and message with
    what to do. Anything else is returned as it is."""
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError

    if isinstance(exc, ClientAuthenticationError):
        return TargetError(f"no usable Azure credentials to {what}: run `az login`, use a managed identity, or set "
                           "AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET")
    if isinstance(exc, ServiceRequestError):
        return TransientError(f"cannot reach Azure to {what}: {exc}")
    if isinstance(exc, HttpResponseError):
        code = getattr(getattr(exc, "error", None), "code", None) or str(exc.status_code)
        message = getattr(getattr(exc, "error", None), "message", None) or exc.message
        text = f"Azure refused to {what}: {code}: {message}" + (f"; what to do: {HINTS[code]}" if code in HINTS else "")
        if getattr(exc, "status_code", None) in (429, 500, 502, 503, 504):
            return TransientError(text)
        return TargetError(text)
    return exc


def _parts(resource_id: str) -> list[str]:
    return resource_id.strip("/").split("/")


class Reconciler:
    """GET-compare-PUT for every desired resource; a second run makes no write call."""

    # Resources without an operations group of their own in our SDK clients: the generic
    # resources API by id, with the resource provider's API version.
    GENERIC_API = {"diagnostic_setting": "2021-05-01-preview", "workbook": "2022-04-01", "storage_account": "2023-05-01",
                   "blob_container": "2023-05-01", "immutability_policy": "2023-05-01", "budget": "2021-10-01"}

    def __init__(self, clients: AzureClients, admin_password: Callable[[], str], timeout: float = 3600,
                 teams_webhook: Callable[[], str] | None = None):
        self.c = clients
        self.admin_password = admin_password
        self.teams_webhook = teams_webhook
        self.timeout = timeout

    # -- per-type GET and PUT ----------------------------------------------------------------

    # type -> (client, operations group, the PUT method); the GET is ``get``. Names come from
    # the id: one name for a top-level resource, two for a child (vnet/subnet, server/database).
    OPERATIONS = {
        "virtual_network": ("network", "virtual_networks", "begin_create_or_update"),
        "subnet": ("network", "subnets", "begin_create_or_update"),
        "private_dns_zone": ("dns", "private_zones", "begin_create_or_update"),
        "private_dns_zone_link": ("dns", "virtual_network_links", "begin_create_or_update"),
        "server": ("postgres", "servers", "begin_create_or_update"),
        "replica": ("postgres", "servers", "begin_create_or_update"),
        "database": ("postgres", "databases", "begin_create"),
        "configuration": ("postgres", "configurations", "begin_put"),
        "firewall_rule": ("postgres_2025", "firewall_rules", "begin_create_or_update"),
        "log_analytics_workspace": ("loganalytics", "workspaces", "begin_create_or_update"),
        "action_group": ("monitor", "action_groups", "create_or_update"),
        "metric_alert": ("monitor", "metric_alerts", "create_or_update"),
        "activity_log_alert": ("monitor", "activity_log_alerts", "create_or_update"),
        "log_alert": ("monitor", "scheduled_query_rules", "create_or_update"),
    }

    def _ops(self, d: Desired) -> tuple[Callable[[], Any], Callable[[Any], Any]]:
        p = _parts(d.id)
        rg = p[3]
        c = self.c
        if d.type == "resource_group":
            return (lambda: c.resource.resource_groups.get(rg),
                    lambda m: c.resource.resource_groups.create_or_update(rg, m))
        if d.type in self.GENERIC_API:
            api = self.GENERIC_API[d.type]
            return (lambda: c.resource.resources.get_by_id(d.id, api_version=api),
                    lambda m: c.resource.resources.begin_create_or_update_by_id(d.id, m, api_version=api))
        if d.type not in self.OPERATIONS:
            raise TargetError(f"no Azure operation for resource type {d.type}")
        client, group, put = self.OPERATIONS[d.type]
        operations = getattr(getattr(c, client), group)
        names = (p[7],) if len(p) <= 8 else (p[7], p[9])
        return (lambda: operations.get(rg, *names),
                lambda m: getattr(operations, put)(rg, *names, m))

    def read(self, d: Desired) -> dict | None:
        """The resource as ARM returns it (wire names), or None when it does not exist."""
        from azure.core.exceptions import ResourceNotFoundError

        get, _ = self._ops(d)
        try:
            found = get()
        except ResourceNotFoundError:
            return None
        except Exception as exc:
            raise self._error(exc, "read", d) from exc
        return _plain(found.serialize() if hasattr(found, "serialize") else found.as_dict())

    def apply(self, d: Desired) -> tuple[PlanItem, Change]:
        """Make one resource as the spec says; PUT only when the plan says create or update."""
        item = plan_one(d, self.read(d))
        if item.action == "unchanged":
            return item, Change(d.type, d.name, "unchanged")
        if item.action == "conflict":
            return item, Change(d.type, d.name, "conflict", notes=item.notes)
        model = d.model
        if d.type == "server" and item.action == "create":
            model.administrator_login_password = self.admin_password()
        placeholder = None
        if d.type == "action_group" and self.teams_webhook and model.webhook_receivers:
            placeholder = model.webhook_receivers[0].service_uri
            model.webhook_receivers[0].service_uri = self.teams_webhook()
        _, put = self._ops(d)
        verb = "creating" if item.action == "create" else "updating"
        started = time.monotonic()
        logger.info("%s %s %s (waiting at most %.0f s)", verb, d.type, d.name, self.timeout)
        try:
            poller = put(model)
            if hasattr(poller, "result"):
                poller.result(timeout=self.timeout)
                if not poller.done():
                    raise TargetError(f"{verb} {d.type} {d.name} did not finish within {self.timeout:.0f} s; "
                                      "it may still be running in Azure: check the resource, then run again")
            logger.info("%s %s %s done in %.1f s", verb, d.type, d.name, time.monotonic() - started)
        except TargetError:
            raise
        except Exception as exc:
            raise self._error(exc, "create" if item.action == "create" else "update", d) from exc
        finally:  # secrets never stay on the models (plans print them)
            if d.type == "server":
                model.administrator_login_password = None
            if placeholder is not None:
                model.webhook_receivers[0].service_uri = placeholder
        diff = {k: (v["current"], v["desired"]) for k, v in item.changes.items()}
        return item, Change(d.type, d.name, "created" if item.action == "create" else "updated", diff=diff)

    def _error(self, exc: Exception, action: str, d: Desired) -> Exception:
        return translate(exc, f"{action} {d.type} {d.name} ({d.id})")
