"""Major version upgrades: a restored copy (the rehearsal), and the topology itself.

pg_upgrade in copy mode: the old data folder stays whole beside the new one (``data.<major>``),
so the way back is to stop, put it back and run the old binaries. The topology's upgrade writes
its intent before it stops anything, and each step after; the next run (or `sandbox up`)
finishes it: before the new folder took the old one's place, the old folder is intact and the
upgrade starts again; after, the standby and the replica are copied afresh from the upgraded
primary, as they would be anyway.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from pcdb import clock, crash
from pcdb.errors import SandboxError
from pcdb.sandbox import proc
from pcdb.sandbox.core import HA_NODES, REPLICA, _free_port, _now, exclusive
from pcdb.sandbox.node import Node

# What a data folder holds of the sandbox's own configuration: taken into the upgraded one.
CONFIG_FILES = ("postgresql.conf", "postgresql.auto.conf", "pg_hba.conf", "pg_ident.conf", "node.conf")


def _major(version: str) -> int:
    return int(version.split(".")[0])


class Upgrades:
    """The upgrade part of :class:`~pcdb.sandbox.engine.Sandbox` (a mixin: it works on its state)."""

    def _target_bindir(self, major: str):
        found = proc.bindir_of_major(str(major))
        if found is None:
            from pcdb.sandbox import builds

            raise SandboxError(builds.why_not(str(major)))
        return found

    def _pg_upgrade(self, old: Node, new_bindir, major: str, stop=None) -> dict[str, float]:
        """pg_upgrade of ``old`` into ``<home>/data.upgrading`` (initdb'd as the sandbox makes a
        node, --check first), with the configuration taken over. ``old`` is stopped, or ``stop()``
        stops it between the check and the upgrade. The old folder is left as it was; the caller
        swaps the folders."""
        upgrading = old.home / "data.upgrading"
        shutil.rmtree(upgrading, ignore_errors=True)      # a killed upgrade's half-made cluster
        work = old.home / "pg_upgrade"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(mode=0o700)
        proc.chown_tree(work)
        seconds: dict[str, float] = {}
        started = time.monotonic()
        proc.run([str(new_bindir / "initdb"), "-D", str(upgrading), "-U", self.admin_user, "-E", "UTF8",
                  "--locale=C.UTF-8", "--data-checksums", "--auth-local=trust", "--auth-host=scram-sha-256", "-N"],
                 timeout=120, what=f"initdb {major} for {old.name}")
        seconds["initdb"] = round(time.monotonic() - started, 3)
        # The new cluster runs on a port of its own while pg_upgrade checks: with ``stop`` the old
        # server is still running then (pg_upgrade's live check), and it is stopped only for the
        # upgrade itself, so initdb and the check are not part of the downtime.
        command = [str(new_bindir / "pg_upgrade"), "-b", str(old.bindir), "-B", str(new_bindir), "-d", str(old.data),
                   "-D", str(upgrading), "-U", self.admin_user, "-s", str(old.run_dir), "-p", str(old.port),
                   "-P", str(_free_port(self.state.port_taken() | {old.port}))]
        for part, extra in (("check", ["--check"]), ("upgrade", [])):
            if not extra and stop is not None:
                stop()
            started = time.monotonic()
            proc.run(command + extra, timeout=3600, what=f"pg_upgrade{' --check' if extra else ''} of {old.name} "
                     f"to {major}", output=work / "pg_upgrade.log", cwd=work)
            seconds[part] = round(time.monotonic() - started, 3)
        for conf in CONFIG_FILES:
            if (old.data / conf).exists():
                shutil.copy2(old.data / conf, upgrading / conf)
        proc.chown_tree(upgrading)
        return seconds

    @staticmethod
    def _swap(old: Node, old_version: str) -> None:
        """The upgraded folder takes the old one's place; the old one is kept as data.<major>."""
        kept = old.home / f"data.{_major(old_version)}"
        if (old.home / "data.upgrading").exists():
            shutil.rmtree(kept, ignore_errors=True)
            os.replace(old.data, kept)
            os.replace(old.home / "data.upgrading", old.data)

    def _new_archives(self, old_major: int) -> None:
        """The WAL archives start again with the new major: pg_upgrade puts the new cluster on
        timeline 1, and the old cluster's timeline history files would make a new standby follow
        a timeline that is not the new cluster's. The old archives are kept beside, as
        ``<archive>.<old major>``, for the rollback and the old backups."""
        for folder in (*self.archive_dirs, self.replica_archive):
            kept = folder.with_name(f"{folder.name}.{old_major}")
            if folder.exists() and not kept.exists():
                os.replace(folder, kept)
            folder.mkdir(mode=0o700, exist_ok=True)
            proc.chown_tree(folder)

    @exclusive
    def upgrade_restored(self, name: str, major: str) -> dict:
        """Upgrade the restored server ``name`` to ``major`` and start it (the rehearsal). Returns
        {from, to, seconds: {initdb, check, upgrade, start}, log}."""
        if name not in self.state.restores:
            raise SandboxError(f"{name} is not a restored server of this sandbox: only a copy is upgraded here")
        new_bindir = self._target_bindir(major)
        old = self.node(name)
        old_version = proc.binaries_version(old.bindir)
        if _major(old_version) >= int(major):
            raise SandboxError(f"{name} runs PostgreSQL {old_version}: an upgrade goes to a newer major, not {major}")
        old.stop("fast", timeout=60)
        seconds = self._pg_upgrade(old, new_bindir, str(major))
        self._swap(old, old_version)
        self.state.restores[name].bindir = str(new_bindir)
        self._event("upgraded", name=name, from_version=old_version, to_major=str(major))
        self.save()
        started = time.monotonic()
        Node(name, old.home, old.port, new_bindir).start(self.timeout)
        seconds["start"] = round(time.monotonic() - started, 3)
        return {"from": old_version, "to": proc.binaries_version(new_bindir), "seconds": seconds,
                "log": str(old.home / "pg_upgrade" / "pg_upgrade.log")}

    @exclusive
    def upgrade(self, major: str) -> dict:
        """Upgrade the topology to ``major``: the primary with pg_upgrade, then the synchronous
        standby and the replica copied afresh from it, then a first base backup on ``major``.
        Intent first; an interrupted upgrade is finished by the next call. Returns what was done
        and the seconds of each part; ``downtime_seconds`` runs from the primary's stop to its start."""
        intent = self.state.upgrade
        resumed = intent is not None
        if intent and intent["to"] != str(major):
            raise SandboxError(f"an upgrade to {intent['to']} is under way (since {intent['since']}): finish it first "
                               f"(pcdb upgrade --to {intent['to']})")
        if intent is None:
            new_bindir = self._target_bindir(major)
            primary = self.primary()
            old_version = proc.binaries_version(self.bindir)
            if _major(old_version) >= int(major):
                raise SandboxError(f"the sandbox runs PostgreSQL {old_version}: an upgrade goes to a newer major, "
                                   f"not {major}")
            intent = {"to": str(major), "from_version": old_version, "from_bindir": str(self.bindir),
                      "to_bindir": str(new_bindir), "primary": primary.name, "step": "stopping", "since": _now(),
                      "rollback": f"stop every node, move {primary.home / ('data.' + str(_major(old_version)))} back "
                                  f"to {primary.data}, set the state's bindir to {self.bindir}, then `sandbox up`"}
            self.state.upgrade = intent
            self.save()
            crash.point("upgrade:intent-saved")
        self._event("upgrade-begun", to=intent["to"], from_version=intent["from_version"], resumed=resumed)
        seconds: dict[str, float] = {}
        old_bindir, new_bindir = Path(intent["from_bindir"]), Path(intent["to_bindir"])
        primary = Node(intent["primary"], self.node(intent["primary"]).home, self.state.nodes[intent["primary"]].port,
                       old_bindir)
        down_from = None
        if intent["step"] == "stopping":
            stopped: dict[str, float] = {}

            def stop() -> None:
                for name in (REPLICA, *[n for n in HA_NODES if n != primary.name]):
                    self.node(name).stop("fast", timeout=60)
                stopped["at"] = time.monotonic()
                primary.stop("fast", timeout=120)
                crash.point("upgrade:stopped")
            # initdb and pg_upgrade --check while the old primary still serves (a resumed
            # upgrade whose primary is already stopped checks it stopped).
            seconds |= self._pg_upgrade(primary, new_bindir, intent["to"], stop=stop)
            down_from = stopped["at"]
            crash.point("upgrade:upgraded")
            intent["step"] = "swapping"
            self.save()
        if intent["step"] == "swapping":
            self._swap(primary, intent["from_version"])
            self._new_archives(_major(intent["from_version"]))
            self.state.bindir = str(new_bindir)
            self._bindir = None
            intent["step"] = "rebuilding"
            self.save()
            crash.point("upgrade:swapped")
        upgraded = self.node(primary.name)
        started = time.monotonic()
        if not upgraded.is_running():
            upgraded.start(self.timeout)
        seconds["start"] = round(time.monotonic() - started, 3)
        downtime = round(time.monotonic() - down_from, 3) if down_from is not None else None
        started = time.monotonic()
        standby = next(n for n in HA_NODES if n != primary.name)
        self._clone(self.node(standby), "standby")
        upgraded.write_node_conf(self._node_conf(upgraded, "primary", sync_with=standby))
        upgraded.reload()
        self._wait_streaming(upgraded, standby, sync=True)
        crash.point("upgrade:standby")
        self._clone(self.node(REPLICA), "replica")
        seconds["rebuild"] = round(time.monotonic() - started, 3)
        for info in self.state.nodes.values():
            info.timeline = self._timeline(upgraded)
        started = time.monotonic()
        backup = self.take_backup("automatic")
        seconds["first_backup"] = round(time.monotonic() - started, 3)
        self.state.upgrade = None
        done = {"from": intent["from_version"], "to": proc.binaries_version(new_bindir), "seconds": seconds,
                "downtime_seconds": downtime, "first_backup": backup.id, "resumed": resumed,
                "rollback": intent["rollback"], "at": clock.now().isoformat()}
        self._event("upgraded", to=done["to"], from_version=done["from"], downtime_seconds=downtime)
        self.save()
        return done
