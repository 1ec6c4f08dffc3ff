"""The sandbox's backup store: base backups with their geo copies, retention, the WAL archive
and its gaps, manifests, and the partition and report archives kept beside the backups."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import psycopg

from pcdb import clock, wal
from pcdb.errors import SandboxError
from pcdb.private import audit, private_dir
from pcdb.sandbox import builds, proc
from pcdb.sandbox.core import _tree_size, exclusive
from pcdb.sql import query


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
    source: str | None = None      # the node it was taken of (the promoted replica's after a region failover)

    def as_dict(self) -> dict:
        return {"id": self.id, "started_at": self.started_at.isoformat(),
                "finished_at": self.finished_at.isoformat(), "size_bytes": self.size_bytes,
                "timeline": self.timeline, "kind": self.kind, "path": str(self.path), "source": self.source}

class BackupStore:
    """The backup part of :class:`~pcdb.sandbox.engine.Sandbox` (a mixin: it works on its state)."""

    # -- backups and point-in-time restore -------------------------------------------------

    @exclusive
    def take_backup(self, kind: str = "on-demand") -> Backup:
        """Take a base backup of the primary (plain format with manifest), copy it to the geo folder."""
        primary = self.primary()
        started = clock.now()
        backup_id = started.strftime("%Y%m%dT%H%M%S%fZ")
        target = self.backup_dirs[0] / backup_id
        source = psycopg.conninfo.make_conninfo(host=str(primary.run_dir), port=primary.port,
                                                user=self.admin_user)
        cmd = [primary.prog("pg_basebackup"), "-D", str(target), "-X", "stream", "-c", "fast",
               "-d", source, "--label", f"pcdb {kind} {backup_id}"]
        if not self.spec.fsync:
            cmd.append("--no-sync")
        proc.run(cmd, timeout=3600, what=f"base backup of {primary.name}")
        finished = clock.now()
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
                      meta["size_bytes"], meta["timeline"], meta["kind"], meta.get("source"))

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
        limit = (now or clock.now()) - retention
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
        """Copy ``path`` into ``reports/<year>/`` of both backup stores, read-only (0400 in 0700
        folders), named ``<stem>.<sha256[:12]><suffix>``; an identical copy already there is left
        as it is."""
        name = f"{path.stem}.{sha256[:12]}{path.suffix}"
        year = clock.now().strftime("%Y")
        placed = []
        for store in self.backup_dirs:
            folder = private_dir(store / "reports")
            folder = private_dir(folder / year)
            dest = folder / name
            if not dest.exists():
                tmp = folder / f".{name}.tmp"
                shutil.copyfile(path, tmp)
                os.chmod(tmp, 0o400)
                os.replace(tmp, dest)
            placed.append(dest)
        return str(placed[0])

    def archive_partition(self, path: Path, name: str, sha256: str) -> str:
        """A partition's dump into ``partitions/`` of both backup stores as ``<name>.dump``, its
        SHA-256 beside it, each 0400 in a 0700 folder. Write-once: an archive of that name with
        the same hash is left as it is; one with another hash is never written over.

        Raises:
            SandboxError: an archive of that name with other content exists.
        """
        placed = []
        for store in self.backup_dirs:
            folder = store / "partitions"
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(folder, 0o700)
            dest, digest = folder / f"{name}.dump", folder / f"{name}.dump.sha256"
            if dest.exists():
                kept = digest.read_text().split()[0] if digest.exists() else None
                if kept != sha256:
                    raise SandboxError(f"an archive {dest} with other content already exists; archives are "
                                       "write-once and pcdb never writes over one")
                placed.append(dest)
                continue
            for target, write in ((digest, lambda tmp: tmp.write_text(f"{sha256}  {name}.dump\n")),
                                  (dest, lambda tmp: shutil.copyfile(path, tmp))):
                tmp = folder / f".{target.name}.tmp"
                tmp.unlink(missing_ok=True)
                write(tmp)
                os.chmod(tmp, 0o400)
                os.replace(tmp, target)        # the dump last: a dump present is a dump whole
            placed.append(dest)
        return str(placed[0])

    def privacy_problems(self) -> list[str]:
        """Anything of the backup stores that others could read: the stores, the WAL archives,
        the partition archives, the report archives and the ledger's anchors."""
        places = [(folder, 0o700, None) for folder in (*self.archive_dirs, self.replica_archive, *self.backup_dirs)]
        for store in self.backup_dirs:
            places += [(store / "partitions", 0o700, 0o400), (store / "reports", 0o700, 0o400),
                       (store / "evidence", 0o700, 0o400)]
        return audit(places)

    def verify_backup(self, backup: Backup) -> tuple[bool, str]:
        """pg_verifybackup against the backup's manifest (checksums of every file, and its WAL).
        On a build of an older major (``builds``), pg_verifybackup is the machine's newer one: it
        checks the manifest and every file, but cannot parse the older WAL format; the restore
        test replays that WAL instead, and the result says so."""
        foreign = builds.is_build(self.bindir)
        result = proc.run([str(self.bindir / "pg_verifybackup"), "-q", *(["--no-parse-wal"] if foreign else []),
                           str(backup.path)], timeout=3600, what=f"pg_verifybackup {backup.id}", check=False)
        output = (result.stderr or result.stdout).strip()
        said = output.splitlines()[-1] if output else "backup successfully verified"
        if foreign and result.returncode == 0:
            said += (f" (its WAL not parsed: this pg_verifybackup does not read PostgreSQL "
                     f"{proc.binaries_version(self.bindir).split('.')[0]}'s WAL; the restore test replays it)")
        return result.returncode == 0, said

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
        names = {p.name for folder in self.live_archives() for p in folder.iterdir()}
        return wal.missing_segments(sorted(names), first, self.wal_segment_size())

    def live_archives(self) -> tuple[Path, ...]:
        """Where the service's WAL is, in the order a restore reads it: the HA archive; after a
        real region failover, then the promoted replica's own (its lineage, from the fork on: the
        failback copies it into the HA archive). A drill's promoted lineage is never read: it is
        not the service's history."""
        if self.state.application == "replica":
            return self.archive_dirs[0], self.replica_archive
        return (self.archive_dirs[0],)

    def restore_command(self) -> str:
        """A restored server's restore_command over :meth:`live_archives`."""
        return " || ".join(f"cp '{folder}/%f' '%p'" for folder in self.live_archives())

    def wal_segment_size(self) -> int:
        """The primary's wal_segment_size in bytes (initdb --wal-segsize; 16 MB by default)."""
        try:
            with self.primary().connect(self.admin_user) as conn:
                return int(conn.execute(query("sandbox.sql", "wal_segment_size")).fetchone()[0])
        except SandboxError:
            return wal.DEFAULT_SEGMENT_SIZE

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
        # the HA pair archives into both copies; a promoted replica into its own archive
        archives = (self.replica_archive,) if self.state.application == "replica" else self.archive_dirs
        primary.wait(lambda: all((d / walfile).exists() for d in archives),
                     f"archiving of {walfile} ({', '.join(d.name for d in archives)})", self.timeout)
        return walfile
