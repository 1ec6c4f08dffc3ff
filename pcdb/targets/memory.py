"""An in-memory fake of the target port: the topology of the HA pair and the read replica, with
replication modelled (the synchronous standby has every acknowledged row, a stalled replica
misses what came after the stall), and a probe writer that writes into it.

It runs the drill policy (pcdb.drills: the order of steps, the decisions and confirmations,
what is undone when a step fails, what is kept) in milliseconds, with no server: every call is
recorded in ``calls``. What the fake does not model (parameters, backups' files, metrics, logs)
raises NotImplementedError naming the method, so a test never passes on a silent stub.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from psycopg.conninfo import conninfo_to_dict

from pcdb import clock
from pcdb.anchors import MemoryAnchors
from pcdb.changes import Change
from pcdb.config import Environment
from pcdb.probe import ProbeResult
from pcdb.targets.base import (
    STALL_REPLICA,
    BackupInfo,
    Endpoint,
    FailoverResult,
    NodeState,
    PromotionResult,
    ServerState,
)

PORTS = {"node1": 1, "node2": 2, "replica": 3}
APPLICATION_PORT = 0     # the application's path: whichever node is the primary now (as the FQDN follows it)
ROW_BYTES = 100          # what one probe row stands for in WAL, for the replica's lag


@dataclass
class Node:
    name: str
    role: str                      # primary | standby | replica | promoted
    running: bool = True
    rows: list[int] = field(default_factory=list)
    dropped: bool = False          # the probe table was dropped here


class MemoryTarget:
    """The port's topology and drill operations, in memory."""

    poll_seconds = 0.0

    def __init__(self, env: Environment, capabilities: frozenset[str] = frozenset({STALL_REPLICA})):
        self.env = env
        self.capabilities = capabilities
        self.anchors = MemoryAnchors()
        self.identity = "7000000000000000001"     # a new server: a test changes it
        self.archived: dict[str, bytes] = {}
        self.nodes = {"node1": Node("node1", "primary"), "node2": Node("node2", "standby"),
                      "replica": Node("replica", "replica")}
        self.stalled = False
        self.drill_promoted = True         # promotions are a drill's unless a test says otherwise
        self.calls: list[str] = []
        self.servers: dict[str, Endpoint] = {}

    # -- the data plane's view ---------------------------------------------------------------

    def node_at(self, conninfo: str) -> Node:
        port = int(conninfo_to_dict(conninfo)["port"])
        if port == APPLICATION_PORT:
            return self._role("primary")
        return next(n for n in self.nodes.values() if PORTS[n.name] == port)

    def write(self, node: Node, row: int) -> None:
        """One acknowledged commit: refused unless ``node`` is a running, writable primary."""
        if not node.running or node.role not in ("primary", "promoted"):
            raise ConnectionError(f"{node.name} does not accept writes ({node.role}, "
                                  f"{'running' if node.running else 'stopped'})")
        node.rows.append(row)
        if node.role == "primary":
            standby = self._role("standby")
            if standby is not None and standby.running:
                standby.rows.append(row)                 # synchronous: before the ack
            replica = self.nodes["replica"]
            if replica.role == "replica" and not self.stalled:
                replica.rows.append(row)                 # asynchronous, caught up here

    def _role(self, role: str) -> Node | None:
        return next((n for n in self.nodes.values() if n.role == role), None)

    # -- the port ------------------------------------------------------------------------------

    def endpoint(self, which: Literal["primary", "replica", "application"] = "primary") -> Endpoint:
        if which == "application":
            return Endpoint("memory", APPLICATION_PORT, self.env.service.database, sslmode="disable")
        node = self.nodes["replica"] if which == "replica" else self._role("primary")
        return Endpoint("memory", PORTS[node.name], self.env.service.database, sslmode="disable")

    def server_state(self) -> ServerState:
        ha = [self.nodes["node1"], self.nodes["node2"]]
        healthy = all(n.running for n in ha) and {n.role for n in ha} == {"primary", "standby"}
        return ServerState(self.env.server.name, "Healthy" if healthy else "Degraded", tuple(
            NodeState(n.name, n.role, n.running, sync_state={"standby": "sync", "replica": "async"}.get(n.role))
            for n in self.nodes.values()))

    def failover(self, mode: Literal["planned", "forced"] = "planned") -> FailoverResult:
        self.calls.append(f"failover {mode}")
        old, new = self._role("primary"), self._role("standby")
        old.role, new.role = "standby", "primary"
        return FailoverResult(mode, old.name, new.name, 0.001, 0.002, None)

    def stop_primary_region(self) -> Change:
        self.calls.append("stop_primary_region")
        for name in ("node1", "node2"):
            self.nodes[name].running = False
        return Change("server", self.env.server.name, "updated")

    def start_primary_region(self) -> Change:
        self.calls.append("start_primary_region")
        for name in ("node1", "node2"):
            self.nodes[name].running = True
        return Change("server", self.env.server.name, "updated")

    def promote_replica(self, drill: str | None = None) -> PromotionResult:
        self.calls.append(f"promote_replica {drill}")
        replica = self.nodes["replica"]
        if replica.role == "promoted":
            return PromotionResult("replica", "unchanged")
        replica.role = "promoted"
        return PromotionResult("replica", "promoted", 0.001)

    def stall_replica(self) -> None:
        if STALL_REPLICA not in self.capabilities:
            raise NotImplementedError("stall_replica without the capability")
        self.calls.append("stall_replica")
        self.stalled = True

    def replica_diverged(self) -> bool:
        return self.nodes["replica"].role == "promoted"

    def application_target(self) -> str:
        return "replica" if self.nodes["replica"].role == "promoted" and not self.drill_promoted else "primary"

    def rebuild_replica(self) -> Change:
        self.calls.append("rebuild_replica")
        replica = self.nodes["replica"]
        replica.role, replica.rows, self.stalled = "replica", list(self._role("primary").rows), False
        return Change("server", "replica", "created")

    def promoted_server_facts(self) -> list[str]:
        return ["the promoted replica runs alone (in memory)"]

    def restore_point_in_time(self, target_time: datetime, name: str) -> Endpoint:
        self.calls.append(f"restore {name} to {target_time.isoformat()}")
        self.servers[name] = Endpoint("memory", 9, self.env.service.database, sslmode="disable")
        return self.servers[name]

    def delete_server(self, name: str) -> Change:
        self.calls.append(f"delete {name}")
        return Change("server", name, "deleted" if self.servers.pop(name, None) else "unchanged")

    def list_backups(self) -> list[BackupInfo]:
        return []

    def own_roles(self) -> set[str]:
        return set()

    def server_identity(self) -> dict[str, str]:
        return {"system_identifier": self.identity}

    def ledger_anchors(self) -> MemoryAnchors:
        return self.anchors

    def read_archived_report(self, location: str) -> bytes | None:
        return self.archived.get(location)

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)

        def not_modelled(*args, **kwargs):
            raise NotImplementedError(f"MemoryTarget.{name}: the in-memory target fakes the topology and the drills "
                                      "only; use the sandbox for the rest")
        return not_modelled


