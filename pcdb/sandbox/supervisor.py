"""The sandbox's supervisor: what Azure's ZoneRedundant HA does by itself. When the primary has
been unreachable for ``sandbox.auto_failover_after``, it promotes the synchronous standby (a
forced failover: the old primary is fenced, then rewound into the new standby).

It never fights pcdb: while a pcdb process holds the sandbox's lock (a drill, an install, a
failover) it only watches.

The rule (docs/ha.md puts it beside Patroni's): the standby is promoted only when the primary is
*configured* to wait for it (synchronous_standby_names names it, in the node.conf pcdb wrote and
in the primary's own settings when it last answered), because then no commit was acknowledged
that the standby had not flushed; it is the same guarantee Patroni draws from the ``/sync`` key
it writes before turning synchronous replication on (``synchronous_mode_strict``). Whether the
standby was *connected* at the primary's last answer does not decide anything: a dying primary
answers that it has no standby once the link has dropped, and one such answer once disabled the
failover for good. The standby's own view (running, in recovery, what its WAL receiver received
and what it replayed) is read at each decision, every loop, and the decision with all its inputs
goes to the event log. A primary left without its synchronous copy (a rejoin that failed) is
healed by the next loops: the standby is rejoined, or copied afresh, with retries and a bound.

Started by `pcdb sandbox up` (python -m pcdb.sandbox.supervisor SPEC), stopped by `down` and
`destroy`; its pid and last action are in <root>/supervisor.json, its log in supervisor.log.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import psycopg

from pcdb import clock
from pcdb.errors import PcdbError, SandboxError
from pcdb.sandbox import storage
from pcdb.sandbox.engine import Sandbox, lock_holder
from pcdb.sql import query

CHECK_EVERY = 0.5  # seconds between health checks


def _now() -> str:
    return clock.now().isoformat(timespec="milliseconds")


APPLICATION = "pcdb-supervisor"   # its connections' name in the servers' logs (log_connections)
HEAL_ATTEMPTS = 5          # rejoins (or fresh copies) of a standby tried before the supervisor stops trying
HEAL_BACKOFF = (5, 15, 45, 120, 300)   # seconds between them
HEAL_GRACE = 5.0           # seconds without a synchronous standby before the supervisor steps in


def configured_standby(sandbox: Sandbox) -> str | None:
    """The standby the primary is configured to wait for (its node.conf, as pcdb wrote it)."""
    try:
        conf = (sandbox.primary().data / "node.conf").read_text()
    except (OSError, SandboxError):
        return None
    for line in conf.splitlines():
        name, _, value = line.partition(" = ")
        if name.strip() == "synchronous_standby_names":
            names = value.strip().strip("'").replace('"', "").strip()
            return names or None
    return None


def decide(configured: str | None, answered: str | None, standby: str, view: dict) -> tuple[bool, str]:
    """Whether to promote ``standby`` now that the primary is gone, and why (pure: the inputs are
    what the supervisor saw). ``configured``: the node.conf's synchronous standby; ``answered``:
    the primary's own synchronous_standby_names at its last answer (None: it never answered);
    ``view``: the standby's own view (running, in_recovery, receiver, received, replayed)."""
    if not view.get("running"):
        return False, f"standby {standby} is not running: nothing to promote"
    if view.get("in_recovery") is False:
        return False, f"{standby} is not a standby any more (not in recovery)"
    if configured != standby:
        return False, (f"the primary is not configured to wait for {standby} (synchronous_standby_names: "
                       f"{configured or 'empty'}): acknowledged writes may exist only on the lost primary")
    if answered is not None and answered != standby:
        return False, (f"the primary's running settings named {answered or 'no'} synchronous standby at its last "
                       f"answer, not {standby}: acknowledged writes may be missing from it")
    return True, (f"the primary waited for {standby} on every commit (synchronous_standby_names {standby}); "
                  f"{standby} received {view.get('received')} and replayed {view.get('replayed')} "
                  f"(its WAL receiver: {view.get('receiver') or 'stopped'})")


