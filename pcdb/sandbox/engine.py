"""The sandbox topology: primary + synchronous HA standby + asynchronous read replica.

Every server is a real PostgreSQL process on 127.0.0.1, run as the ``postgres`` user when we
are root. WAL is archived by every HA node (archive_mode=always) into ``archive/`` and a second
copy ``archive-geo/`` (the geo-redundant backup); base backups go to ``backups/``. The state file
records nodes, ports, roles and timelines so ``up`` after a crash or reboot restarts what exists.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

from pcdb import secrets as pwd
from pcdb.changes import Change
from pcdb.config import Environment
from pcdb.errors import SandboxError
from pcdb.sandbox import builds, proc
from pcdb.sandbox.backups import BackupStore
from pcdb.sandbox.bootstrap import NodeMaker
from pcdb.sandbox.core import (  # noqa: F401 - names the rest of pcdb imports from here
    HA_NODES,
    REPLICA,
    REPLICATION_USER,
    _free_port,
    _now,
    default_root,
    exclusive,
    lock_holder,
)
from pcdb.sandbox.node import Node
from pcdb.sandbox.restores import Restores
from pcdb.sandbox.state import STATE_VERSION, SandboxState
from pcdb.sandbox.topology import Topology
from pcdb.sandbox.upgrades import Upgrades
from pcdb.sql import query


class Sandbox(NodeMaker, Topology, BackupStore, Restores, Upgrades):
    """The servers of one environment's sandbox, and the operations on them."""

    def __init__(self, env: Environment, root: Path | None = None, bindir: Path | None = None):
        spec = env.sandbox
        if spec is None:
            raise SandboxError(f"environment {env.name!r} has no sandbox section (its target is "
                               f"{env.target}); use --env local")
        self.env = env
        self.spec = spec
        chosen = root or os.environ.get("PCDB_SANDBOX_ROOT") or spec.root or default_root(env.name)
        self.root = Path(chosen).absolute()
        self._bindir = bindir
        self.admin_user = env.server.admin.user
        self.timeout = spec.start_timeout.total_seconds()
        self._state: dict | None = None
        self._state_mtime: int | None = None
        self._lock_depth = 0
        self._root_was_new = False
        self.lock_timeout = 600.0  # a drill or install holds the lock for minutes at most

    # -- layout ---------------------------------------------------------------------------

    @property
    def bindir(self) -> Path:
        """The server binaries: the folder the sandbox was made with (``state.json``), which an
        upgrade in another process may have changed since this object last looked."""
        configured = self.state.bindir
        if self._bindir is None or (configured and Path(configured) != self._bindir):
            self._bindir = proc.find_bindir(configured, major=self.env.server.version)
        return self._bindir

    def postgresql(self) -> dict:
        """Which PostgreSQL the sandbox runs, against the spec's ``server.version``: the binaries'
        folder and version, and a warning when the major differs (rehearsals then do not run on
        the version production runs), saying how to get the spec's major here, or why it cannot be."""
        version = proc.binaries_version(self.bindir)
        spec, running = str(self.env.server.version), version.split(".")[0]
        warning = None
        if running != spec:
            warning = (f"the spec's server.version is {spec}, but the sandbox runs PostgreSQL {version} "
                       f"({self.bindir}): what it rehearses is not checked on {spec}. ")
            there = proc.bindir_of_major(spec)
            if there is not None:
                warning += (f"PostgreSQL {spec} is installed here ({there}), but a sandbox keeps the binaries it was "
                            f"made with: `pcdb sandbox destroy` and `pcdb sandbox up` make it on {spec}")
            else:
                warning += f"{builds.why_not(spec)} (docs/sandbox.md)"
        return {"spec_version": spec, "binaries": str(self.bindir), "binaries_version": version,
                "matches_spec": warning is None, "warning": warning, "build": builds.provenance(self.bindir)}

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def secrets_dir(self) -> Path:
        return self.root / "secrets"

    @property
    def tls_dir(self) -> Path:
        return self.root / "tls"

    @property
    def ca_file(self) -> Path:
        return self.tls_dir / "ca.crt"

    @property
    def archive_dirs(self) -> tuple[Path, Path]:
        return self.root / "archive", self.root / "archive-geo"

    @property
    def replica_archive(self) -> Path:
        """The promoted replica's own archive: its timeline must never mix with the HA pair's."""
        return self.root / "archive-replica"

    @property
    def backup_dirs(self) -> tuple[Path, Path]:
        return self.root / "backups", self.root / "backups-geo"

    @property
    def passfile(self) -> Path:
        return self.root / "nodes" / "replication.pgpass"

    def node(self, name: str) -> Node:
        info = self.state.nodes.get(name) or self.state.restores.get(name)
        if info is None:
            raise SandboxError(f"the sandbox has no server named {name!r}")
        folder = "nodes" if name in self.state.nodes else "restores"
        bindir = getattr(info, "bindir", None)
        return Node(name, self.root / folder / name, info.port, Path(bindir) if bindir else self.bindir)

    def nodes(self) -> list[Node]:
        return [self.node(name) for name in self.state.nodes]

    def role(self, name: str) -> str:
        return self.state.nodes[name].role

    def primary(self) -> Node:
        """The service's primary: the HA node in that role or, after a real region failover (the
        application's record points at it), the promoted replica."""
        if self.state.application == "replica":
            return self.node(REPLICA)
        for name, info in self.state.nodes.items():
            if info.role == "primary" and name in HA_NODES:
                return self.node(name)
        raise SandboxError("the sandbox has no primary; run `pcdb sandbox up`")

    def standby(self) -> Node:
        return self.node(next(n for n in HA_NODES if self.role(n) == "standby"))

    def exists(self) -> bool:
        return self.state_file.exists()

    # -- state ----------------------------------------------------------------------------

    @property
    def state(self) -> SandboxState:
        """The state file's content, re-read whenever another process (or Sandbox) changed it."""
        mtime = self.state_file.stat().st_mtime_ns if self.state_file.exists() else None
        if self._state is None or mtime != self._state_mtime:
            self._state = self._load_state()
            self._state_mtime = mtime
        return self._state

    def _load_state(self) -> SandboxState:
        if self.state_file.exists():
            state = json.loads(self.state_file.read_text())
            if state.get("version") != STATE_VERSION:
                raise SandboxError(f"{self.state_file} has state version {state.get('version')}, "
                                   f"this pcdb reads {STATE_VERSION}; destroy and re-create the sandbox")
            return SandboxState.from_json(state)
        return SandboxState(env=self.env.name)

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # Owner-only: the topology, ports and event log are nobody else's business (pcdb's own
        # processes run as the owner; the servers never read it).
        proc.write_file(self.state_file, json.dumps(self.state.to_json(), indent=2) + "\n", mode=0o600,
                        server_owned=False)
        self._state_mtime = self.state_file.stat().st_mtime_ns

    @exclusive
    def record_event(self, what: str, **details: object) -> None:
        """Add an event to the state's history (for another process, e.g. the supervisor)."""
        self._event(what, **details)
        self.save()

    @exclusive
    def run_locked(self, func):
        """Run ``func()`` holding the sandbox's lock (topology changes made outside this class)."""
        return func()

    def _event(self, what: str, **details: object) -> None:
        self.state.events = (self.state.events + [{"at": _now(), "event": what, **details}])[-200:]

    # -- secrets --------------------------------------------------------------------------

    def secret_file(self, name: str) -> Path:
        return self.secrets_dir / f"{name}.password"

    def password(self, name: str) -> str:
        """The generated password of role ``name`` (created on first use, file mode 0600)."""
        return pwd.read_or_create(self.secret_file(name))

    # -- up -------------------------------------------------------------------------------

    @exclusive
    def up(self, parameters: dict[str, str] | None = None) -> list[Change]:
        """Create what is missing, start what is stopped; a second call changes nothing.

        Args:
            parameters: canonical server parameters written into a new cluster before its first
                start (so a fresh install needs no restart); ignored for existing clusters.
        """
        return [*self.ensure_ha(parameters), self.ensure_replica()]

    @exclusive
    def ensure_ha(self, parameters: dict[str, str] | None = None) -> list[Change]:
        """The primary and its synchronous standby (the ZoneRedundant HA pair). An interrupted
        failover is finished or undone first: no node is started before that."""
        self._prepare_root()
        changes = [Change("failover", "interrupted", "updated", notes=(done,)) for done in self.resolve_intent()]
        if self.state.upgrade is not None and self.state.upgrade["step"] != "stopping":
            # An upgrade killed after its primary was upgraded: the other nodes are still the old
            # major and cannot start; finishing it copies them afresh (before that, nothing of the
            # old major was changed, and `pcdb upgrade` starts it again).
            done = self.upgrade(self.state.upgrade["to"])
            changes.append(Change("upgrade", "interrupted", "updated", {"version": (done["from"], done["to"])},
                                  notes=("the interrupted upgrade was finished",)))
        if self.state.application == "replica":
            # A real region failover made the replica the primary: the HA nodes come back as they
            # were (nothing points at them) until `pcdb failback region` makes them follow it.
            changes += [self._start_if_stopped(self.node(n)) for n in HA_NODES if n in self.state.nodes]
            self.save()
            return changes
        changes.append(self._ensure_primary(parameters or {}))
        changes.append(self._ensure_follower(self._standby_name(), "standby"))
        changes.append(self._ensure_sync())
        self.save()
        return changes

    @exclusive
    def ensure_replica(self) -> Change:
        """The asynchronous read replica following whichever HA node is primary: it streams before
        this returns (after a reboot or an undone failover it reconnects on its own schedule,
        wal_retrieve_retry_interval), unless a drill cut or promoted it."""
        change = self._ensure_follower(REPLICA, "replica")
        if not self.replica_diverged():
            self.wait_replica_following()
        self.save()
        return change

    # -- status, down, destroy -------------------------------------------------------------

    def status(self) -> dict:
        """Nodes with role, endpoint, sync state, timeline and lag; works on a stopped sandbox."""
        replication: dict[str, tuple] = {}
        live: dict[str, tuple[bool, int]] = {}
        versions: dict[str, str] = {}       # what each running server says it is
        for node in self.nodes():
            if not node.is_running():
                continue
            try:
                with node.connect(self.admin_user, timeout=5) as conn:
                    live[node.name] = conn.execute(query("sandbox.sql", "node_state")).fetchone()
                    versions[node.name] = conn.execute(query("sandbox.sql", "server_version")).fetchone()[0]
                    if not live[node.name][0]:
                        for row in conn.execute(query("sandbox.sql", "replication")):
                            replication[row[0]] = row
            except SandboxError:
                continue
        out = []
        for node in self.nodes():
            in_recovery, timeline = live.get(node.name, (None, self.state.nodes[node.name].timeline))
            role = self.role(node.name)
            if node.name in live:
                role = ("replica" if node.name == REPLICA else "standby") if in_recovery else "primary"
            rep = replication.get(node.name)
            out.append({
                "name": node.name, "role": role, "running": node.name in live,
                "host": "127.0.0.1", "port": node.port, "socket_dir": str(node.run_dir),
                "sync_state": rep[2] if rep else None, "timeline": timeline, "version": versions.get(node.name),
                "lag_bytes": (rep[3] if rep else (0 if role == "primary" and node.name in live else None)),
            })
        from pcdb.sandbox import storage

        try:
            used = storage.usage(self) if any(n["role"] == "primary" and n["running"] for n in out) else None
        except SandboxError:
            used = None
        problems = self._problems(out) + [p for p in [storage.problem(used)] if p] + self.privacy_problems()
        return {"environment": self.env.name, "root": str(self.root), "database": self.env.service.database,
                "nodes": out, "problems": problems, "storage": used, "postgresql": self.postgresql(),
                "intent": asdict(self.state.intent) if self.state.intent else None,
                "supervisor": self._supervisor_status(),
                "restores": [{"name": n, "port": i.port, "target_time": i.target_time,
                              "created_at": i.created_at, "running": self.node(n).is_running()}
                             for n, i in self.state.restores.items()]}

    def _supervisor_status(self) -> dict:
        from pcdb.sandbox import supervision

        pid = supervision.running(self)
        last = next((e for e in reversed(self.state.events) if e["event"] == "auto-failover"), None)
        return {"running": pid is not None, "pid": pid,
                "failover_after_seconds": self.spec.auto_failover_after.total_seconds(),
                "last_failover": last}

    def _problems(self, nodes: list[dict]) -> list[str]:
        """What a DBA must know at once: two primaries, none, a pair that is not synchronous, an
        interrupted failover."""
        problems = []
        ha = [n for n in nodes if n["name"] in HA_NODES]
        writable = [n["name"] for n in ha if n["running"] and n["role"] == "primary"]
        if len(writable) > 1:
            problems.append(f"SPLIT BRAIN: {' and '.join(writable)} both accept writes; stop the one that is "
                            "not the recorded primary, then run `pcdb sandbox up`")
        elif not writable:
            after = self.spec.auto_failover_after.total_seconds()
            problems.append("no writable primary: writes are down; " + (
                f"the supervisor promotes the synchronous standby within {after:g}s of the outage "
                "(sandbox.auto_failover_after); if it has not, run `pcdb sandbox up`" if after > 0
                else "automatic failover is off (sandbox.auto_failover_after: 0): run `pcdb sandbox up`"))
        elif not any(n["role"] == "standby" and n["sync_state"] == "sync" for n in ha):
            problems.append(f"the HA pair is not synchronous: {writable[0]} runs without its synchronous copy, RPO 0 "
                            "is not held (a failover now would lose acknowledged writes); the supervisor rejoins the "
                            "standby, or copies it afresh, by itself; `pcdb sandbox up` does it now")
        intent = self.state.intent
        if intent:
            problems.append(f"an interrupted {intent.op} from {intent.old} to {intent.new} since "
                            f"{intent.since}: `pcdb sandbox up` finishes or undoes it")
        return problems

    @exclusive(creates_root=False)
    def down(self) -> list[str]:
        """Stop every server of the sandbox (replica, standby, primary, restores); keep the data."""
        stopped = []
        if not self.exists():
            return stopped
        from pcdb.sandbox import supervision  # first: it must not fail over a primary we stop

        if supervision.stop(self):
            stopped.append("supervisor")
        state = self.state
        order = [REPLICA] + [n for n in HA_NODES if state.role_of(n) != "primary"] + \
                [n for n in HA_NODES if state.role_of(n) == "primary"] + list(state.restores)
        for name in order:
            if name not in state.nodes and name not in state.restores:
                continue
            node = self.node(name)
            if node.is_running():
                node.stop("fast", timeout=30)
                stopped.append(name)
        return stopped

    @exclusive(creates_root=False)
    def destroy(self) -> bool:
        """Stop everything and remove the sandbox folder; False when there was nothing. Only a
        sandbox (a folder with pcdb's state.json) is removed, never any other folder."""
        if not self.root.exists():
            return False
        if not self.exists():
            others = [p.name for p in self.root.iterdir() if p.name != "state.lock"]
            if others:
                raise SandboxError(f"{self.root} is not a sandbox (no state.json): nothing was deleted")
            (self.root / "state.lock").unlink(missing_ok=True)
            self.root.rmdir()
            return True
        self.down()
        shutil.rmtree(self.root)
        return True