class MemoryProbe:
    """A probe writer that commits into a MemoryTarget, synchronously: each row either succeeds
    on the node its connection string names, or fails (never acknowledged)."""

    def __init__(self, target: MemoryTarget, conninfo: str):
        self.target = target
        self.conninfo = conninfo
        self.result = ProbeResult()
        self.next_id = 1

    def start(self) -> MemoryProbe:
        return self

    def wait_for_rows(self, count: int, timeout: float = 30) -> None:  # noqa: ARG002 - nothing to wait for
        written = 0
        for _ in range(count * 3):              # a few failed attempts, as the real writer retries
            try:
                self.target.write(self.target.node_at(self.conninfo), self.next_id)
            except ConnectionError as exc:
                if self.result.first_failure is None:
                    self.result.first_failure = time.monotonic()
                self.result.errors.append(str(exc))
                continue
            if self.result.first_failure is not None and self.result.first_recovery is None:
                self.result.first_recovery = time.monotonic()
            self.result.acknowledged.append(self.next_id)
            self.result.acknowledged_at[self.next_id] = clock.now().timestamp()
            self.next_id += 1
            written += 1
            if written == count:
                return
        raise TimeoutError(f"probe writer acknowledged {written} of {count} rows; errors: {self.result.errors[-3:]}")

    def stop(self) -> ProbeResult:
        return self.result

    def missing(self, conninfo: str | None = None) -> list[int]:
        present = set(self.target.node_at(conninfo or self.conninfo).rows)
        return [i for i in self.result.acknowledged if i not in present]

    def drop_table(self, conninfo: str | None = None) -> None:
        self.target.node_at(conninfo or self.conninfo).dropped = True

    def switch_to(self, conninfo: str) -> None:
        self.conninfo = conninfo


class MemoryPlane:
    """pcdb.drills.DataPlane over a MemoryTarget."""

    def __init__(self, target: MemoryTarget):
        self.target = target

    def probe(self, conninfo: str, table: str) -> MemoryProbe:  # noqa: ARG002 - one table in memory
        return MemoryProbe(self.target, conninfo)

    def replica_lag_bytes(self, target, env, password) -> int | None:  # noqa: ARG002 - the fake's own view
        primary = self.target._role("primary")
        return (len(primary.rows) - len(self.target.nodes["replica"].rows)) * ROW_BYTES