class Supervisor:
    """One watch loop over one sandbox."""

    def __init__(self, sandbox: Sandbox, after: float, log=None):
        self.sandbox = sandbox
        self.after = after
        self.log = log or (lambda message: None)
        self.down_since: float | None = None
        self.answered: str | None = None     # the primary's synchronous_standby_names at its last answer
        self.synchronous = False             # a synchronous standby was streaming at the last answer
        self.said: str | None = None         # the last refusal logged (each is logged once, not every loop)
        self.storage_checked = float("-inf")
        self.heal_attempts = 0
        self.heal_next = 0.0
        self.unsynced_since: float | None = None

    def primary_answers(self) -> bool:
        """The primary accepts a connection and a query within a second; what it says of its
        standbys and its synchronous_standby_names are kept as this look's inputs."""
        try:
            primary = self.sandbox.primary()
            with psycopg.connect(primary.conninfo(self.sandbox.admin_user), connect_timeout=1, autocommit=True,
                                 application_name=APPLICATION) as conn:
                rows = conn.execute(query("sandbox.sql", "replication")).fetchall()
                names = conn.execute(query("sandbox.sql", "synchronous_names")).fetchone()[0]
        except (psycopg.Error, SandboxError):
            return False
        self.synchronous = any(r[2] == "sync" for r in rows)
        self.answered = names.replace('"', "").strip() or ""
        return True

    def standby_view(self, standby) -> dict:
        """The standby's own view: running, in recovery, its WAL receiver, what it received and replayed."""
        view: dict = {"name": standby.name, "running": standby.is_running()}
        if not view["running"]:
            return view
        try:
            with psycopg.connect(standby.conninfo(self.sandbox.admin_user), connect_timeout=1, autocommit=True,
                                 application_name=APPLICATION) as conn:
                row = conn.execute(query("sandbox.sql", "standby_view")).fetchone()
            view.update(in_recovery=row[0], receiver=row[1], received=row[2], replayed=row[3])
        except psycopg.Error as exc:
            view.update(running=False, error=str(exc).strip().splitlines()[0])
        return view

    def _say(self, message: str) -> None:
        if message != self.said:
            self.log(message)
            self.said = message

    def check_storage(self, now: float) -> str | None:
        """Azure's storage rule (read-only at 95 %, pcdb.sandbox.storage), every CHECK_EVERY
        seconds, and never while pcdb itself is changing the topology."""
        if now - self.storage_checked < storage.CHECK_EVERY or lock_holder(self.sandbox.root):
            return None
        self.storage_checked = now
        try:
            done = storage.enforce(self.sandbox)
        except (psycopg.Error, SandboxError) as exc:
            self.log(f"storage check: {str(exc).strip().splitlines()[0]}")
            return None
        if done:
            self.log(done)
        return done

    def check(self, now: float) -> str | None:
        """One look; returns what it did, if anything."""
        if self.sandbox.state.application != "primary":
            return None  # the service runs on the promoted replica (a region failover): it has no HA
        if self.primary_answers():
            self.down_since = None
            self.said = None
            return self.heal(now) or self.check_storage(now)
        if self.down_since is None:
            self.down_since = now
            self.log(f"primary {self.sandbox.primary().name} does not answer")
            return None
        if now - self.down_since < self.after:
            return None
        busy = lock_holder(self.sandbox.root)
        if busy:
            return None  # pcdb itself is changing the topology (a drill, a failover): not ours to act
        try:
            standby = self.sandbox.standby()
        except SandboxError as exc:
            self._say(f"primary down and no standby: {exc}")
            return None
        configured = configured_standby(self.sandbox)
        view = self.standby_view(standby)
        act, why = decide(configured, self.answered, standby.name, view)
        inputs = {"primary_unreachable_seconds": round(now - self.down_since, 1), "configured_sync": configured,
                  "answered_sync": self.answered, "streaming_at_last_answer": self.synchronous, "standby": view}
        if not act:   # re-decided on the next loop, half a second later: one look never settles it
            if why != self.said:
                self.sandbox.record_event("auto-failover-refused", reason=why, inputs=inputs)
            self._say(f"primary down, no automatic failover yet: {why}")
            return None
        self.sandbox.record_event("auto-failover-decided", reason=why, inputs=inputs)
        self.log(f"automatic failover decided: {why}")
        outage = now - self.down_since
        try:
            result = self.sandbox.failover("forced")
        except PcdbError as exc:
            self.log(f"automatic failover failed: {exc}")
            self.down_since = now
            return None
        done = (f"automatic failover: {result['new_primary']} promoted after {outage:.1f}s without an answer "
                f"from {result['old_primary']}; {result['old_primary']} rejoined as synchronous standby "
                f"({result.get('rejoined', 'rewound')})")
        self.log(done)
        self.down_since = None
        self.said = None
        return done

    def heal(self, now: float) -> str | None:
        """A primary that answers but has no synchronous standby (a rejoin that failed, an
        interrupted failover): rejoin the standby, or copy it afresh when it cannot be rewound;
        with retries (HEAL_BACKOFF) and a bound (HEAL_ATTEMPTS), never while pcdb is at work."""
        if self.synchronous or self.sandbox.state.application != "primary" or lock_holder(self.sandbox.root):
            if self.synchronous:
                self.heal_attempts, self.unsynced_since = 0, None
            return None
        if self.unsynced_since is None:        # a standby that is just catching up is left to it a moment
            self.unsynced_since = now
        if now - self.unsynced_since < max(self.after, HEAL_GRACE):
            return None
        if now < self.heal_next or self.heal_attempts >= HEAL_ATTEMPTS:
            return None
        self.heal_attempts += 1
        try:
            standby = self.sandbox.standby()
            done = self.sandbox.heal_standby(standby.name)
        except (PcdbError, psycopg.Error) as exc:
            wait = HEAL_BACKOFF[min(self.heal_attempts - 1, len(HEAL_BACKOFF) - 1)]
            self.heal_next = now + wait
            last = self.heal_attempts >= HEAL_ATTEMPTS
            self.log(f"the primary runs WITHOUT a synchronous copy; attempt {self.heal_attempts} to bring the standby "
                     f"back failed: {exc}" + ("; no more attempts: run `pcdb sandbox up`" if last
                                             else f"; next attempt in {wait}s"))
            return None
        self.heal_attempts, self.unsynced_since = 0, None
        self.log(done)
        return done


def main() -> None:  # python -m pcdb.sandbox.supervisor SPEC ROOT
    from pcdb.config import load_environment

    spec, root = sys.argv[1], Path(sys.argv[2])
    sandbox = Sandbox(load_environment(spec), root=root)
    stopping = {"now": False}

    def on_term(*_):
        stopping["now"] = True
    signal.signal(signal.SIGTERM, on_term)

    def log(message: str) -> None:
        print(f"{_now()} {message}", flush=True)
        if message.startswith("automatic failover:"):
            sandbox.record_event("auto-failover", detail=message)
        elif message.startswith("standby "):
            sandbox.record_event("standby-healed", detail=message)
    supervisor = Supervisor(sandbox, sandbox.spec.auto_failover_after.total_seconds(), log)
    log(f"watching {root}: failover after {supervisor.after:g}s without a primary")
    while not stopping["now"]:
        supervisor.check(time.monotonic())
        time.sleep(CHECK_EVERY)
    log("stopped")


if __name__ == "__main__":
    main()
