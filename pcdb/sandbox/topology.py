"""Changing the sandbox's topology: failover (with its intent written first), resolving an
interrupted one, rejoin of a former primary (pg_rewind, resumable), the replica's promotion,
stall and rebuild, and the region stop/start of the region drill."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import psycopg

from pcdb import crash, wal
from pcdb.changes import Change
from pcdb.errors import SandboxError
from pcdb.sandbox import proc
from pcdb.sandbox.core import HA_NODES, REPLICA, _now, exclusive
from pcdb.sandbox.node import Node
from pcdb.sandbox.state import FailoverIntent, RejoinStep
from pcdb.sql import query


class Topology:
    """The topology part of :class:`~pcdb.sandbox.engine.Sandbox` (a mixin: it works on its state)."""

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
        self.state.intent = FailoverIntent(old=old.name, new=new.name, mode=mode, since=_now())
        self._event("failover-begin", mode=mode, old_primary=old.name, new_primary=new.name)
        self.save()
        crash.point("failover:intent-saved")
        old.stop("fast" if mode == "planned" else "immediate", timeout=60)
        crash.point("failover:old-stopped")
        new.promote(self.timeout, self.admin_user)
        crash.point("failover:promoted")
        self._take_over(old.name, new.name)
        promoted = time.monotonic() - started
        crash.point("failover:roles-saved")
        how = self.rejoin(old.name)
        self.wait_replica_following()
        self.state.intent = None
        self._event("failover-end", mode=mode, new_primary=new.name, seconds=round(promoted, 3), rejoined=how)
        self.save()
        return {"mode": mode, "old_primary": old.name, "new_primary": new.name,
                "promote_seconds": promoted, "total_seconds": time.monotonic() - started,
                "timeline": self._timeline(new), "rejoined": how}

    def _take_over(self, old: str, new: str) -> None:
        """Record the promoted node as the primary. Until the old primary rejoins, the new one
        must not wait for a standby that is not there (no synchronous_standby_names)."""
        node = self.node(new)
        self.state.nodes[new].role = "primary"
        self.state.nodes[old].role = "standby"
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
            try:
                with node.connect(self.admin_user, timeout=5) as conn:
                    return not conn.execute("SELECT pg_catalog.pg_is_in_recovery()").fetchone()[0]
            except SandboxError:
                if node.is_running():
                    raise
                # it died between the two looks (killed, not yet reaped when pg_ctl looked): its files say
        return not (node.data / "standby.signal").exists()

    @exclusive
    def resolve_intent(self) -> list[str]:
        """Finish or undo a failover that a killed process left halfway; nothing to do when none.

        Promoted standby: it is the primary; the old primary is fenced (stopped) and rewound into
        its synchronous standby. Not promoted: the old primary keeps its role and is started
        again; no write was ever taken elsewhere. Returns what was done (for reports)."""
        intent = self.state.intent
        if not intent:
            pending = self.state.rejoin
            if pending:  # a rejoin of its own (not inside a failover) was killed: finish it
                self.rejoin(pending.node)
                return [f"finished the rejoin of {pending.node} interrupted since {pending.since}"]
            return []
        if intent.op == "failback":
            return [self._resolve_failback(intent)]
        if intent.op != "failover":
            raise SandboxError(f"{self.state_file} records an interrupted {intent.op!r} this pcdb does "
                               "not know how to finish")
        old, new = self.node(intent.old), self.node(intent.new)
        if self._promoted(new):
            old.stop("immediate", timeout=30)       # fence: it must never take writes again
            self._take_over(old.name, new.name)
            if not new.is_running():
                new.start(self.timeout)
            how = self.rejoin(old.name)
            self.wait_replica_following()
            done = (f"finished the failover from {old.name} to {new.name} interrupted since {intent.since}: "
                    f"{old.name} {how} and rejoined as synchronous standby")
        else:
            self.state.nodes[old.name].role = "primary"
            self.state.nodes[new.name].role = "standby"
            self.save()
            if not old.is_running():
                old.start(self.timeout)
            done = (f"undid the failover from {old.name} to {new.name} interrupted since {intent.since} "
                    f"before {new.name} was promoted: {old.name} stays the primary")
        self.state.intent = None
        self._event("intent-resolved", detail=done)
        self.save()
        return [done]

    @exclusive
    def rejoin(self, name: str) -> str:
        """Rewind a stopped former primary onto the current primary's timeline, start it as the
        synchronous standby, and turn synchronous replication back on; returns what was done
        ("rewound", or "copied afresh (why)"). The read replica is rejoined the same way, as the
        asynchronous replica, when a forced failover left it past the new timeline's fork.

        pg_rewind fetches the WAL it needs that the node no longer has from the WAL archive
        (--restore-target-wal): a burst that recycled the node's own segments does not stop it.
        When the rewind fails all the same, the node is copied afresh (a base backup of the
        primary) instead of leaving the primary without a synchronous copy; pg_rewind's own
        output is kept in <node>/pg_rewind.log, the file the message names.

        Resumable: the step reached is kept in the state. A node killed during pg_rewind is in no
        known state (pg_rewind's own documentation), so it is copied afresh instead; a node
        rewound but not yet started is started, never rewound twice."""
        pending = self.state.rejoin
        if pending and pending.node != name:   # one rejoin at a time: finish the interrupted one first
            self.rejoin(pending.node)
        role = "replica" if name == REPLICA else "standby"
        primary, node = self.primary(), self.node(name)
        # A standby (the failback's case) stops cleanly, "shut down in recovery", and pg_rewind is
        # told not to recover it first: its single-user recovery cannot run a standby.
        standby = (node.data / "standby.signal").exists() and node.is_running()
        node.stop("fast" if standby else "immediate", timeout=30)
        earlier = self.state.rejoin if self.state.rejoin and self.state.rejoin.node == name else None
        how = "rewound"
        if earlier and earlier.step == "rewinding":
            how = "copied afresh (a pg_rewind of it was interrupted)"
            self._event("rejoin-recloned", node=name, reason="a pg_rewind of it was interrupted")
            self._clone(node, role)
        elif not Path(node.prog("pg_rewind")).exists():
            # A build of another major than the machine's (pcdb/sandbox/builds.py) has no pg_rewind.
            how = f"copied afresh (no pg_rewind for PostgreSQL {proc.binaries_version(node.bindir)} here)"
            self._event("rejoin-recloned", node=name, reason=f"{node.bindir} has no pg_rewind")
            self._clone(node, role)
        else:
            if not earlier:
                self.state.rejoin = RejoinStep(node=name, step="rewinding", since=_now())
                self.save()
                crash.point("rejoin:rewinding")
                with primary.connect(self.admin_user) as conn:
                    conn.execute("CHECKPOINT")  # pg_rewind reads the timeline from the control file
                source = psycopg.conninfo.make_conninfo(host=str(primary.run_dir), port=primary.port,
                                                        user=self.admin_user, dbname="postgres")
                rewind_log = node.home / "pg_rewind.log"
                try:
                    proc.run([node.prog("pg_rewind"), "-D", str(node.data), f"--source-server={source}",
                              "--restore-target-wal", *(["--no-ensure-shutdown"] if standby else [])],
                             timeout=600, what=f"pg_rewind {name}", output=rewind_log)
                except SandboxError as exc:
                    how = f"copied afresh (pg_rewind could not rewind it: {exc})"
                    self._event("rejoin-recloned", node=name, reason=f"pg_rewind failed; its output: {rewind_log}",
                                detail=str(exc))
                    self.state.rejoin.step = "rewinding"
                    self.save()
                    kept = rewind_log.read_text() if rewind_log.exists() else ""
                    self._clone(node, role)
                    proc.write_file(rewind_log, kept, mode=0o600)   # the evidence survives the fresh copy
                else:
                    # Not the backup_label pg_rewind wrote: it starts the node's replay at the last
                    # common checkpoint. Without it the node replays from the source's latest
                    # checkpoint (taken just above) and misses what the source wrote since they
                    # diverged, where the rewind copied no block: a table's catalog rows, say.
                    (node.data / "recovery.signal").unlink(missing_ok=True)
                    # pg_rewind copied the source's node.conf: the node's own goes back before anything
                    node.write_node_conf(self._node_conf(node, role))
                    proc.write_file(node.data / "standby.signal", "", mode=0o600)
                    self.state.rejoin.step = "rewound"
                    self.save()
                    crash.point("rejoin:rewound")
            if how == "rewound":
                node.start(self.timeout)
                self._wait_streaming(primary, name)
        crash.point("rejoin:streaming")
        if role == "standby":
            primary.write_node_conf(self._node_conf(primary, "primary", sync_with=name))
            primary.reload()
            self._wait_streaming(primary, name, sync=True)
        for n, info in self.state.nodes.items():
            info.timeline = self._timeline(self.node(n))
        self.state.rejoin = None
        self._event("rejoined", node=name, how=how)
        self.save()
        return how

    @exclusive
    def heal_standby(self, name: str) -> str:
        """Bring the primary's synchronous copy back: finish an interrupted failover or rejoin;
        a standby that streams gets synchronous replication on again; one that does not is
        rejoined (rewound, or copied afresh). Returns what was done."""
        finished = self.resolve_intent()
        primary = self.primary()
        if self._following(primary, name, sync=True):
            return f"standby {name} is the synchronous copy again ({'; '.join(finished) or 'it had caught up'})"
        if self._following(primary, name):
            self._ensure_sync()
            return f"standby {name} streams again: synchronous replication turned back on"
        how = self.rejoin(name)
        return f"standby {name} {how} and rejoined as the synchronous standby"

    def wait_replica_following(self) -> None:
        """Wait until the read replica streams from the current primary (when it is a replica).

        A forced failover can leave the asynchronous replica *past* the point where the promoted
        standby's timeline forks: it received WAL from the killed primary that the synchronous
        standby had not (a commit nobody was told of). Such a replica can never follow the new
        timeline; it is rewound onto it (or copied afresh), as a former primary is."""
        if self.state.role_of(REPLICA) != "replica":
            return
        if self.state.rejoin and self.state.rejoin.node == REPLICA:
            self.rejoin(REPLICA)                   # its repair was interrupted: finish it
        elif not self.node(REPLICA).is_running():
            return
        else:
            primary = self.primary()
            why = self._diverged(primary, self.node(REPLICA))
            if why:
                self._event("replica-diverged", node=REPLICA, detail=why)
                self.rejoin(REPLICA)
            else:
                self._wait_streaming(primary, REPLICA)
        self.state.nodes[REPLICA].timeline = self._timeline(self.node(REPLICA))

    def _diverged(self, primary: Node, node: Node) -> str | None:
        """Why ``node`` (in recovery) cannot follow ``primary``'s timeline, or None when it can:
        it went past the point where its timeline ends in the primary's timeline history."""
        ours, theirs = self._timeline(primary), self._timeline(node)
        if ours is None or theirs is None or ours == theirs:
            return None
        with node.connect(self.admin_user, timeout=5) as conn:
            reached = conn.execute(query("sandbox.sql", "recovery_point")).fetchone()[0]
        history = primary.data / "pg_wal" / f"{ours:08X}.history"
        ends = {}
        if history.exists():
            for line in history.read_text().splitlines():
                fields = line.split()
                if len(fields) >= 2 and fields[0].isdigit():
                    ends[int(fields[0])] = fields[1]
        if theirs not in ends:
            return (f"{node.name} is on timeline {theirs}, which is not in the history of "
                    f"{primary.name}'s timeline {ours}")
        if reached and wal.lsn(reached) > wal.lsn(ends[theirs]):
            return (f"{node.name} reached {reached} on timeline {theirs}, past where timeline {theirs} "
                    f"ends in {primary.name}'s history ({ends[theirs]}): it holds WAL the promoted "
                    "standby never had")
        return None

    def replica_diverged(self) -> bool:
        """The replica was promoted, or its link cut, by a drill that did not finish. A replica a
        real region failover promoted is the service's primary: not a drill's leftover."""
        if REPLICA not in self.state.nodes or self.state.application == "replica" \
                or self.state.replica_promotion == "real":
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
        """Start the HA pair again (the primary region is back). After a real region failover the
        nodes come back as they were, as Azure's servers would: nothing points at them."""
        return self.ensure_ha()

    # -- real region failover and failback (#16) ------------------------------------------

    @exclusive
    def switch_application(self, to: str) -> bool:
        """Point the application's record (the sandbox's stand-in for the private DNS record) at
        the HA pair ("primary") or at the promoted replica ("replica"); False when it already did."""
        if to not in ("primary", "replica"):
            raise SandboxError(f"the application's record points at primary or replica, not {to!r}")
        if self.state.application == to:
            return False
        if to == "replica" and self.role(REPLICA) != "promoted":
            raise SandboxError("the application cannot point at the replica while it is a read-only replica: "
                               "promote it first")
        if to == "primary" and self.state.application == "replica":
            raise SandboxError("the application points at the promoted replica, which holds the service's writes: "
                               "fail back with `pcdb failback region`, never by pointing the record back")
        self.state.application = to
        self._event("application-switched", to=to)
        self.save()
        return True

    def region_missing(self) -> list[str]:
        """The primary region's servers that are not running (the region is back when none)."""
        return [f"{name} (port {self.state.nodes[name].port})" for name in HA_NODES
                if name in self.state.nodes and not self.node(name).is_running()]

    @exclusive
    def reverse_replication(self) -> list[Change]:
        """Failback, first half: the primary region's servers, copied afresh from the promoted
        replica, follow it (the first HA node synchronously). The writes the old primary took
        after the replica's last replayed record go with its old data: the region failover's
        measured RPO. Resumable: a node already following is left as it is.

        Copied afresh, as Azure makes the failback's server a new replica of the promoted one:
        the rewind this did before lost the promoted replica's writes on a diverged node while
        rejoin() deleted pg_rewind's backup_label (fixed there; both cases are in
        tests/integration/test_sandbox_operations.py)."""
        if self.state.application != "replica":
            raise SandboxError("there is no region failover to fail back from: the application points at the HA pair")
        missing = self.region_missing()
        if missing:
            raise SandboxError(f"the primary region is still down: {', '.join(missing)} not running. Fail back once "
                               "the region is back (sandbox: `pcdb sandbox region up`)")
        source, changes = self.node(REPLICA), []
        for name in reversed(HA_NODES):  # the last one rejoined is the synchronous standby
            if self.state.nodes[name].role == "standby" and self._following(source, name):
                changes.append(Change("replication", f"{REPLICA}->{name}", "unchanged", notes=("streaming",)))
                continue
            self.state.nodes[name].role = "standby"
            self.save()
            crash.point("failback:rejoining")
            node = self.node(name)
            node.stop("immediate", timeout=30)
            self._clone(node, "standby")      # from the primary: the promoted replica
            changes.append(Change("replication", f"{REPLICA}->{name}", "created",
                                  notes=(f"{name} copied afresh from the promoted replica and streaming",)))
        first = HA_NODES[0]
        if not self._following(source, first, sync=True):
            source.write_node_conf({**self._node_conf(source, "primary", sync_with=first), "primary_conninfo": ""})
            source.reload()
            self._wait_streaming(source, first, sync=True)
        self._event("replication-reversed", sync=first)
        self.save()
        return changes

    @exclusive
    def switch_back(self) -> dict:
        """Failback, second half: a planned switch from the promoted replica to the HA pair.

        The promoted replica shuts down cleanly (every WAL record reaches the synchronous HA node
        first), that node is promoted, the application's record points at the HA pair again, the
        other HA node rejoins as its synchronous standby and the replica is rebuilt from the new
        primary. The intent is written first: a kill leaves a record ``resolve_intent`` acts on."""
        if self.state.application != "replica":
            raise SandboxError("there is no region failover to fail back from: the application points at the HA pair")
        old, new = self.node(REPLICA), self.node(HA_NODES[0])
        if self.state.nodes[new.name].role != "standby":
            raise SandboxError(f"{new.name} does not follow {REPLICA}: run the failback's first half (the replication "
                               "in the other direction) first")
        self._wait_streaming(old, new.name, sync=True)   # just restarted, it may take a moment to reconnect
        started = time.monotonic()
        self.state.intent = FailoverIntent(old=REPLICA, new=new.name, mode="planned", since=_now(), op="failback")
        self._event("failback-begin", old_primary=REPLICA, new_primary=new.name)
        self.save()
        crash.point("failback:intent-saved")
        # Every completed segment of the promoted lineage archived before it stops: they join the
        # HA archive below, so a point-in-time restore can cross the failed-over days.
        with old.connect(self.admin_user) as conn:
            conn.execute(query("sandbox.sql", "force_commit"))
            walfile = conn.execute(query("sandbox.sql", "switch_wal")).fetchone()[0]
        old.wait(lambda: (self.replica_archive / walfile).exists(), f"archiving of {walfile} by {REPLICA}", self.timeout)
        old.stop("fast", timeout=60)
        crash.point("failback:old-stopped")
        new.promote(self.timeout, self.admin_user)
        crash.point("failback:promoted")
        promoted = time.monotonic() - started
        self._finish_failback(new.name)
        self._event("failback-end", new_primary=new.name, seconds=round(promoted, 3))
        self.save()
        return {"mode": "planned", "old_primary": REPLICA, "new_primary": new.name, "promote_seconds": promoted,
                "total_seconds": time.monotonic() - started, "timeline": self._timeline(new)}

    def _finish_failback(self, new: str) -> None:
        other = next(n for n in HA_NODES if n != new)
        self.state.nodes[new].role, self.state.nodes[other].role = "primary", "standby"
        self.state.application = "primary"
        node = self.node(new)
        node.write_node_conf(self._node_conf(node, "primary"))
        node.reload()
        self.save()
        self.rejoin(other)
        # The promoted replica's WAL is the service's history now: the HA archive keeps it, so a
        # point-in-time restore across the failed-over days finds every segment.
        for archive in self.archive_dirs:
            for segment in self.replica_archive.iterdir():
                if not (archive / segment.name).exists():
                    # As the server's user: a copy only root can read breaks every later restore.
                    shutil.copy2(segment, archive / segment.name)
                    user = proc.server_user()
                    if not user.is_self:
                        os.chown(archive / segment.name, user.uid, user.gid)
        self.rebuild_replica()
        self.state.intent = None
        self.save()

    def _resolve_failback(self, intent: FailoverIntent) -> str:
        new = self.node(intent.new)
        if self._promoted(new):
            if not new.is_running():
                new.start(self.timeout)
            self._finish_failback(new.name)
            done = f"finished the failback to {new.name} interrupted since {intent.since}"
        else:
            self.state.intent = None
            self.save()
            old = self.node(REPLICA)
            if not old.is_running():
                old.start(self.timeout)
            done = (f"undid the failback to {new.name} interrupted since {intent.since} before it was promoted: "
                    f"{REPLICA} stays the primary and the application still points at it")
        self._event("intent-resolved", detail=done)
        self.save()
        return done

    @exclusive
    def promote_replica(self, by: str | None = None) -> dict:
        """Promote the read replica to a standalone primary (the region failover, R-DR-2); ``by``
        says whose promotion it is ("real", or a drill's id)."""
        replica = self.node(REPLICA)
        if self.role(REPLICA) == "promoted":
            return {"name": REPLICA, "action": "unchanged", "timeline": self._timeline(replica)}
        started = time.monotonic()
        replica.promote(self.timeout, self.admin_user)
        replica.write_node_conf({**self._node_conf(replica, "primary"), "primary_conninfo": ""})
        replica.reload()
        self.state.nodes[REPLICA].role = "promoted"
        self.state.nodes[REPLICA].timeline = self._timeline(replica)
        self.state.replica_promotion = by
        self._event("replica-promoted", by=by, seconds=round(time.monotonic() - started, 3))
        self.save()
        return {"name": REPLICA, "action": "promoted", "seconds": time.monotonic() - started,
                "timeline": self.state.nodes[REPLICA].timeline}

    @exclusive
    def rebuild_replica(self) -> Change:
        """Throw the replica's data away and clone it again from the current primary."""
        replica = self.node(REPLICA)
        replica.stop("immediate", timeout=30)
        self.state.nodes[REPLICA].role = "replica"
        self.state.replica_promotion = None
        # The promoted lineage is gone; its archive would collide with a later promotion's.
        for leftover in self.replica_archive.iterdir():
            leftover.unlink()
        self._clone(replica, "replica")
        self.state.nodes[REPLICA].timeline = self._timeline(replica)
        self._event("replica-rebuilt")
        self.save()
        return Change("server", REPLICA, "created", notes=("replica rebuilt from the primary",))

    def _timeline(self, node: Node) -> int | None:
        try:
            with node.connect(self.admin_user, timeout=5) as conn:
                return conn.execute(query("sandbox.sql", "node_state")).fetchone()[1]
        except SandboxError:
            return None
