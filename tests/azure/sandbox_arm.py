"""The in-process ARM with a real data plane: the flexible servers ARM holds are backed by the
servers of a sandbox, so an Azure runbook's control-plane calls (restart with failover, stop,
start, promote, point-in-time restore, delete, replica create) act on real PostgreSQL, and its
database work reaches those servers where it would reach the FQDN.

What ARM reports about a server (state, HA state, zones, replication role and state, backups)
is read from the sandbox at every GET, as ARM reports what the service is. The operations run
before ARM answers 202; a data-plane failure is a Failed operation with an ARM error, as Azure
reports a failed restore.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime
from urllib.parse import urlparse

from pcdb.config import Environment
from pcdb.errors import PcdbError
from pcdb.sandbox.engine import HA_NODES, REPLICA
from pcdb.targets.base import Endpoint
from pcdb.targets.sandbox import SandboxTarget
from tests.azure.fake_arm import FakeArm, _response

SERVER = re.compile(r"/providers/microsoft\.dbforpostgresql/flexibleservers/(?P<name>[^/]+)(?:/(?P<sub>[^/]+)(?:/[^/]+)?)?$")


class SandboxArm(FakeArm):
    """ARM whose flexible servers are the sandbox of ``local`` (primary, standby, replica, restores)."""

    def __init__(self, local: SandboxTarget, env: Environment):
        super().__init__()
        self.local = local
        self.sb = local.sandbox
        self.primary = env.server.name
        self.replica = env.replica.name
        self.operations_run: list[str] = []  # the data-plane operations, in order
        # (method, path fragment) -> what happens meanwhile, right before ARM acts on such a request
        # (e.g. an application making a logical replication slot while an upgrade is under way)
        self.meanwhile: dict[tuple[str, str], Callable[[], None]] = {}

    def endpoint(self, name: str) -> Endpoint | None:
        """Where the FQDN of server ``name`` leads: the primary's follows the HA pair (multi-host,
        read-write, as Azure's DNS follows a failover); the replica's and a restore's, their node."""
        if name == self.primary and self.sb.state.application == "replica":
            # the former primary, or the failback's new server following the promoted replica:
            # the first HA node (the one the sandbox's failback promotes)
            return self.local._endpoint_of(self.sb.node(HA_NODES[0]))
        if name == self.primary:
            return self.local.endpoint("application")
        if name == self.replica:
            return self.local.endpoint("replica")
        if name in self.sb.state.restores:
            return self.local._endpoint_of(self.sb.node(name))
        raise AssertionError(f"the test reached for {name}, which ARM does not hold")

    def send(self, request, **kwargs):
        path = urlparse(request.url).path
        match = SERVER.search(path.lower())
        if match and request.method == "GET" and match["sub"] in (None, "backups"):
            self._refresh()  # what a server is; its configurations and databases are ARM's own
        elif match and request.method in ("PUT", "PATCH", "POST", "DELETE"):
            name = next(p for p in path.split("/") if p.lower() == match["name"])
            if any(fragment in path for fragment in self.fail):
                # An injected failure: nothing happens to the servers, and like Azure after a
                # failed create, ARM keeps the server's resource in the Failed state.
                response = super().send(request, **kwargs)
                if request.method == "PUT" and match["sub"] is None:
                    self.resources[path.lower()] = {"id": path, "name": name, "type": "Microsoft.DBforPostgreSQL/flexibleServers",
                                                    "properties": {"state": "Disabled"}}
                return response
            for (method, fragment), happen in list(self.meanwhile.items()):
                if method == request.method and fragment in path:
                    happen()
            body = json.loads(request.content or b"{}")
            version = body.get("properties", {}).get("version") if request.method == "PATCH" else None
            if version is not None and match["sub"] is None:
                refused = self._version_refused(name, str(version))
                if refused:      # ARM's own validation: a synchronous 400, nothing starts
                    self.requests.append((request.method, path))
                    return _response(request, 400, {"error": {"code": "ParameterOutOfRange", "message": refused}})
            try:
                if request.method == "PUT" and path.lower().endswith("/configurations/azure.extensions"):
                    self._allow_extensions(json.loads(request.content or b"{}")["properties"]["value"])
                self._operate(request.method, name, match["sub"], json.loads(request.content or b"{}"))
            except PcdbError as exc:
                self.requests.append((request.method, path))
                return self._failed(request, str(exc).splitlines()[0])
        return super().send(request, **kwargs)

    def _failed(self, request, message: str):
        # Azure's code for a failed upgrade precheck is not documented; users report the CLI
        # showing InternalServerError with the precheck's message (Azure/azure-postgresql#110).
        op = "/operations/failed-" + str(len(self.operations))
        self.operations[op] = {"status": "Failed", "error": {"code": "InternalServerError", "message": message}}
        url = f"https://management.azure.com{op}?api-version=1"
        return _response(request, 202, None, {"Azure-AsyncOperation": url, "Location": url})

    # -- what the operations do to the servers -------------------------------------------

    def _operate(self, method: str, name: str, sub: str | None, body: dict) -> None:
        props = body.get("properties", {})
        if method == "PATCH" and sub is None and props.get("version") is not None:
            self._upgrade(name, str(props["version"]))
        elif sub == "restart" and body.get("restartWithFailover"):
            mode = "planned" if body.get("failoverMode") == "PlannedFailover" else "forced"
            self._run(f"failover {mode}", lambda: self.sb.failover(mode))
            self._swap_zones()
        elif sub == "stop":
            self._run("stop region", self.sb.stop_region)
        elif sub == "start":
            self._run("start region", self.sb.start_region)
        elif sub == "databases" and method == "PUT":
            self._run("ensure database", self.local.ensure_database)
            self.guard_extensions()
        elif sub is not None:
            return  # configurations, backups, firewall rules, ...: control plane only
        elif method == "DELETE" and name == self.primary and self.sb.state.application == "replica":
            # the former primary, deleted by the failback: its servers are gone
            self._run("delete former primary", lambda: [self.sb.node(n).stop("immediate", timeout=30) for n in HA_NODES])
        elif method == "PUT" and name == self.primary and props.get("createMode") == "Replica":
            # the failback's new server in the primary region, a replica of the promoted one: the
            # sandbox's HA nodes, rebuilt onto the promoted replica's timeline (the first one synchronous)
            if self.sb.state.application != "replica":
                raise PcdbError(f"{name} cannot be a replica of {self.replica}: it is not a promoted server")
            # (the region is up again; the deleted server's nodes are copied afresh, never rewound)
            self._run("create failback replica", lambda: (self.sb.start_region(), self.sb.reverse_replication()))
        elif method == "PATCH" and name == self.primary and props.get("replica", {}).get("promoteMode") == "switchover":
            self._switchover(name)
        elif method == "PATCH" and name == self.replica and props.get("replica", {}).get("promoteMode"):
            self._run("promote replica", self.sb.promote_replica)
            if "pcdb-drill" not in (body.get("tags") or {}):
                # a real region failover: the promoted server holds production's writes (the
                # sandbox's record of it, which its failback reads)
                self.sb.switch_application("replica")
                # Azure backs up the promoted server by itself from then on: its first full backup
                self._run("back up promoted server", lambda: self.sb.take_backup("automatic"))
        elif method == "PUT" and props.get("createMode") == "PointInTimeRestore":
            when = datetime.fromisoformat(props["pointInTimeUTC"])
            self._run(f"restore {name}", lambda: self.sb.restore(when, name))
        elif method == "PUT" and name == self.primary:
            self._run("ensure server", self.local.ensure_server)
            self.guard_extensions()
        elif method == "PUT" and name == self.replica:
            if REPLICA in self.sb.state.nodes and (not self._key(name) or self.sb.replica_diverged()):
                self._run("create replica", self.sb.rebuild_replica)  # again, after a delete
            else:
                self._run("ensure replica", self.local.ensure_replica)
        elif method == "DELETE" and name == self.replica:
            self._run("delete replica", lambda: self.sb.node(REPLICA).stop("immediate", timeout=30))
        elif method == "DELETE" and name != self.primary:
            self._run(f"delete {name}", lambda: self.sb.delete_server(name))

    # -- Azure's in-place major version upgrade (a PATCH of properties.version) -----------------
    # Microsoft's "Major version upgrades" page (configure-maintain/concepts-major-version-upgrade,
    # 2026-04-08): a precheck refuses a server with a read replica, a logical replication slot,
    # an event trigger, a view on pg_stat_activity, or one of these extensions; then the service
    # stops the server, upgrades it with pg_upgrade, and brings HA back after.
    BLOCKING = ("timescaledb", "postgres_fdw", "session_variable", "pg_hint_plan", "plv8")
    BLOCKING_FROM_17 = ("age", "azure_ai", "hll", "pg_diskann", "pgrouting")

    def _node_of(self, name: str):
        return self.sb.primary() if name == self.primary else self.sb.node(name)

    def _version_refused(self, name: str, version: str) -> str | None:
        """ARM's validation of the version asked: a later major Azure offers (its 2024-08-01 enum)."""
        self._refresh()
        current = int(str(self.resources[self._key(name)]["properties"]["version"]).split(".")[0])
        later = sorted(v for v in self.spec.definitions["ServerVersion"]["enum"] if int(v) > current)
        if version not in later:
            return f"The value of the 'Version' should be in: [{','.join(later)}]. Verify that the specified " \
                   "parameter value is correct."
        return None

    def _upgrade_refusals(self, name: str, version: str) -> list[str]:
        """What Azure's upgrade precheck refuses, read from the server (the fake's own allow-list
        trigger, standing in for Azure's mechanism, is not a user's event trigger)."""
        found = []
        if name == self.primary and self._key(self.replica):
            found.append(f"read replica {self.replica}: delete the read replica (and any cascading one) before "
                         "upgrading the primary; re-create it after the upgrade")
        node = self._node_of(name)
        with node.connect(self.local.admin) as conn:
            databases = [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datallowconn")]
            slots = [r[0] for r in conn.execute("SELECT slot_name FROM pg_replication_slots WHERE slot_type = 'logical'")]
        if slots:
            found.append(f"logical replication slots ({', '.join(slots)}) must be dropped before the upgrade")
        blocking = self.BLOCKING + (self.BLOCKING_FROM_17 if int(version) >= 17 else ())
        for database in databases:
            with node.connect(self.local.admin, database) as conn:
                extensions = [r[0] for r in conn.execute("SELECT extname FROM pg_extension WHERE extname = ANY(%s)",
                                                         (list(blocking),))]
                triggers = [r[0] for r in conn.execute(
                    "SELECT evtname FROM pg_event_trigger WHERE evtname <> 'allow_listed_extensions'")]
                views = [r[0] for r in conn.execute(
                    "SELECT DISTINCT v.oid::regclass::text FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid "
                    "JOIN pg_class v ON v.oid = r.ev_class WHERE d.refobjid = 'pg_catalog.pg_stat_activity'::regclass "
                    "AND v.oid <> 'pg_catalog.pg_stat_activity'::regclass AND v.relnamespace <> 'pg_catalog'::regnamespace")]
            found += [f"extension {e} in {database} is not supported by an in-place major version upgrade" for e in extensions]
            found += [f"event trigger {t} in {database}: drop event triggers before the upgrade" for t in triggers]
            found += [f"view {v} in {database} depends on pg_stat_activity" for v in views]
        return found

    def _upgrade(self, name: str, version: str) -> None:
        refusals = self._upgrade_refusals(name, version)
        if refusals:
            raise PcdbError(f"Major version upgrade precheck failed for server {name}: " + "; ".join(refusals))
        if name == self.primary:
            self._run(f"upgrade to {version}", lambda: self.sb.upgrade(version))
        else:
            self._run(f"upgrade {name} to {version}", lambda: self.sb.upgrade_restored(name, version))

    # Azure refuses CREATE EXTENSION of anything azure.extensions does not list. The same rule on the
    # sandbox's servers: the allow-list is a setting of theirs, an event trigger in each database
    # refuses the rest with Azure's message.
    GUARD = r"""
CREATE SCHEMA IF NOT EXISTS fake_azure;
CREATE TABLE IF NOT EXISTS fake_azure.allow_list (value text NOT NULL);
CREATE OR REPLACE FUNCTION fake_azure.allow_listed_extensions() RETURNS event_trigger LANGUAGE plpgsql AS $f$
DECLARE
  wanted text := lower(substring(current_query() from '(?i)create\s+extension\s+(?:if\s+not\s+exists\s+)?"?([a-z0-9_]+)'));
  allowed text[] := string_to_array(lower(replace(coalesce((SELECT value FROM fake_azure.allow_list LIMIT 1), ''),
                                                   ' ', '')), ',');
BEGIN
  IF wanted IS NULL OR NOT wanted = ANY(allowed) THEN
    RAISE EXCEPTION 'extension "%" is not allow-listed for "azure.extensions" in this database', wanted
      USING HINT = 'to see how to allow an extension, see https://go.microsoft.com/fwlink/?linkid=2301063';
  END IF;
END $f$;
DROP EVENT TRIGGER IF EXISTS allow_listed_extensions;
CREATE EVENT TRIGGER allow_listed_extensions ON ddl_command_start WHEN TAG IN ('CREATE EXTENSION')
  EXECUTE FUNCTION fake_azure.allow_listed_extensions();
"""

    def guard_extensions(self) -> None:
        """Install the rule in every database of the primary (standbys, the replica and restores copy it),
        with the allow-list ARM holds (none yet: every CREATE EXTENSION is refused)."""
        key = next((k for k in self.resources if k.endswith("/configurations/azure.extensions")), None)
        self._allow_extensions(self.resources[key]["properties"]["value"] if key else "")

    def _allow_extensions(self, value: str) -> None:
        primary = self.sb.primary()
        with primary.connect(self.local.admin) as conn:
            databases = [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datallowconn")]
        for database in databases:
            with primary.connect(self.local.admin, database) as conn:
                conn.execute(self.GUARD)
                with conn.transaction():
                    conn.execute("DELETE FROM fake_azure.allow_list")
                    conn.execute("INSERT INTO fake_azure.allow_list VALUES (%s)", (value,))

    def _switchover(self, name: str) -> None:
        """Azure's "promote to primary server" (switchover): refused unless the current primary's
        virtual endpoints name the server promoted; then the roles swap (the sandbox's planned
        failback: the promoted replica stops cleanly, the HA node takes over, the replica is made
        again from it) and the virtual endpoints belong to the new primary, with the old one as
        their member."""
        source = self._key(self.replica)
        endpoints = [k for k in self.resources if k.startswith(source + "/virtualendpoints/")]
        if not any(name in (self.resources[k].get("properties") or {}).get("members", []) for k in endpoints):
            raise PcdbError(f"Promote operation requires a virtual endpoint on {self.replica} with {name} as a member")
        self._run("switchover", self.sb.switch_back)
        for key in endpoints:
            moved = self.resources.pop(key)
            moved["properties"]["members"] = [self.replica]
            new_key = key.replace(source, self._key(self.primary))
            moved["id"] = moved["id"].replace(f"/flexibleServers/{self.replica}", f"/flexibleServers/{self.primary}")
            self.resources[new_key] = moved

    def _run(self, what: str, operation) -> None:
        self.operations_run.append(what)
        operation()

    def _key(self, name: str) -> str:
        return next((k for k in self.resources if k.endswith(f"/flexibleservers/{name.lower()}")), "")

    def _swap_zones(self) -> None:
        props = self.resources[self._key(self.primary)]["properties"]
        ha = props.setdefault("highAvailability", {})
        props["availabilityZone"], ha["standbyAvailabilityZone"] = ha.get("standbyAvailabilityZone"), props.get(
            "availabilityZone")

    def _refresh(self) -> None:
        """What ARM says of each server is what the sandbox is."""
        status = {n["name"]: n for n in self.sb.status()["nodes"]} if self.sb.exists() else {}
        primary_key, replica_key = self._key(self.primary), self._key(self.replica)
        for name in self.sb.state.restores if self.sb.exists() else ():
            restored = self.resources.get(self._key(name), {}).get("properties")
            if restored is not None and primary_key and restored.get("version") is None:
                restored["version"] = self.resources[primary_key]["properties"].get("version")  # its source's major
        if primary_key and "replicationRole" in self.resources[primary_key]["properties"]:
            # made by the failback as a replica of the promoted server: one until the switchover
            props = self.resources[primary_key]["properties"]
            first = status.get(HA_NODES[0], {})
            following = self.sb.state.application == "replica"
            streaming = following and first.get("running") and first.get("sync_state") in ("sync", "async", "potential")
            props["replicationRole"] = "AsyncReplica" if following else "Primary"
            props["replica"] = {"role": props["replicationRole"],
                                **({"replicationState": "Active" if streaming else "Catchup"} if following else {})}
            if following:
                props["state"] = "Ready" if first.get("running") else "Stopped"
        if primary_key and not (self.resources[primary_key]["properties"].get("replicationRole") == "AsyncReplica"):
            props = self.resources[primary_key]["properties"]
            up = any(n["role"] == "primary" and n["running"] for n in status.values() if n["name"] in HA_NODES)
            props["state"] = "Ready" if up else "Stopped"
            if props.get("highAvailability", {}).get("mode", "Disabled") != "Disabled":
                healthy = up and any(n["role"] == "standby" and n["sync_state"] == "sync" for n in status.values())
                props["highAvailability"]["state"] = "Healthy" if healthy else "ReplicatingData"
        for backup in self.sb.list_backups() if self.sb.exists() else ():
            # each server lists its own: the promoted replica's from its promotion on
            key = replica_key if backup.source == REPLICA else primary_key
            if key and self.resources[key]["properties"].get("replicationRole") != "AsyncReplica":
                self.resources[f"{key}/backups/{backup.id.lower()}"] = {
                    "id": f"{key}/backups/{backup.id}", "name": backup.id,
                    "properties": {"backupType": "Full", "completedTime": backup.finished_at.isoformat(),
                                   "source": "Automatic"}}
        if replica_key and REPLICA in status:
            node = status[REPLICA]
            props = self.resources[replica_key]["properties"]
            props["state"] = "Ready" if node["running"] else "Stopped"
            following = node["role"] == "replica" and not self.sb.replica_diverged()
            props["replicationRole"] = "AsyncReplica" if following else "Primary"
            props["replica"] = {"role": props["replicationRole"],
                                "replicationState": "Active" if following and node["sync_state"] == "async"
                                else "Broken" if following else None}
