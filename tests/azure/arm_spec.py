"""Every request pcdb sends to Azure Resource Manager, and every answer the fake ARM gives, for
the operations the extracts describe (``ArmSpec.covers``), checked against Microsoft's published
REST API specification (extracts kept in tests/data, each with the files and commits it comes
from).

A request is checked for: an operation the specification has at that path and method; the
api-version it was written for; a body with only the properties the definition names, each of
its type and, where the specification lists values or a length, within them (a polymorphic
value checked as the kind its discriminator names); the required properties; no read-only
property sent. An answer is checked for: a status the operation lists (or an ARM error object),
a body of the listed definition with known properties and values, and the headers of a
long-running operation (Location; Azure-AsyncOperation where the final state is read from it).
What the check finds is a list of sentences, empty when all agree.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from urllib.parse import parse_qs, urlparse

SPECS = Path(__file__).resolve().parents[1] / "data" / "azure-rest-api-specs"
# One extract per provider and API version pcdb speaks. To Microsoft.DBforPostgreSQL: 2024-08-01
# for everything but the preflight's quota usages and name availability (first stable at
# 2025-08-01) and the backups and firewall rules (their 2024-08-01 files are not in the stored
# copy). To the others: the version the SDK client (or the generic client's api_version) sends.
SPEC_FILES = tuple(SPECS / name for name in (
    "postgresql-flexibleservers-2024-08-01.json", "postgresql-flexibleservers-2025-08-01.json",
    "privatedns-2024-06-01.json", "monitor-metrics-2024-02-01.json", "storage-blob-2023-05-01.json",
    "resources-2025-04-01.json", "network-2026-03-01.json", "operationalinsights-workspaces-2025-07-01.json",
    "monitor-actiongroups-2023-01-01.json", "monitor-metricalerts-2018-03-01.json",
    "monitor-activitylogalerts-2020-10-01.json", "monitor-scheduledqueryrules-2023-12-01.json",
    "monitor-diagnosticsettings-2021-05-01-preview.json", "applicationinsights-workbooks-2022-04-01.json",
    "consumption-budgets-2021-10-01.json", "storage-accounts-2023-05-01.json", "authorization-2022-04-01.json"))
PROVIDER = "/providers/microsoft.dbforpostgresql/"
_TYPES = {"string": str, "integer": int, "boolean": bool, "object": dict, "array": list, "number": (int, float)}


def _pattern(path: str) -> re.Pattern:
    """An operation's path as a pattern: each {name} one segment, but {resourceUri} and {scope}
    (a whole resource id, never URL-encoded) one or more."""
    escaped = re.escape(path)
    for whole in ("{resourceUri}", "{scope}"):
        escaped = escaped.replace(re.escape(whole), ".+")
    return re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", escaped) + "$", re.IGNORECASE)


class ArmSpec:
    def __init__(self, paths: tuple[Path, ...] = SPEC_FILES):
        self.definitions: dict[str, dict] = {}
        self.operations = []
        for path in paths:
            data = json.loads(path.read_text())
            version = data["source"]["api_version"]
            clash = set(self.definitions) & set(data["definitions"])
            assert not clash, f"{path.name} defines again {clash}"
            self.definitions.update(data["definitions"])
            self.operations += [({**op, "api_version": version}, _pattern(op["path"])) for op in data["operations"]]
        self.api_version = json.loads(paths[0].read_text())["source"]["api_version"]

    @staticmethod
    @lru_cache(maxsize=1)
    def load() -> ArmSpec:
        return ArmSpec()

    def covers(self, url: str) -> bool:
        """A path of what the extracts describe: a flexible server, its configurations and
        databases, its restart, start and stop, its virtual endpoints (the failback's switchover),
        its backups and firewall rules;
        a region's capabilities, quota usages and name availability; the private DNS zone, its
        VNet links and record sets; a server's Azure Monitor metrics; the archives' blob
        containers and immutability policies; the resource group and a provider's registration;
        the virtual network and its delegated subnet; the Log Analytics workspace, the action
        groups, the metric, activity-log and log alerts, the server's diagnostic setting, the
        workbook, the budget and the archives' storage account; the preflight's budgets on a
        scope and the caller's permissions, role assignments and role definitions (other
        providers and sub-resources are not checked)."""
        path = urlparse(url).path.lower()
        if re.search(r"/providers/microsoft\.dbforpostgresql/locations/[^/]+/(capabilities|checknameavailability|"
                     r"resourcetype/flexibleservers/usages)$", path):
            return True                # the preflight's subscription-level reads
        if "/providers/microsoft.network/privatednszones/" in path:
            return True                # the private DNS zone, its VNet links, the application's CNAME
        if re.search(r"/providers/microsoft\.network/virtualnetworks/[^/]+(/subnets/[^/]+)?$", path):
            return True                # the delegated subnet and its virtual network
        if re.search(r"/resourcegroups/[^/]+/providers/(microsoft\.insights/(actiongroups|metricalerts|activitylogalerts|"
                     r"scheduledqueryrules|workbooks)|microsoft\.operationalinsights/workspaces|"
                     r"microsoft\.storage/storageaccounts)/[^/]+$", path):
            return True                # Phase 6's monitoring and the archives' account
        if re.search(r"/providers/microsoft\.insights/diagnosticsettings/[^/]+$|"
                     r"/resourcegroups/[^/]+/providers/microsoft\.consumption/budgets/[^/]+$", path):
            return True                # the server's diagnostic setting; the resource group's budget
        if re.fullmatch(r"/subscriptions/[^/]+(/resourcegroups/[^/]+)?/providers/microsoft\.(consumption/budgets|"
                        r"authorization/(permissions|roleassignments|roledefinitions/[^/]+))", path):
            return True                # the preflight's budgets on a scope, and the caller's permissions
        if path.endswith("/providers/microsoft.insights/metrics") and PROVIDER + "flexibleservers/" in path:
            return True                # a server's Azure Monitor metrics
        if re.fullmatch(r"/subscriptions/[^/]+/resourcegroups/[^/]+|/subscriptions/[^/]+/providers/[^/]+", path):
            return True                # a resource group; a resource provider's registration
        if re.search(r"/providers/microsoft\.storage/storageaccounts/[^/]+/blobservices/default/containers/", path):
            return True                # the archives' containers and their immutability policies
        if PROVIDER + "flexibleservers/" not in path:
            return False
        rest = path.split(PROVIDER + "flexibleservers/", 1)[1].split("/")[1:]
        return not rest or rest[0] in ("configurations", "databases", "restart", "start", "stop", "virtualendpoints",
                                       "backups", "firewallrules")

    def operation(self, method: str, url: str) -> dict | None:
        path = urlparse(url).path
        return next((op for op, pattern in self.operations if op["method"] == method and pattern.match(path)), None)

    # -- requests --------------------------------------------------------------------------

    def check_request(self, method: str, url: str, body: dict | None) -> list[str]:
        op = self.operation(method, url)
        where = f"{method} {urlparse(url).path}"
        if op is None:
            return [f"{where}: no operation of the specification {self.api_version} has this path and method"]
        problems = []
        version = parse_qs(urlparse(url).query).get("api-version", [None])[0]
        if version != op["api_version"]:
            problems.append(f"{where} ({op['id']}): api-version {version}, the specification checked is "
                            f"{op['api_version']}")
        if op["body"] is None:
            if body:
                problems.append(f"{where} ({op['id']}): a body where the operation takes none")
        elif body is None and op.get("body_required", True):
            problems.append(f"{where} ({op['id']}): no body; {op['body']} is required")
        elif body is not None:
            problems += self._check(body, {"$ref": op["body"]}, f"{op['id']} request", sending=True)
        return problems

    # -- answers ---------------------------------------------------------------------------

    def check_response(self, method: str, url: str, status: int, body, headers: dict) -> list[str]:
        op = self.operation(method, url)
        if op is None:
            return []                  # the request's own check said so
        where = f"{op['id']} answer {status}"
        if status >= 400:
            if not isinstance(body, dict) or "error" not in body:
                return [f"{where}: an error without ARM's error object"]
            return self._check(body, {"$ref": "ErrorResponse"}, where, sending=False)
        if str(status) not in op["responses"]:
            return [f"{where}: the operation answers {', '.join(op['responses'])}, not {status}"]
        problems = []
        schema = op["responses"][str(status)]
        if schema and body is not None:
            problems += self._check(body, {"$ref": schema}, where, sending=False)
        if status == 202 and op["lro"]:
            names = {k.lower() for k in headers}
            if "location" not in names:
                problems.append(f"{where}: a long-running operation's 202 without a Location header")
            if op["lro"] == "azure-async-operation" and "azure-asyncoperation" not in names:
                problems.append(f"{where}: final state via azure-async-operation, but no Azure-AsyncOperation header")
        return problems

    # -- the schema walk ---------------------------------------------------------------------

    def _resolve(self, schema: dict) -> dict:
        while "$ref" in schema:
            if schema["$ref"] not in self.definitions:
                return {"missing": schema["$ref"]}
            extra = {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**self.definitions[schema["$ref"]], **extra}
        return schema

    def _properties(self, schema: dict) -> tuple[dict, list[str]]:
        """A definition's properties and required names, with those of its allOf parents."""
        props, required = dict(schema.get("properties", {})), list(schema.get("required", []))
        for parent in schema.get("allOf", []):
            more, needed = self._properties(self.definitions[parent])
            props = {**more, **props}
            required += needed
        return props, required

    def _kind(self, schema: dict, value: dict) -> dict | None:
        """A polymorphic definition's kind that the value names (its discriminator's value), or
        None when the extracts have no such kind."""
        named = value.get(schema["discriminator"])
        return next((d for d in self.definitions.values() if d.get("x-ms-discriminator-value") == named
                     and any(self.definitions.get(p, {}).get("discriminator") == schema["discriminator"]
                             for p in d.get("allOf", []))), None)

    def _check(self, value, schema: dict, at: str, sending: bool) -> list[str]:
        schema = self._resolve(schema)
        if "missing" in schema:
            return [f"{at}: its definition {schema['missing']} is not in the extracts (left out as never used)"]
        kind = schema.get("type", "object")
        if value is None:
            return []
        if "discriminator" in schema and isinstance(value, dict):
            chosen = self._kind(schema, value)
            if chosen is None:
                return [f"{at}: {schema['discriminator']} {value.get(schema['discriminator'])!r} is not a kind "
                        "the specification extracts describe"]
            schema = chosen
        if not isinstance(value, _TYPES[kind]) or (kind == "integer" and isinstance(value, bool)):
            return [f"{at}: {type(value).__name__} where the specification has {kind}"]
        problems = []
        if "enum" in schema and value not in schema["enum"]:
            problems.append(f"{at}: {value!r} is not one of {schema['enum']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            problems.append(f"{at}: {value!r} does not match {schema['pattern']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            problems.append(f"{at}: {value!r} is longer than {schema['maxLength']}")
        if kind == "array" and "items" in schema:
            for i, item in enumerate(value):
                problems += self._check(item, schema["items"], f"{at}[{i}]", sending)
        if kind == "object":
            if "additionalProperties" in schema:
                for key, item in value.items():
                    problems += self._check(item, schema["additionalProperties"], f"{at}.{key}", sending)
                return problems
            props, required = self._properties(schema)
            for key, item in value.items():
                if key not in props:
                    problems.append(f"{at}: property {key!r} is not in the specification")
                    continue
                spec = props[key]
                if sending and (spec.get("readOnly") or self._resolve(spec).get("readOnly")):
                    problems.append(f"{at}: read-only property {key!r} sent")
                problems += self._check(item, spec, f"{at}.{key}", sending)
            problems += [f"{at}: required property {name!r} missing" for name in required if name not in value]
        return problems
