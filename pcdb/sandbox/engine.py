"""The sandbox topology: primary + synchronous HA standby + asynchronous read replica.

Every server is a real PostgreSQL process on 127.0.0.1, run as the ``postgres`` user when we
are root. WAL is archived by every HA node (archive_mode=always) into ``archive/`` and a second
copy ``archive-geo/`` (the geo-redundant backup); base backups go to ``backups/``. The state file
records nodes, ports, roles and timelines so ``up`` after a crash or reboot restarts what exists.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
from psycopg import sql as psql

from pcdb import crash, wal
from pcdb import secrets as pwd
from pcdb.changes import Change
from pcdb.config import Environment
from pcdb.errors import SandboxError
from pcdb.sandbox import proc
from pcdb.sandbox.node import Node, conf_line
from pcdb.scram import verifier
from pcdb.sql import query

HA_NODES = ("node1", "node2")
REPLICA = "replica"
REPLICATION_USER = "replicator"
STATE_VERSION = 1


def default_root(env_name: str) -> Path:
    """Where an environment's sandbox lives unless $PCDB_SANDBOX_ROOT or the spec says otherwise."""
    if os.geteuid() == 0:
        return Path("/var/lib/pcdb") / env_name
    base = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state"))
    return base / "pcdb" / env_name


def _free_port(taken: set[int]) -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in taken:
            return port
    raise SandboxError("could not find a free TCP port on 127.0.0.1")


def _tree_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Backup:
    """A base backup in the sandbox's backup folder."""

    id: str
    started_at: datetime
    finished_at: datetime
    path: Path
    size_bytes: int
    timeline: int
    kind: str

    def as_dict(self) -> dict:
        return {"id": self.id, "started_at": self.started_at.isoformat(),
                "finished_at": self.finished_at.isoformat(), "size_bytes": self.size_bytes,
                "timeline": self.timeline, "kind": self.kind, "path": str(self.path)}


def exclusive(method=None, *, creates_root: bool = True):
    """One process changes a sandbox at a time: an exclusive lock on ``<root>/state.lock`` for the
    whole operation (re-entrant within the Sandbox object). A second process waits up to
    ``lock_timeout`` seconds, then fails naming the holder, before it changed anything.
    With ``creates_root=False`` (down, destroy) a sandbox that does not exist is left uncreated."""
    if method is None:
        return functools.partial(exclusive, creates_root=creates_root)

    @functools.wraps(method)
    def locked(self: Sandbox, *args, **kwargs):
        if self._lock_depth or (not creates_root and not self.root.exists()):
            self._lock_depth += 1
            try:
                return method(self, *args, **kwargs)
            finally:
                self._lock_depth -= 1
        if not self.root.exists():
            self._root_was_new = True  # pcdb made this folder: its mode is pcdb's to set
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / "state.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + self.lock_timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                        raise SandboxError(f"another pcdb process is changing the sandbox at {self.root} "
                                           f"({holder}); {method.__name__} waited {self.lock_timeout:.0f}s. "
                                           "Wait for it to finish, or stop that process") from None
                    time.sleep(0.1)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}, {method.__name__} since {_now()}\n".encode(), 0)
            self._lock_depth = 1
            try:
                return method(self, *args, **kwargs)
            finally:
                self._lock_depth = 0
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    return locked


