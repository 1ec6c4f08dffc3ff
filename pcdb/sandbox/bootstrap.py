"""Making the sandbox's servers: the root and its folders, TLS, configuration files, pg_hba and
pg_ident, initdb of the primary, clones of the standby and the replica, synchronous replication.
A server is made in ``<name>.building`` and renamed into place only when complete."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from psycopg import sql as psql

from pcdb import crash
from pcdb.changes import Change
from pcdb.errors import SandboxError
from pcdb.sandbox import proc
from pcdb.sandbox.core import HA_NODES, REPLICA, REPLICATION_USER, _free_port, _now
from pcdb.sandbox.node import Node, conf_line
from pcdb.sandbox.state import NodeInfo
from pcdb.scram import verifier
from pcdb.sql import query


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)


class NodeMaker:
    """The bootstrap part of :class:`~pcdb.sandbox.engine.Sandbox` (a mixin: it works on its state)."""

    def _standby_name(self) -> str:
        state = self.state
        return next((n for n in HA_NODES if state.role_of(n) == "standby"),
                    next(n for n in HA_NODES if state.role_of(n) != "primary"))

    def _prepare_root(self) -> None:
        fresh = not self.exists()
        if fresh:
            others = sorted(p.name for p in self.root.iterdir() if p.name != "state.lock") if self.root.exists() else []
            if others and not self._root_was_new:
                (self.root / "state.lock").unlink(missing_ok=True)  # the lock taken to look: not ours to leave
                raise SandboxError(f"{self.root} is not a sandbox (no state.json) and not empty ({', '.join(others[:5])}"
                                   f"{', ...' if len(others) > 5 else ''}); give the sandbox a new or empty folder "
                                   "(sandbox.root in the spec, or PCDB_SANDBOX_ROOT). Nothing was changed")
            self.state.root_created_by_pcdb = self._root_was_new or not self.root.exists()
        for folder in (self.root, self.root / "nodes", self.root / "restores", self.root / "bin",
                       *self.archive_dirs, self.replica_archive, *self.backup_dirs, self.tls_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._make_traversable(self.root.parent)
        if fresh or not self.state.created_at:
            self.state.created_at = _now()
            self.state.bindir = str(self.bindir)
        user = proc.server_user()
        for folder in (self.root / "nodes", self.root / "restores", *self.archive_dirs,
                       self.replica_archive, *self.backup_dirs, self.tls_dir, self.root / "bin"):
            if not user.is_self:  # what is inside is written by the servers themselves
                os.chown(folder, user.uid, user.gid)
        for folder in (*self.archive_dirs, self.replica_archive, *self.backup_dirs):
            os.chmod(folder, 0o700)   # WAL, base backups, archives of customer rows: the owner's only
        if self.state.root_created_by_pcdb is not False:
            # The server user only passes through the root to its own folders below (chowned
            # above): o+x, never o+r. When pcdb runs as the server user, nobody else needs in.
            os.chmod(self.root, 0o700 if user.is_self else 0o711)
        elif not self.root.stat().st_mode & 0o001 and not user.is_self:
            raise SandboxError(f"the server user '{user.name}' cannot enter {self.root} (mode "
                               f"{oct(self.root.stat().st_mode & 0o777)}); pcdb did not create that folder and "
                               f"does not change its mode: chmod o+x {self.root}, or choose a new folder")
        self._ensure_tls()
        self._ensure_scripts()
        repl = self.password(REPLICATION_USER)
        # The standbys connect as host=localhost hostaddr=127.0.0.1 (_primary_conninfo): the file is
        # matched by host; the 127.0.0.1 line serves a node made before that.
        proc.write_file(self.passfile, "".join(f"{host}:*:*:{REPLICATION_USER}:{repl}\n"
                                               for host in ("localhost", "127.0.0.1")), mode=0o600)
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

    @property
    def ca_key(self) -> Path:
        """The sandbox CA's private key: pcdb's (in its secrets folder), never the servers'."""
        return self.secrets_dir / "ca.key"

    def _ensure_tls(self) -> None:
        """A CA of the sandbox's own, and a server certificate it signs for localhost and
        127.0.0.1: clients verify the chain and the name (verify-full), as they do on Azure."""
        key, cert = self.tls_dir / "server.key", self.tls_dir / "server.crt"
        if cert.exists() and key.exists():
            return
        self.secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-days", "3650", "-subj", f"/CN=pcdb sandbox CA ({self.env.name})",
                 "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                 "-keyout", str(self.ca_key), "-out", str(self.ca_file))
        os.chmod(self.ca_key, 0o600)
        os.chmod(self.ca_file, 0o644)   # a CA certificate is public (clients verify with it); its key is 0600
        self.issue_certificate(["DNS:localhost", "IP:127.0.0.1"], key, cert)
        proc.chown_tree(self.tls_dir)

    def issue_certificate(self, names: list[str], key: Path, cert: Path, days: int = 825) -> None:
        """A server certificate for ``names`` (subjectAltName entries, e.g. DNS:localhost) signed by
        the sandbox's CA; the key 0600."""
        folder = Path(tempfile.mkdtemp(prefix="pcdb-cert-"))
        try:
            request, extensions = folder / "server.csr", folder / "server.ext"
            extensions.write_text(f"subjectAltName={','.join(names)}\nbasicConstraints=CA:FALSE\n"
                                  "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
            _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                     "-subj", f"/CN={names[0].split(':', 1)[1]}", "-keyout", str(key), "-out", str(request))
            os.chmod(key, 0o600)
            _openssl("x509", "-req", "-in", str(request), "-CA", str(self.ca_file), "-CAkey", str(self.ca_key),
                     "-CAcreateserial", "-CAserial", str(folder / "ca.srl"), "-days", str(days),
                     "-extfile", str(extensions), "-out", str(cert))
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _ensure_scripts(self) -> None:
        script = self.root / "bin" / "archive.sh"
        # Run only by the servers (their user owns it): nobody else reads or runs it.
        proc.write_file(script, ARCHIVE_SCRIPT, mode=0o700)

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
        """The standby's connection to its source. The certificate is checked against the name
        localhost (hostaddr says where to connect): libpq before 15 does not match an IP address
        against the certificate's subjectAltName, and a standby of 14 uses its own libpq."""
        count = len(HA_NODES) if role == "replica" else 1
        if role == "replica":  # follows whichever HA node is primary
            ports = ",".join(str(self.state.nodes[n].port) for n in HA_NODES)
            target = "target_session_attrs=read-write"
        else:
            ports, target = str(self.primary().port), ""
        hosts, addrs = ",".join(["localhost"] * count), ",".join(["127.0.0.1"] * count)
        return (f"host={hosts} hostaddr={addrs} port={ports} user={REPLICATION_USER} passfile={self.passfile} "
                f"sslmode=verify-full sslrootcert={self.ca_file} application_name={name} {target}").strip()

    def _allocate(self, name: str, role: str) -> Node:
        nodes = self.state.nodes
        if name not in nodes:
            port = self.spec.ports.get(name) or _free_port(self.state.port_taken())
            nodes[name] = NodeInfo(port=port, role=role, timeline=1)
            self.save()
        return self.node(name)

    def _ensure_primary(self, parameters: dict[str, str]) -> Change:
        primary_name = next((n for n in HA_NODES if self.state.role_of(n) == "primary"), HA_NODES[0])
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
        crash.point("create:building", node.name)
        return building

    def _initdb(self, node: Node, parameters: dict[str, str]) -> None:
        """initdb, the settings, and the admin and replication roles (single-user mode: no port
        is opened before the node has its own), then the rename that makes the node exist."""
        building = self._building(node)
        proc.run([node.prog("initdb"), "-D", str(building.data), "-U", self.admin_user, "-E", "UTF8",
                  "--locale=C.UTF-8", "--data-checksums", "--auth-local=trust",
                  "--auth-host=scram-sha-256", "-N"], timeout=120, what=f"initdb {node.name}")
        crash.point("create:initdb-done", node.name)
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
        crash.point("create:configured", node.name)
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
        source = (f"host=localhost hostaddr=127.0.0.1 port={primary.port} user={REPLICATION_USER} passfile={self.passfile} "
                  f"sslmode=verify-full sslrootcert={self.ca_file} application_name={node.name}")
        cmd = [node.prog("pg_basebackup"), "-D", str(building.data), "-X", "stream", "-c", "fast",
               "-d", source]
        if not self.spec.fsync:
            cmd.append("--no-sync")
        proc.run(cmd, timeout=600, what=f"base backup for {node.name}")
        crash.point("clone:copied", node.name)
        building.write_node_conf(self._node_conf(node, role))
        proc.write_file(building.data / "standby.signal", "", mode=0o600)
        os.replace(building.home, node.home)
        node.start(self.timeout)
        self._wait_streaming(primary, node.name)

    def _following(self, source: Node, name: str, sync: bool = False) -> bool:
        """``name`` streams from ``source`` now (synchronously, with ``sync``), on ``source``'s
        timeline. A node that cannot follow that timeline still shows as "streaming" for a moment
        each time its WAL receiver reconnects: its own timeline tells it apart."""
        with source.connect(self.admin_user) as conn:
            rows = conn.execute(query("sandbox.sql", "replication")).fetchall()
        if not any(r[0] == name and r[1] == "streaming" and (not sync or r[2] == "sync") for r in rows):
            return False
        theirs = self._timeline(self.node(name))
        return theirs is not None and theirs == self._timeline(source)

    def _wait_streaming(self, primary: Node, name: str, sync: bool = False) -> None:
        primary.wait(lambda: self._following(primary, name, sync), f"{name} streaming{' synchronously' if sync else ''}",
                     self.timeout)

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
