"""Restored (throw-away) servers: point-in-time restore into a new server, registered in the
state before anything is made, amcheck of it, and its deletion."""

from __future__ import annotations

import shutil
from datetime import datetime

from pcdb import clock, crash
from pcdb.changes import Change
from pcdb.errors import SandboxError
from pcdb.sandbox import proc
from pcdb.sandbox.core import _free_port, _now, exclusive
from pcdb.sandbox.node import Node
from pcdb.sandbox.state import RestoreInfo


class Restores:
    """The restore part of :class:`~pcdb.sandbox.engine.Sandbox` (a mixin: it works on its state)."""

    def amcheck(self, name: str, dbname: str, jobs: int = 1, heapallindexed: bool = False) -> tuple[bool, str]:
        """pg_amcheck of every table and index of ``dbname`` on server ``name`` (heap + btree, the
        btree against its heap too with ``heapallindexed``), with ``jobs`` connections at once."""
        node = self.node(name)
        result = proc.run([node.prog("pg_amcheck"), "-h", str(node.run_dir), "-p", str(node.port),
                           "-U", self.admin_user, "--install-missing", *(["--heapallindexed"] if heapallindexed else []),
                           "--jobs", str(jobs),
                           "-d", dbname],
                          timeout=3600, what=f"pg_amcheck on {name}", check=False)
        output = (result.stdout + result.stderr).strip()
        return result.returncode == 0, output.splitlines()[-1] if output else "no corruption found"

    @exclusive
    def restore(self, target_time: datetime, name: str) -> Node:
        """Restore the latest backup before ``target_time`` into a new server ``name`` and replay
        the archive up to that time; the server is then promoted and running.

        Raises:
            SandboxError: no backup before the target, or recovery did not reach the target.
        """
        if target_time.tzinfo is None:
            raise SandboxError("the restore target time needs a time zone (e.g. 2026-11-26T10:00:00+09:00)")
        if name in self.state.nodes or name in self.state.restores:
            raise SandboxError(f"a server named {name!r} already exists in the sandbox; delete it first")
        major = proc.binaries_version(self.bindir).split(".")[0]
        before = [b for b in self.list_backups() if b.finished_at <= target_time]
        # After a major upgrade the older backups are of the old major: these binaries cannot
        # restore them (the upgrade's rollback can: docs/operations/upgrade.md).
        candidates = [b for b in before if _backup_major(b.path) in (None, major)]
        if not candidates:
            if before:
                raise SandboxError(f"no base backup of PostgreSQL {major} finished before {target_time.isoformat()}: "
                                   "the earlier ones are of the major before the upgrade; restore them with that "
                                   "major's binaries (the upgrade's rollback), or choose a later time")
            raise SandboxError(f"no base backup finished before {target_time.isoformat()}; "
                               "take one (pcdb backup) or choose a later time")
        backup = candidates[-1]
        if target_time < clock.now():
            self.seal_wal()
        self.state.restores[name] = RestoreInfo(port=_free_port(self.state.port_taken()), backup=backup.id,
                                                target_time=target_time.isoformat(), created_at=_now())
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
            **self._node_conf(node, "primary"), "archive_mode": "off", "restore_command": self.restore_command(),
            "recovery_target_time": target_time.isoformat(), "recovery_target_action": "promote",
            "recovery_target_inclusive": "off",
        })
        proc.write_file(node.data / "recovery.signal", "", mode=0o600)
        node.start(self.timeout)
        crash.point("restore:started")
        # Recovery replays every WAL record since the base backup: seconds to hours, so a look
        # every 50 ms (each a statement in the restored server's log), not every 5.
        node.wait_writable(self.admin_user, f"recovery to {target_time.isoformat()}", max(self.timeout, 600),
                           interval=0.05)
        self._event("restored", name=name, backup=backup.id, target_time=target_time.isoformat())
        self.save()
        return node

    @exclusive
    def delete_server(self, name: str) -> Change:
        """Stop and remove a restored (throw-away) server; unchanged when it does not exist."""
        if name in self.state.nodes:
            raise SandboxError(f"{name} is part of the HA topology; only restored servers can be deleted")
        if name not in self.state.restores:
            return Change("server", name, "unchanged", notes=("does not exist",))
        node = self.node(name)
        node.stop("immediate", timeout=30)
        shutil.rmtree(node.home, ignore_errors=True)
        del self.state.restores[name]
        self._event("deleted", name=name)
        self.save()
        return Change("server", name, "deleted")


def _backup_major(path) -> str | None:
    """The major a base backup was taken of (its PG_VERSION), None when it cannot be read."""
    try:
        return (path / "PG_VERSION").read_text().strip()
    except OSError:
        return None