def lock_holder(root: Path) -> str | None:
    """Who holds the sandbox's lock now (a pcdb process changing it), or None when it is free."""
    path = root / "state.lock"
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class Sandbox:
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
        if self._bindir is None:
            self._bindir = proc.find_bindir(self.state.get("bindir"))
        return self._bindir

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
        info = self.state["nodes"].get(name) or self.state["restores"].get(name)
        if info is None:
            raise SandboxError(f"the sandbox has no server named {name!r}")
        folder = "nodes" if name in self.state["nodes"] else "restores"
        return Node(name, self.root / folder / name, info["port"], self.bindir)

    def nodes(self) -> list[Node]:
        return [self.node(name) for name in self.state["nodes"]]

    def role(self, name: str) -> str:
        return self.state["nodes"][name]["role"]

    def primary(self) -> Node:
        for name, info in self.state["nodes"].items():
            if info["role"] == "primary" and name in HA_NODES:
                return self.node(name)
        raise SandboxError("the sandbox has no primary; run `pcdb sandbox up`")

    def standby(self) -> Node:
        return self.node(next(n for n in HA_NODES if self.role(n) == "standby"))

    def exists(self) -> bool:
        return self.state_file.exists()

    # -- state ----------------------------------------------------------------------------

    @property
    def state(self) -> dict:
        """The state file's content, re-read whenever another process (or Sandbox) changed it."""
        mtime = self.state_file.stat().st_mtime_ns if self.state_file.exists() else None
        if self._state is None or mtime != self._state_mtime:
            self._state = self._load_state()
            self._state_mtime = mtime
        return self._state

    def _load_state(self) -> dict:
        if self.state_file.exists():
            state = json.loads(self.state_file.read_text())
            if state.get("version") != STATE_VERSION:
                raise SandboxError(f"{self.state_file} has state version {state.get('version')}, "
                                   f"this pcdb reads {STATE_VERSION}; destroy and re-create the sandbox")
            return state
        return {"version": STATE_VERSION, "env": self.env.name, "created_at": None, "nodes": {},
                "restores": {}, "backups": [], "events": []}

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        proc.write_file(self.state_file, json.dumps(self.state, indent=2) + "\n", mode=0o644,
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
        self.state["events"] = (self.state["events"] + [{"at": _now(), "event": what, **details}])[-200:]

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
        changes.append(self._ensure_primary(parameters or {}))
        changes.append(self._ensure_follower(self._standby_name(), "standby"))
        changes.append(self._ensure_sync())
        self.save()
        return changes

    @exclusive
    def ensure_replica(self) -> Change:
        """The asynchronous read replica following whichever HA node is primary."""
        change = self._ensure_follower(REPLICA, "replica")
        self.save()
        return change

    def _standby_name(self) -> str:
        nodes = self.state["nodes"]
        return next((n for n in HA_NODES if nodes.get(n, {}).get("role") == "standby"),
                    next(n for n in HA_NODES if nodes.get(n, {}).get("role") != "primary"))

    def _prepare_root(self) -> None:
        fresh = not self.exists()
        if fresh:
            others = sorted(p.name for p in self.root.iterdir() if p.name != "state.lock") if self.root.exists() else []
            if others and not self._root_was_new:
                (self.root / "state.lock").unlink(missing_ok=True)  # the lock taken to look: not ours to leave
                raise SandboxError(f"{self.root} is not a sandbox (no state.json) and not empty ({', '.join(others[:5])}"
                                   f"{', ...' if len(others) > 5 else ''}); give the sandbox a new or empty folder "
                                   "(sandbox.root in the spec, or PCDB_SANDBOX_ROOT). Nothing was changed")
            self.state["root_created_by_pcdb"] = self._root_was_new or not self.root.exists()
        for folder in (self.root, self.root / "nodes", self.root / "restores", self.root / "bin",
                       *self.archive_dirs, self.replica_archive, *self.backup_dirs, self.tls_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._make_traversable(self.root.parent)
        if fresh or not self.state.get("created_at"):
            self.state["created_at"] = _now()
            self.state["bindir"] = str(self.bindir)
        user = proc.server_user()
        for folder in (self.root / "nodes", self.root / "restores", *self.archive_dirs,
                       self.replica_archive, *self.backup_dirs, self.tls_dir, self.root / "bin"):
            if not user.is_self:  # what is inside is written by the servers themselves
                os.chown(folder, user.uid, user.gid)
        if self.state.get("root_created_by_pcdb", True):
            os.chmod(self.root, 0o755)
        elif not self.root.stat().st_mode & 0o001 and not user.is_self:
            raise SandboxError(f"the server user '{user.name}' cannot enter {self.root} (mode "
                               f"{oct(self.root.stat().st_mode & 0o777)}); pcdb did not create that folder and "
                               f"does not change its mode: chmod o+x {self.root}, or choose a new folder")
        self._ensure_tls()
        self._ensure_scripts()
        repl = self.password(REPLICATION_USER)
        proc.write_file(self.passfile, f"127.0.0.1:*:*:{REPLICATION_USER}:{repl}\n", mode=0o600)
        self.save()

    @staticmethod
    def _make_traversable(folder: Path) -> None:
        # The server user must reach the sandbox: every folder above it needs o+x.
        for parent in [folder, *folder.parents]:
            if parent == Path("/"):
                break
            mode = parent.stat().st_mode
            if not mode & 0o001 and proc.server_user().uid != parent.stat().st_uid:
                raise SandboxError(f"the server user '{proc.server_user().name}' cannot enter {parent} "
                                   f"(mode {oct(mode & 0o777)}); choose a sandbox root outside it")

    def _ensure_tls(self) -> None:
        key, cert = self.tls_dir / "server.key", self.tls_dir / "server.crt"
        if cert.exists() and key.exists():
            return
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-days", "3650", "-subj",
                        "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                        "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True,
                       timeout=30)
        os.chmod(key, 0o600)
        shutil.copyfile(cert, self.ca_file)
        os.chmod(self.ca_file, 0o644)
        proc.chown_tree(self.tls_dir)

    def _ensure_scripts(self) -> None:
        script = self.root / "bin" / "archive.sh"
        proc.write_file(script, ARCHIVE_SCRIPT, mode=0o755)

    def _archive_command(self) -> str:
        a, g = self.archive_dirs
        return f"'{self.root}/bin/archive.sh' %p %f '{a}' '{g}'"

    def _base_conf(self) -> str:
        lines = {
            "listen_addresses": "127.0.0.1",
            "ssl": "on",
            "ssl_cert_file": self.tls_dir / "server.crt",
            "ssl_key_file": self.tls_dir / "server.key",
            "ssl_min_protocol_version": "TLSv1.3",
            "password_encryption": "scram-sha-256",
            "wal_level": "replica",
            "max_wal_senders": "10",
            "wal_keep_size": "256MB",
            "wal_log_hints": "on",
            "hot_standby": "on",
            "hot_standby_feedback": "on",
            "archive_mode": "always",
            "archive_command": self._archive_command(),
            "archive_timeout": f"{int(self.env.backup.log_backup.interval.total_seconds())}s",
            "restore_command": f"cp '{self.archive_dirs[0]}/%f' '%p'",
            "recovery_target_timeline": "latest",
            # A standby retries a lost upstream after this (default 5s): the replica then finds
            # the new primary within half a second of a failover.
            "wal_retrieve_retry_interval": "500ms",
            "logging_collector": "on",
            "fsync": "on" if self.spec.fsync else "off",
        }
        text = "\n# --- pcdb sandbox settings (same on every node) ---\n"
        text += "".join(conf_line(k, v) for k, v in lines.items())
        return text + "include_if_exists = 'node.conf'\n"

    def hba(self, cidrs: tuple[str, ...] = ("127.0.0.1/32",)) -> str:
        """pg_hba.conf of every node: over the socket only the admin, and only from the OS users
        pcdb runs as (peer, mapped in pg_ident.conf); over TCP only TLS with SCRAM, from ``cidrs``."""
        admin = self.admin_user
        rules = "".join(f"hostssl all          all         {c:<13} scram-sha-256\n" for c in cidrs)
        return (
            "# pcdb sandbox: the admin over the node's own socket (folder 0700), only from the OS users\n"
            "# pcdb runs as (pg_ident.conf, map pcdb); everything else over TCP with TLS and SCRAM.\n"
            f"local   all          {admin:<11} peer map=pcdb\n"
            f"local   replication  {admin:<11} peer map=pcdb\n"
            "local   all          all                       reject\n"
            "local   replication  all                       reject\n"
            f"hostssl replication  {REPLICATION_USER}  127.0.0.1/32  scram-sha-256\n"
            "# pcdb access rules begin\n"
            f"{rules}"
            "# pcdb access rules end\n"
            "hostnossl all        all         0.0.0.0/0     reject\n"
            "hostnossl replication all        0.0.0.0/0     reject\n"
            "host    all          all         ::/0          reject\n"
        )

    def ident(self) -> str:
        """pg_ident.conf: the OS users pcdb runs as (itself, and the servers' user its tools run as)
        may log in over the socket as the admin; no other OS user may log in at all."""
        users = dict.fromkeys([proc.invoking_user(), proc.server_user().name])
        return ("# pcdb sandbox: OS user -> database user, for peer logins over the socket.\n"
                + "".join(f"pcdb    {u:<15} {self.admin_user}\n" for u in users))

    def _node_conf(self, node: Node, role: str, sync_with: str | None = None) -> dict[str, object]:
        settings: dict[str, object] = {
            "port": node.port,
            "cluster_name": f"{self.env.name}-{node.name}",
            "unix_socket_directories": node.run_dir,
            "unix_socket_permissions": "0700",
            "log_directory": node.log_dir,
        }
        if role == "primary":
            settings["synchronous_standby_names"] = f'"{sync_with}"' if sync_with else ""
        else:
            settings["primary_conninfo"] = self._primary_conninfo(node.name, role)
            settings["synchronous_standby_names"] = ""
        if node.name == REPLICA:
            # Archives only once promoted, into its own region's archive: a promoted replica's
            # timeline history in the shared archive would break the HA pair's next failover.
            settings["archive_mode"] = "on"
            settings["archive_command"] = f"'{self.root}/bin/archive.sh' %p %f '{self.replica_archive}'"
        return settings

    def _primary_conninfo(self, name: str, role: str) -> str:
        if role == "replica":  # follows whichever HA node is primary
            hosts = ",".join("127.0.0.1" for _ in HA_NODES)
            ports = ",".join(str(self.state["nodes"][n]["port"]) for n in HA_NODES)
            target = "target_session_attrs=read-write"
        else:
            hosts, ports, target = "127.0.0.1", str(self.primary().port), ""
        return (f"host={hosts} port={ports} user={REPLICATION_USER} passfile={self.passfile} "
                f"sslmode=verify-full sslrootcert={self.ca_file} application_name={name} {target}").strip()

    def _allocate(self, name: str, role: str) -> Node:
        nodes = self.state["nodes"]
        if name not in nodes:
            taken = {n["port"] for n in [*nodes.values(), *self.state["restores"].values()]}
            port = self.spec.ports.get(name) or _free_port(taken)
            nodes[name] = {"port": port, "role": role, "timeline": 1}
            self.save()
        return self.node(name)

    def _ensure_primary(self, parameters: dict[str, str]) -> Change:
        primary_name = next((n for n in HA_NODES if self.state["nodes"].get(n, {}).get("role")
                             == "primary"), HA_NODES[0])
        node = self._allocate(primary_name, "primary")
        if node.exists():
            return self._start_if_stopped(node)
        self._initdb(node, parameters)
        node.start(self.timeout)
        self._event("created", node=node.name, role="primary")
        return Change("server", node.name, "created", notes=("primary",))

    def _building(self, node: Node) -> Node:
        """Where a node is made before it exists: renamed into place only when complete, so a
        kill halfway leaves no half-made server that would start with default settings."""
        building = Node(node.name, node.home.with_name(node.name + ".building"), node.port, node.bindir)
        shutil.rmtree(building.home, ignore_errors=True)
        shutil.rmtree(node.home, ignore_errors=True)  # a data folder without PG_VERSION: never a server
        building.home.mkdir(parents=True)
        for sub in (building.run_dir, building.log_dir):
            sub.mkdir(mode=0o700)
        proc.chown_tree(building.home)
        os.chmod(building.home, 0o700)
        return building

    def _initdb(self, node: Node, parameters: dict[str, str]) -> None:
        """initdb, the settings, and the admin and replication roles (single-user mode: no port
        is opened before the node has its own), then the rename that makes the node exist."""
        building = self._building(node)
        proc.run([node.prog("initdb"), "-D", str(building.data), "-U", self.admin_user, "-E", "UTF8",
                  "--locale=C.UTF-8", "--data-checksums", "--auth-local=trust",
                  "--auth-host=scram-sha-256", "-N"], timeout=120, what=f"initdb {node.name}")
        crash.point("create:initdb-done")
        with open(building.data / "postgresql.conf", "a") as conf:
            conf.write(self._base_conf())
        proc.write_file(building.data / "pg_hba.conf", self.hba(), mode=0o600)
        proc.write_file(building.data / "pg_ident.conf", self.ident(), mode=0o600)
        auto = "# Do not edit this file manually!\n# It will be overwritten by the ALTER SYSTEM command.\n"
        auto += "".join(conf_line(k, v) for k, v in parameters.items())
        proc.write_file(building.data / "postgresql.auto.conf", auto, mode=0o600)
        roles = (psql.SQL("ALTER ROLE {} WITH PASSWORD {}\nCREATE ROLE {} WITH REPLICATION LOGIN PASSWORD {}\n").format(
            psql.Identifier(self.admin_user), psql.Literal(verifier(self.password(self.admin_user))),
            psql.Identifier(REPLICATION_USER), psql.Literal(verifier(self.password(REPLICATION_USER)))))
        proc.run([node.prog("postgres"), "--single", "-D", str(building.data), "postgres"], timeout=120,
                 what=f"roles of {node.name}", stdin=roles.as_string(None))
        building.write_node_conf(self._node_conf(node, "primary"))
        crash.point("create:configured")
        os.replace(building.home, node.home)

    def _start_if_stopped(self, node: Node) -> Change:
        if node.is_running():
            return Change("server", node.name, "unchanged", notes=(self.role(node.name),))
        if not (node.data / "node.conf").exists():  # never start without its own port and socket
            node.write_node_conf(self._node_conf(node, self.role(node.name)))
        node.start(self.timeout)
        self._event("started", node=node.name)
        return Change("server", node.name, "started", notes=(self.role(node.name), "was stopped"))

    def _ensure_follower(self, name: str, role: str) -> Change:
        node = self._allocate(name, role)
        if node.exists() and role == "standby" and self._promoted(node):
            # Promoted outside pcdb (by hand, or a tool that is not us): it may hold writes the
            # recorded primary does not have. Never start it, never discard them silently.
            raise SandboxError(
                f"SPLIT BRAIN: {name} is recorded as the standby of {self.primary().name} but was promoted outside "
                f"pcdb and may hold writes that {self.primary().name} does not have. Stop it (pg_ctl -D "
                f"{node.data} stop), keep what it holds (move {node.home} aside), then run `pcdb sandbox up`: "
                "the standby is copied afresh from the primary")
        if node.exists():
            return self._start_if_stopped(node)
        self._clone(node, role)
        self._event("created", node=name, role=role)
        return Change("server", name, "created", notes=(role,))

    def _clone(self, node: Node, role: str) -> None:
        """Make ``node`` a streaming copy of the primary (base backup over TLS), start it."""
        primary = self.primary()
        building = self._building(node)
        source = (f"host=127.0.0.1 port={primary.port} user={REPLICATION_USER} passfile={self.passfile} "
                  f"sslmode=verify-full sslrootcert={self.ca_file} application_name={node.name}")
        cmd = [node.prog("pg_basebackup"), "-D", str(building.data), "-X", "stream", "-c", "fast",
               "-d", source]
        if not self.spec.fsync:
            cmd.append("--no-sync")
        proc.run(cmd, timeout=600, what=f"base backup for {node.name}")
        crash.point("clone:copied")
        building.write_node_conf(self._node_conf(node, role))
        proc.write_file(building.data / "standby.signal", "", mode=0o600)
        os.replace(building.home, node.home)
        node.start(self.timeout)
        self._wait_streaming(primary, node.name)

    def _wait_streaming(self, primary: Node, name: str, sync: bool = False) -> None:
        def streaming() -> bool:
            with primary.connect(self.admin_user) as conn:
                rows = conn.execute(query("sandbox.sql", "replication")).fetchall()
            return any(r[0] == name and r[1] == "streaming" and (not sync or r[2] == "sync")
                       for r in rows)
        primary.wait(streaming, f"{name} streaming{' synchronously' if sync else ''}", self.timeout)

    def _ensure_sync(self) -> Change:
        """The primary waits for the HA standby on every commit (R-SYS-3)."""
        primary, standby = self.primary(), self.standby()
        wanted = self._node_conf(primary, "primary", sync_with=standby.name)
        line = conf_line("synchronous_standby_names", wanted["synchronous_standby_names"])
        if line in (primary.data / "node.conf").read_text():
            # Configured already: a standby that just started needs a moment to catch up.
            self._wait_streaming(primary, standby.name, sync=True)
            return Change("replication", f"{primary.name}->{standby.name}", "unchanged",
                          notes=("synchronous",))
        primary.write_node_conf(wanted)
        primary.reload()
        self._wait_streaming(primary, standby.name, sync=True)
        return Change("replication", f"{primary.name}->{standby.name}", "updated",
                      diff={"synchronous_standby_names": ("", standby.name)})

    # -- status, down, destroy -------------------------------------------------------------

    def status(self) -> dict:
        """Nodes with role, endpoint, sync state, timeline and lag; works on a stopped sandbox."""
        replication: dict[str, tuple] = {}
        live: dict[str, tuple[bool, int]] = {}
        for node in self.nodes():
            if not node.is_running():
                continue
            try:
                with node.connect(self.admin_user, timeout=5) as conn:
                    live[node.name] = conn.execute(query("sandbox.sql", "node_state")).fetchone()
                    if not live[node.name][0]:
                        for row in conn.execute(query("sandbox.sql", "replication")):
                            replication[row[0]] = row
            except SandboxError:
                continue
        out = []
        for node in self.nodes():
            in_recovery, timeline = live.get(node.name, (None, self.state["nodes"][node.name].get("timeline")))
            role = self.role(node.name)
            if node.name in live:
                role = ("replica" if node.name == REPLICA else "standby") if in_recovery else "primary"
            rep = replication.get(node.name)
            out.append({
                "name": node.name, "role": role, "running": node.name in live,
                "host": "127.0.0.1", "port": node.port, "socket_dir": str(node.run_dir),
                "sync_state": rep[2] if rep else None, "timeline": timeline,
                "lag_bytes": (rep[3] if rep else (0 if role == "primary" and node.name in live else None)),
            })
        from pcdb.sandbox import storage

        try:
            used = storage.usage(self) if any(n["role"] == "primary" and n["running"] for n in out) else None
        except SandboxError:
            used = None
        problems = self._problems(out) + [p for p in [storage.problem(used)] if p]
        return {"environment": self.env.name, "root": str(self.root), "database": self.env.service.database,
                "nodes": out, "problems": problems, "intent": self.state.get("intent"), "storage": used,
                "supervisor": self._supervisor_status(),
                "restores": [{"name": n, "port": i["port"], "target_time": i.get("target_time"),
                              "created_at": i.get("created_at"), "running": self.node(n).is_running()}
                             for n, i in self.state["restores"].items()]}

    def _supervisor_status(self) -> dict:
        from pcdb.sandbox import supervisor

        pid = supervisor.running(self)
        last = next((e for e in reversed(self.state["events"]) if e["event"] == "auto-failover"), None)
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
            problems.append("no writable primary: writes are down; run `pcdb sandbox up`")
        elif not any(n["role"] == "standby" and n["sync_state"] == "sync" for n in ha):
            problems.append(f"the HA pair is not synchronous: {writable[0]} has no synchronous standby, a "
                            "failover now would lose acknowledged writes; run `pcdb sandbox up`")
        intent = self.state.get("intent")
        if intent:
            problems.append(f"an interrupted {intent['op']} from {intent.get('old')} to {intent.get('new')} since "
                            f"{intent['since']}: `pcdb sandbox up` finishes or undoes it")
        return problems

    @exclusive(creates_root=False)
    def down(self) -> list[str]:
        """Stop every server of the sandbox (replica, standby, primary, restores); keep the data."""
        stopped = []
        if not self.exists():
            return stopped
        from pcdb.sandbox import supervisor  # first: it must not fail over a primary we stop

        if supervisor.stop(self):
            stopped.append("supervisor")
        known = self.state["nodes"]
        order = [REPLICA] + [n for n in HA_NODES if known.get(n, {}).get("role") != "primary"] + \
                [n for n in HA_NODES if known.get(n, {}).get("role") == "primary"] + list(self.state["restores"])
        for name in order:
            if name not in self.state["nodes"] and name not in self.state["restores"]:
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


    # -- failover and promotion ------------------------------------------------------------

    @exclusive
    def failover(self, mode: str = "planned") -> dict:
        """Make the standby the primary; rebuild the old primary as the new synchronous standby.

        planned: the primary shuts down cleanly (every WAL record reaches the standby first);
        forced: the primary is killed (immediate stop), as a zone failure would.

        Returns:
            timings and names: old/new primary, seconds to promotion, seconds until whole again.
        """
        if mode not in ("planned", "forced"):
            raise SandboxError(f"failover mode {mode!r}: use planned or forced")
        self.resolve_intent()
        old, new = self.primary(), self.standby()
        started = time.monotonic()
        # The intent first: a kill anywhere below leaves a record the next run acts on (the old
        # primary is never started again as it is: it is rewound into a standby, or it keeps its
        # role when the standby was not promoted yet).
        self.state["intent"] = {"op": "failover", "old": old.name, "new": new.name, "mode": mode, "since": _now()}
        self._event("failover-begin", mode=mode, old_primary=old.name, new_primary=new.name)
        self.save()
        crash.point("failover:intent-saved")
        old.stop("fast" if mode == "planned" else "immediate", timeout=60)
        crash.point("failover:old-stopped")
        new.promote(self.timeout)
        crash.point("failover:promoted")
        self._take_over(old.name, new.name)
        promoted = time.monotonic() - started
        crash.point("failover:roles-saved")
        self.rejoin(old.name)
        self.wait_replica_following()
        self.state.pop("intent", None)
        self._event("failover-end", mode=mode, new_primary=new.name, seconds=round(promoted, 3))
        self.save()
        return {"mode": mode, "old_primary": old.name, "new_primary": new.name,
                "promote_seconds": promoted, "total_seconds": time.monotonic() - started,
                "timeline": self._timeline(new)}

    def _take_over(self, old: str, new: str) -> None:
        """Record the promoted node as the primary. Until the old primary rejoins, the new one
        must not wait for a standby that is not there (no synchronous_standby_names)."""
        node = self.node(new)
        self.state["nodes"][new]["role"] = "primary"
        self.state["nodes"][old]["role"] = "standby"
        node.write_node_conf(self._node_conf(node, "primary"))
        if node.is_running():
            node.reload()
        self.save()

    def _promoted(self, node: Node) -> bool:
        """Whether ``node`` left recovery (or is leaving it): PostgreSQL removes standby.signal
        when a promotion completes; a running node is asked, a pending promote is waited for."""
        if node.is_running():
            if (node.data / "promote.signal").exists():
                node.wait(lambda: not (node.data / "promote.signal").exists(), "promotion", self.timeout)
            with node.connect(self.admin_user, timeout=5) as conn:
                return not conn.execute("SELECT pg_catalog.pg_is_in_recovery()").fetchone()[0]
        return not (node.data / "standby.signal").exists()

    @exclusive
    def resolve_intent(self) -> list[str]:
        """Finish or undo a failover that a killed process left halfway; nothing to do when none.

        Promoted standby: it is the primary; the old primary is fenced (stopped) and rewound into
        its synchronous standby. Not promoted: the old primary keeps its role and is started
        again; no write was ever taken elsewhere. Returns what was done (for reports)."""
        intent = self.state.get("intent")
        if not intent:
            pending = self.state.get("rejoin")
            if pending:  # a rejoin of its own (not inside a failover) was killed: finish it
                self.rejoin(pending["node"])
                return [f"finished the rejoin of {pending['node']} interrupted since {pending['since']}"]
            return []
        if intent.get("op") != "failover":
            raise SandboxError(f"{self.state_file} records an interrupted {intent.get('op')!r} this pcdb does "
                               "not know how to finish")
        old, new = self.node(intent["old"]), self.node(intent["new"])
        if self._promoted(new):
            old.stop("immediate", timeout=30)       # fence: it must never take writes again
            self._take_over(old.name, new.name)
            if not new.is_running():
                new.start(self.timeout)
            self.rejoin(old.name)
            self.wait_replica_following()
            done = (f"finished the failover from {old.name} to {new.name} interrupted since {intent['since']}: "
                    f"{old.name} rewound and rejoined as synchronous standby")
        else:
            self.state["nodes"][old.name]["role"] = "primary"
            self.state["nodes"][new.name]["role"] = "standby"
            self.save()
            if not old.is_running():
                old.start(self.timeout)
            done = (f"undid the failover from {old.name} to {new.name} interrupted since {intent['since']} "
                    f"before {new.name} was promoted: {old.name} stays the primary")
        self.state.pop("intent", None)
        self._event("intent-resolved", detail=done)
        self.save()
        return [done]

    @exclusive
    def rejoin(self, name: str) -> None:
        """Rewind a stopped former primary onto the current primary's timeline, start it as the
        synchronous standby, and turn synchronous replication back on.

        Resumable: the step reached is kept in the state. A node killed during pg_rewind is in no
        known state (pg_rewind's own documentation), so it is copied afresh instead; a node
        rewound but not yet started is started, never rewound twice."""
        primary, node = self.primary(), self.node(name)
        node.stop("immediate", timeout=30)
        earlier = self.state.get("rejoin") if (self.state.get("rejoin") or {}).get("node") == name else None
        if earlier and earlier["step"] == "rewinding":
            self._event("rejoin-recloned", node=name, reason="killed during pg_rewind")
            self._clone(node, "standby")
        else:
            if not earlier:
                self.state["rejoin"] = {"node": name, "step": "rewinding", "since": _now()}
                self.save()
                crash.point("rejoin:rewinding")
                with primary.connect(self.admin_user) as conn:
                    conn.execute("CHECKPOINT")  # pg_rewind reads the timeline from the control file
                source = psycopg.conninfo.make_conninfo(host=str(primary.run_dir), port=primary.port,
                                                        user=self.admin_user, dbname="postgres")
                proc.run([node.prog("pg_rewind"), "-D", str(node.data), f"--source-server={source}"],
                         timeout=600, what=f"pg_rewind {name}", log=node.startup_log)
                for leftover in ("recovery.signal", "backup_label"):
                    (node.data / leftover).unlink(missing_ok=True)
                # pg_rewind copied the source's node.conf: the node's own goes back before anything
                node.write_node_conf(self._node_conf(node, "standby"))
                proc.write_file(node.data / "standby.signal", "", mode=0o600)
                self.state["rejoin"]["step"] = "rewound"
                self.save()
                crash.point("rejoin:rewound")
            node.start(self.timeout)
            self._wait_streaming(primary, name)
        crash.point("rejoin:streaming")
        primary.write_node_conf(self._node_conf(primary, "primary", sync_with=name))
        primary.reload()
        self._wait_streaming(primary, name, sync=True)
        for n in self.state["nodes"]:
            self.state["nodes"][n]["timeline"] = self._timeline(self.node(n))
        self.state.pop("rejoin", None)
        self.save()

    def wait_replica_following(self) -> None:
        """Wait until the read replica streams from the current primary (when it is a replica)."""
        if self.state["nodes"].get(REPLICA, {}).get("role") == "replica" and self.node(REPLICA).is_running():
            self._wait_streaming(self.primary(), REPLICA)
            self.state["nodes"][REPLICA]["timeline"] = self._timeline(self.node(REPLICA))

    def replica_diverged(self) -> bool:
        """The replica was promoted, or its link cut, by a drill that did not finish."""
        if REPLICA not in self.state["nodes"]:
            return False
        conf = self.node(REPLICA).data / "node.conf"
        return self.role(REPLICA) == "promoted" or (conf.exists() and "primary_conninfo = ''" in conf.read_text())

    @exclusive
    def stall_replica(self) -> None:
        """Cut the replica's link (no streaming, no archive) to drill a region failure with loss."""
        replica = self.node(REPLICA)
        replica.write_node_conf({**self._node_conf(replica, "replica"), "primary_conninfo": "",
                                 "restore_command": ""})
        replica.reload()
        self._event("replica-stalled")
        self.save()

    @exclusive
    def stop_region(self) -> None:
        """Stop both HA nodes at once (immediate), as a lost region would."""
        for name in HA_NODES:
            self.node(name).stop("immediate", timeout=30)
        self._event("region-stopped")
        self.save()

    @exclusive
    def start_region(self) -> list[Change]:
        """Start the HA pair again (the primary region is back)."""
        return self.ensure_ha()

    @exclusive
    def promote_replica(self) -> dict:
        """Promote the read replica to a standalone primary (the region failover, R-DR-2)."""
        replica = self.node(REPLICA)
        if self.role(REPLICA) == "promoted":
            return {"name": REPLICA, "action": "unchanged", "timeline": self._timeline(replica)}
        started = time.monotonic()
        replica.promote(self.timeout)
        replica.write_node_conf({**self._node_conf(replica, "primary"), "primary_conninfo": ""})
        replica.reload()
        self.state["nodes"][REPLICA]["role"] = "promoted"
        self.state["nodes"][REPLICA]["timeline"] = self._timeline(replica)
        self._event("replica-promoted", seconds=round(time.monotonic() - started, 3))
        self.save()
        return {"name": REPLICA, "action": "promoted", "seconds": time.monotonic() - started,
                "timeline": self.state["nodes"][REPLICA]["timeline"]}

    @exclusive
    def rebuild_replica(self) -> Change:
        """Throw the replica's data away and clone it again from the current primary."""
        replica = self.node(REPLICA)
        replica.stop("immediate", timeout=30)
        self.state["nodes"][REPLICA]["role"] = "replica"
        # The promoted lineage is gone; its archive would collide with a later promotion's.
        for leftover in self.replica_archive.iterdir():
            leftover.unlink()
        self._clone(replica, "replica")
        self.state["nodes"][REPLICA]["timeline"] = self._timeline(replica)
        self._event("replica-rebuilt")
        self.save()
        return Change("server", REPLICA, "created", notes=("replica rebuilt from the primary",))

    def _timeline(self, node: Node) -> int | None:
        try:
            with node.connect(self.admin_user, timeout=5) as conn:
                return conn.execute(query("sandbox.sql", "node_state")).fetchone()[1]
        except SandboxError:
            return None

    # -- backups and point-in-time restore -------------------------------------------------

    @exclusive
    def take_backup(self, kind: str = "on-demand") -> Backup:
        """Take a base backup of the primary (plain format with manifest), copy it to the geo folder."""
        primary = self.primary()
        started = datetime.now(timezone.utc)
        backup_id = started.strftime("%Y%m%dT%H%M%S%fZ")
        target = self.backup_dirs[0] / backup_id
        source = psycopg.conninfo.make_conninfo(host=str(primary.run_dir), port=primary.port,
                                                user=self.admin_user)
        cmd = [primary.prog("pg_basebackup"), "-D", str(target), "-X", "stream", "-c", "fast",
               "-d", source, "--label", f"pcdb {kind} {backup_id}"]
        if not self.spec.fsync:
            cmd.append("--no-sync")
        proc.run(cmd, timeout=3600, what=f"base backup of {primary.name}")
        finished = datetime.now(timezone.utc)
        meta = {"id": backup_id, "started_at": started.isoformat(), "finished_at": finished.isoformat(),
                "size_bytes": _tree_size(target), "timeline": self._timeline(primary), "kind": kind,
                "source": primary.name}
        proc.write_file(target.with_name(backup_id + ".json"), json.dumps(meta, indent=2), mode=0o640)
        geo = self.backup_dirs[1]
        proc.run(["cp", "-a", str(target), str(target.with_name(backup_id + ".json")), str(geo)],
                 timeout=3600, what=f"geo copy of backup {backup_id}")
        self._event("backup", id=backup_id, kind=kind)
        self.save()
        return self._backup(meta)

    def _backup(self, meta: dict) -> Backup:
        return Backup(meta["id"], datetime.fromisoformat(meta["started_at"]),
                      datetime.fromisoformat(meta["finished_at"]), self.backup_dirs[0] / meta["id"],
                      meta["size_bytes"], meta["timeline"], meta["kind"])

    def list_backups(self) -> list[Backup]:
        """Every complete base backup, oldest first."""
        found = []
        for meta_file in sorted(self.backup_dirs[0].glob("*.json")):
            meta = json.loads(meta_file.read_text())
            if (self.backup_dirs[0] / meta["id"] / "backup_manifest").exists():
                found.append(self._backup(meta))
        return found

    @exclusive
    def prune_backups(self, retention: timedelta, now: datetime | None = None) -> list[str]:
        """Delete base backups (and their geo copies) finished before ``now - retention``, except
        the newest one before that limit: it is still needed to restore to the limit itself."""
        limit = (now or datetime.now(timezone.utc)) - retention
        old = [b for b in self.list_backups() if b.finished_at < limit]
        removed = []
        for backup in old[:-1]:
            for folder in self.backup_dirs:
                shutil.rmtree(folder / backup.id, ignore_errors=True)
                (folder / f"{backup.id}.json").unlink(missing_ok=True)
            removed.append(backup.id)
        if removed:
            self._event("backups-pruned", ids=removed)
            self.save()
        return removed

    def archive_file(self, path: Path, sha256: str) -> str:
        """Copy ``path`` into ``reports/<year>/`` of both backup stores, read-only (0444), named
        ``<stem>.<sha256[:12]><suffix>``; an identical copy already there is left as it is."""
        name = f"{path.stem}.{sha256[:12]}{path.suffix}"
        year = datetime.now(timezone.utc).strftime("%Y")
        placed = []
        for store in self.backup_dirs:
            folder = store / "reports" / year
            folder.mkdir(parents=True, exist_ok=True)
            dest = folder / name
            if not dest.exists():
                tmp = folder / f".{name}.tmp"
                shutil.copyfile(path, tmp)
                os.chmod(tmp, 0o444)
                os.replace(tmp, dest)
            placed.append(dest)
        return str(placed[0])

    def archive_partition(self, path: Path, name: str, sha256: str) -> str:
        """A partition's dump into ``partitions/`` of both backup stores, read-only, with its
        SHA-256 beside it. The name is the partition's own: an archive not yet proved (a killed
        run's) is replaced by the next run's."""
        placed = []
        for store in self.backup_dirs:
            folder = store / "partitions"
            folder.mkdir(parents=True, exist_ok=True)
            for dest, write in ((folder / f"{name}.dump", lambda tmp: shutil.copyfile(path, tmp)),
                                (folder / f"{name}.dump.sha256", lambda tmp: tmp.write_text(f"{sha256}  {name}.dump\n"))):
                tmp = folder / f".{dest.name}.tmp"
                tmp.unlink(missing_ok=True)
                write(tmp)
                os.chmod(tmp, 0o444)
                os.replace(tmp, dest)
            placed.append(folder / f"{name}.dump")
        return str(placed[0])

    def verify_backup(self, backup: Backup) -> tuple[bool, str]:
        """pg_verifybackup against the backup's manifest (checksums of every file, and its WAL)."""
        result = proc.run([str(self.bindir / "pg_verifybackup"), "-q", str(backup.path)], timeout=3600,
                          what=f"pg_verifybackup {backup.id}", check=False)
        output = (result.stderr or result.stdout).strip()
        return result.returncode == 0, output.splitlines()[-1] if output else "backup successfully verified"

    def geo_copy_matches(self, backup: Backup) -> bool:
        """The geo copy of ``backup`` exists and has the same manifest (file list and checksums)."""
        local = backup.path / "backup_manifest"
        geo = self.backup_dirs[1] / backup.id / "backup_manifest"
        return geo.exists() and geo.read_bytes() == local.read_bytes()

    def archive_gaps(self, backup: Backup) -> list[str]:
        """WAL segments missing from the archive between ``backup``'s start and the last archived
        segment (any timeline may hold a segment; a .partial counts), as log-id + segment hex."""
        label = (backup.path / "backup_label").read_text()
        start = next(line for line in label.splitlines() if line.startswith("START WAL LOCATION"))
        first = start.split("file ")[1].rstrip(")")
        return wal.missing_segments([p.name for p in self.archive_dirs[0].iterdir()], first,
                                    self.wal_segment_size())

    def wal_segment_size(self) -> int:
        """The primary's wal_segment_size in bytes (initdb --wal-segsize; 16 MB by default)."""
        try:
            with self.primary().connect(self.admin_user) as conn:
                return int(conn.execute(query("sandbox.sql", "wal_segment_size")).fetchone()[0])
        except SandboxError:
            return wal.DEFAULT_SEGMENT_SIZE

    def amcheck(self, name: str, dbname: str) -> tuple[bool, str]:
        """pg_amcheck of every table and index of ``dbname`` on server ``name`` (heap + btree)."""
        node = self.node(name)
        result = proc.run([node.prog("pg_amcheck"), "-h", str(node.run_dir), "-p", str(node.port),
                           "-U", self.admin_user, "--install-missing", "--heapallindexed", "-d", dbname],
                          timeout=3600, what=f"pg_amcheck on {name}", check=False)
        output = (result.stdout + result.stderr).strip()
        return result.returncode == 0, output.splitlines()[-1] if output else "no corruption found"

    def archive_status(self) -> dict:
        """pg_stat_archiver of the primary."""
        with self.primary().connect(self.admin_user) as conn:
            cur = conn.execute(query("sandbox.sql", "archiver"))
            row = cur.fetchone()
            return dict(zip([c.name for c in cur.description], row))

    @exclusive
    def seal_wal(self) -> str:
        """Write a commit and close the current WAL segment, then wait until it is archived.

        A point-in-time restore needs an archived commit after its target time.
        """
        primary = self.primary()
        with primary.connect(self.admin_user) as conn:
            conn.execute(query("sandbox.sql", "force_commit"))  # autocommit: committed here
            walfile = conn.execute(query("sandbox.sql", "switch_wal")).fetchone()[0]
        primary.wait(lambda: all((d / walfile).exists() for d in self.archive_dirs),
                     f"archiving of {walfile} (both copies)", self.timeout)
        return walfile

    @exclusive
    def restore(self, target_time: datetime, name: str) -> Node:
        """Restore the latest backup before ``target_time`` into a new server ``name`` and replay
        the archive up to that time; the server is then promoted and running.

        Raises:
            SandboxError: no backup before the target, or recovery did not reach the target.
        """
        if target_time.tzinfo is None:
            raise SandboxError("the restore target time needs a time zone (e.g. 2026-11-26T10:00:00+09:00)")
        if name in self.state["nodes"] or name in self.state["restores"]:
            raise SandboxError(f"a server named {name!r} already exists in the sandbox; delete it first")
        candidates = [b for b in self.list_backups() if b.finished_at <= target_time]
        if not candidates:
            raise SandboxError(f"no base backup finished before {target_time.isoformat()}; "
                               "take one (pcdb backup) or choose a later time")
        backup = candidates[-1]
        if target_time < datetime.now(timezone.utc):
            self.seal_wal()
        taken = {n["port"] for n in [*self.state["nodes"].values(), *self.state["restores"].values()]}
        self.state["restores"][name] = {"port": _free_port(taken), "backup": backup.id,
                                        "target_time": target_time.isoformat(), "created_at": _now()}
        self.save()  # first: a kill below leaves a server `delete_server` (and the next run) removes
        crash.point("restore:registered")
        node = self.node(name)
        node.home.mkdir(parents=True)
        for sub in (node.run_dir, node.log_dir):
            sub.mkdir(mode=0o700)
        proc.chown_tree(node.home)
        proc.run(["cp", "-a", str(backup.path), str(node.data)], timeout=3600,
                 what=f"copy backup {backup.id} for {name}")
        crash.point("restore:copied")
        (node.data / "backup_manifest").unlink(missing_ok=True)
        node.write_node_conf({
            **self._node_conf(node, "primary"), "archive_mode": "off",
            "recovery_target_time": target_time.isoformat(), "recovery_target_action": "promote",
            "recovery_target_inclusive": "off",
        })
        proc.write_file(node.data / "recovery.signal", "", mode=0o600)
        node.start(self.timeout)
        crash.point("restore:started")

        def promoted() -> bool:
            with node.connect(self.admin_user, timeout=5) as conn:
                return not conn.execute("SELECT pg_catalog.pg_is_in_recovery()").fetchone()[0]
        node.wait(promoted, f"recovery to {target_time.isoformat()}", max(self.timeout, 600))
        self._event("restored", name=name, backup=backup.id, target_time=target_time.isoformat())
        self.save()
        return node

    @exclusive
    def delete_server(self, name: str) -> Change:
        """Stop and remove a restored (throw-away) server; unchanged when it does not exist."""
        if name in self.state["nodes"]:
            raise SandboxError(f"{name} is part of the HA topology; only restored servers can be deleted")
        if name not in self.state["restores"]:
            return Change("server", name, "unchanged", notes=("does not exist",))
        node = self.node(name)
        node.stop("immediate", timeout=30)
        shutil.rmtree(node.home, ignore_errors=True)
        del self.state["restores"][name]
        self._event("deleted", name=name)
        self.save()
        return Change("server", name, "deleted")


ARCHIVE_SCRIPT = r"""#!/bin/sh
# archive.sh PATH FILE DEST... : copy a WAL file into each archive, idempotently.
# An existing identical copy is success (archive_mode=always: every HA node archives);
# an existing different copy is an error the archiver keeps reporting.
set -eu
src="$1"; name="$2"; shift 2
for dest in "$@"; do
  if [ -f "$dest/$name" ]; then
    if cmp -s "$src" "$dest/$name"; then continue; fi
    echo "archive.sh: $dest/$name exists with different content" >&2
    exit 1
  fi
  tmp="$dest/.$name.$$.tmp"
  cp "$src" "$tmp"
  sync "$tmp" 2>/dev/null || true
  mv "$tmp" "$dest/$name"
done
"""
