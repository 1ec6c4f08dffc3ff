"""Failover, point-in-time restore, replica promotion, rolling parameter changes: measured on real servers."""

from datetime import datetime, timezone

import psycopg
import pytest

from pcdb.probe import ProbeWriter
from pcdb.sandbox.engine import REPLICA
from tests.conftest import new_target

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def ops():
    """A sandbox of this module's own: these tests change the topology."""
    t = new_target()
    t.ensure_server()
    t.ensure_replica()
    t.ensure_database()
    yield t
    t.sandbox.destroy()


def app_conninfo(target):
    return target.endpoint("application").conninfo(target.admin, target.admin_password())


def primary_conn(target):
    return psycopg.connect(target.endpoint().conninfo(target.admin, target.admin_password()), autocommit=True)


@pytest.mark.parametrize("mode", ["forced", "planned"])
def test_failover_loses_no_acknowledged_row_and_the_old_primary_rejoins_as_sync_standby(ops, mode):
    old_primary = ops.sandbox.primary().name
    probe = ProbeWriter(app_conninfo(ops), table=f"probe_{mode}").start()
    try:
        probe.wait_for_rows(50)
        result = ops.failover(mode)
        probe.wait_for_rows(50)
        outcome = probe.stop()
        assert probe.missing() == []                     # RPO 0: every acknowledged commit survived
        assert len(outcome.acknowledged) >= 100
        assert result.new_primary != old_primary
        state = {n.name: n for n in ops.server_state().nodes}
        assert state[old_primary].role == "standby" and state[old_primary].sync_state == "sync"
        assert state[REPLICA].role == "replica" and state[REPLICA].sync_state == "async"
        assert state[result.new_primary].timeline == result.timeline > 1
        assert ops.server_state().ha_state == "Healthy"
    finally:
        probe.stop()
        probe.drop_table()


def test_a_forced_failover_that_left_the_replica_past_the_new_timelines_fork_rewinds_it_onto_it(ops):
    """The unlucky order of a zone failure: the asynchronous replica received WAL from the dying
    primary that the synchronous standby never had. It can never follow the promoted standby's
    timeline; the failover rewinds it, and only then says the replica follows."""
    sandbox = ops.sandbox
    old, standby = sandbox.primary(), sandbox.standby()
    replica = sandbox.node(REPLICA)
    with primary_conn(ops) as conn:
        conn.execute("CREATE TABLE fork_probe (id int PRIMARY KEY)")
        conn.execute("SELECT pg_switch_wal()")        # no archive_timeout switch inside the window
    standby.stop("fast")
    with primary_conn(ops) as conn:                   # commits nobody waits for: only the replica gets them
        conn.execute("SET synchronous_commit TO local")
        conn.execute("INSERT INTO fork_probe SELECT generate_series(1, 100)")
        written = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
    with psycopg.connect(ops.endpoint("replica").conninfo(ops.admin, ops.admin_password()),
                         autocommit=True) as conn:
        replica.wait(lambda: conn.execute("SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), %s) >= 0",
                                          (written,)).fetchone()[0], "the replica replaying the local commits", 30)
    old.stop("immediate")                             # the zone dies
    standby.start(sandbox.timeout)                    # its standby never saw those commits

    result = ops.failover("forced")

    events = [e for e in sandbox.state.events if e["event"] == "replica-diverged"]
    assert events and "past where timeline" in events[-1]["detail"]
    state = {n.name: n for n in ops.server_state().nodes}
    assert state[REPLICA].role == "replica" and state[REPLICA].sync_state == "async"
    assert state[REPLICA].timeline == result.timeline == state[result.new_primary].timeline
    with psycopg.connect(ops.endpoint("replica").conninfo(ops.admin, ops.admin_password())) as conn:
        # the commits the promoted standby never had are gone from the replica too
        assert conn.execute("SELECT count(*) FROM fork_probe").fetchone()[0] == 0
    with primary_conn(ops) as conn:
        conn.execute("INSERT INTO fork_probe VALUES (1)")
    with psycopg.connect(ops.endpoint("replica").conninfo(ops.admin, ops.admin_password()),
                         autocommit=True) as conn:
        replica.wait(lambda: conn.execute("SELECT count(*) FROM fork_probe").fetchone()[0] == 1,
                     "the replica replaying the new primary's commit", 30)
    with primary_conn(ops) as conn:
        conn.execute("DROP TABLE fork_probe")
    assert ops.server_state().ha_state == "Healthy"


def test_point_in_time_restore_returns_exactly_the_rows_before_the_target(ops):
    with primary_conn(ops) as conn:
        conn.execute("CREATE TABLE pitr_probe (id int PRIMARY KEY)")
        conn.execute("INSERT INTO pitr_probe SELECT generate_series(1, 100)")
    ops.take_backup()
    with primary_conn(ops) as conn:
        conn.execute("INSERT INTO pitr_probe SELECT generate_series(101, 150)")
        target_time = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        conn.execute("INSERT INTO pitr_probe SELECT generate_series(151, 200)")
        conn.execute("DELETE FROM pitr_probe WHERE id <= 10")   # the "corruption" after the target
    endpoint = ops.restore_point_in_time(target_time, "pitr-check")
    try:
        with psycopg.connect(endpoint.conninfo(ops.admin, ops.admin_password())) as conn:
            ids = [r[0] for r in conn.execute("SELECT id FROM pitr_probe ORDER BY id")]
            in_recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
        assert ids == list(range(1, 151)) and not in_recovery
    finally:
        assert ops.delete_server("pitr-check").action == "deleted"
    assert ops.delete_server("pitr-check").action == "unchanged"
    assert "pitr-check" not in [r["name"] for r in ops.sandbox.status()["restores"]]


def test_restore_before_any_backup_is_refused(ops):
    with pytest.raises(Exception, match="no base backup finished before"):
        ops.restore_point_in_time(datetime(2000, 1, 1, tzinfo=timezone.utc), "too-early")


def test_backups_are_listed_and_copied_to_the_geo_folder(ops):
    taken = ops.take_backup()
    listed = ops.list_backups()
    assert taken.id in [b.id for b in listed]
    assert (ops.sandbox.backup_dirs[1] / taken.id / "backup_manifest").exists()
    archive, geo = ops.sandbox.archive_dirs
    sealed = ops.sandbox.seal_wal()
    assert (archive / sealed).read_bytes() == (geo / sealed).read_bytes()

    def same_files():  # the standby archives too (archive_mode=always): wait for in-flight copies
        names = [sorted(p.name for p in d.iterdir() if not p.name.startswith(".")) for d in (archive, geo)]
        return names[0] == names[1]
    ops.sandbox.primary().wait(same_files, "geo archive equal to the archive", 30)
    assert ops.sandbox.archive_status()["failed_count"] == 0


def test_replica_promotion_keeps_replicated_rows_and_accepts_writes(ops):
    with primary_conn(ops) as conn:
        conn.execute("CREATE TABLE promo_probe (id int)")
        conn.execute("INSERT INTO promo_probe SELECT generate_series(1, 500)")
        lsn = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
    replica = ops.endpoint("replica").conninfo(ops.admin, ops.admin_password())

    def caught_up():
        with psycopg.connect(replica) as conn:
            return conn.execute("SELECT pg_last_wal_replay_lsn() >= %s", (lsn,)).fetchone()[0]
    ops.sandbox.primary().wait(caught_up, "replica catch-up", 30)
    try:
        result = ops.promote_replica()
        assert result.action == "promoted"
        with psycopg.connect(replica, autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM promo_probe").fetchone()[0] == 500
            conn.execute("INSERT INTO promo_probe VALUES (501)")   # writable: it is a primary now
            assert not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
        assert ops.promote_replica().action == "unchanged"
    finally:
        ops.sandbox.rebuild_replica()
    state = {n.name: n for n in ops.server_state().nodes}
    assert state[REPLICA].role == "replica" and state[REPLICA].sync_state == "async"


def test_a_restart_parameter_is_rolled_out_standby_first_then_by_switchover(ops):
    from pcdb.config import validate
    data = ops.env.model_dump(mode="json", by_alias=True)
    data["parameters"]["shared_buffers"] = "64MB"          # postmaster context: needs a restart
    data["parameters"]["work_mem"] = "8MB"                 # reload is enough
    ops.env = validate(data)
    first_primary = ops.sandbox.primary().name
    change = ops.ensure_parameters()
    assert change.action == "updated"
    assert set(change.diff) == {"shared_buffers", "work_mem"}
    assert any("switchover" in note for note in change.notes)
    assert ops.sandbox.primary().name != first_primary
    for which in ("primary", "replica"):
        with psycopg.connect(ops.endpoint(which).conninfo(ops.admin, ops.admin_password(), dbname="postgres")) as c:
            assert c.execute("SHOW shared_buffers").fetchone()[0] == "64MB"
            assert c.execute("SHOW work_mem").fetchone()[0] == "8MB"
    assert ops.ensure_parameters().action == "unchanged"
    assert ops.server_state().ha_state == "Healthy"


def test_a_lower_max_connections_reaches_the_primary_first_so_no_standby_refuses_to_start(ops):
    from pcdb.config import validate
    data = ops.env.model_dump(mode="json", by_alias=True)
    before = int(data["parameters"]["max_connections"])
    data["parameters"]["max_connections"] = before - 10   # standby first would abort its recovery
    # (still above the roles' connection limits, 180, and the 3 reserved: the spec check insists)
    ops.env = validate(data)
    change = ops.ensure_parameters()
    assert change.diff["max_connections"] == (str(before), str(before - 10))
    assert "lowered on the primary first (max_connections)" in change.notes[0]
    for node in ops.sandbox.nodes():
        with node.connect(ops.admin) as conn:
            assert conn.execute("SHOW max_connections").fetchone()[0] == str(before - 10), node.name
    state = ops.server_state()
    assert state.ha_state == "Healthy"
    assert {n.name: n.sync_state for n in state.nodes}[REPLICA] == "async"
    assert ops.ensure_parameters().action == "unchanged"


def test_backups_older_than_the_retention_are_pruned_but_the_one_needed_at_the_limit_stays(ops):
    from datetime import timedelta

    for _ in range(2):
        ops.take_backup()
    backups = ops.sandbox.list_backups()
    assert len(backups) >= 3
    later = backups[-1].finished_at + timedelta(days=40)          # all of them are now past 35 days
    removed = ops.sandbox.prune_backups(timedelta(days=35), now=later)
    kept = ops.sandbox.list_backups()
    assert [b.id for b in kept] == [backups[-1].id] and set(removed) == {b.id for b in backups[:-1]}
    assert not [p for p in ops.sandbox.backup_dirs[1].iterdir() if p.name.split(".")[0] in removed]


def test_a_second_process_changing_the_sandbox_waits_then_fails_naming_the_holder(ops):
    import fcntl
    import os

    from pcdb.errors import SandboxError
    from pcdb.sandbox import Sandbox

    primary = ops.sandbox.primary().name
    other = Sandbox(ops.env, root=ops.sandbox.root)     # another pcdb process, as far as the lock knows
    other.lock_timeout = 0.3
    fd = os.open(ops.sandbox.root / "state.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a drill holds the sandbox
        os.pwrite(fd, b"pid 4242, failover since now\n", 0)
        with pytest.raises(SandboxError, match=r"another pcdb process .*pid 4242, failover"):
            other.failover("planned")
    finally:
        os.close(fd)
    assert ops.sandbox.primary().name == primary and ops.server_state().ha_state == "Healthy"
    assert other.take_backup().kind == "on-demand"      # the lock is free again


def test_the_failback_after_ha_failovers_keeps_the_promoted_replicas_writes_on_both_ha_nodes(ops):
    """The region failover and failback after the HA pair had failed over (this module's earlier
    tests; one more here): every write the promoted replica took is on both HA nodes once they
    follow it, and on the primary after the switch back. With the HA nodes rewound (pg_rewind)
    instead of copied afresh, the old primary stood at the promoted replica's WAL position
    without its writes (found on 2026-12-03)."""
    from pcdb.sandbox.engine import HA_NODES

    sb = ops.sandbox
    ops.failover("planned")
    sb.wait_replica_following()
    sb.stop_region()                                   # the region is lost
    sb.promote_replica(by="real")
    sb.switch_application("replica")
    replica = ops.endpoint("replica").conninfo(ops.admin, ops.admin_password())
    with psycopg.connect(replica, autocommit=True) as conn:
        conn.execute("CREATE TABLE failback_probe AS SELECT generate_series(1, 300) AS id")
        lsn = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
    sb.start_region()                                  # the region is back
    sb.reverse_replication()
    for name in HA_NODES:
        node = sb.node(name)

        def replayed(node=node) -> bool:
            with node.connect(ops.admin, ops.env.service.database) as conn:
                return conn.execute("SELECT pg_last_wal_replay_lsn() >= %s", (lsn,)).fetchone()[0]
        node.wait(replayed, f"{name} replaying the promoted replica's writes", 30)
        with node.connect(ops.admin, ops.env.service.database) as conn:
            assert conn.execute("SELECT count(*) FROM failback_probe").fetchone()[0] == 300, name
            assert conn.execute("SELECT count(*) FROM pg_attribute WHERE attrelid = 'failback_probe'::regclass "
                                "AND attnum > 0").fetchone()[0] == 1, name
    sb.switch_back()
    with primary_conn(ops) as conn:
        assert conn.execute("SELECT count(*) FROM failback_probe").fetchone()[0] == 300
        conn.execute("DROP TABLE failback_probe")
    assert sb.state.application == "primary"


def test_a_diverged_old_primary_rewound_onto_a_promoted_server_replays_what_that_server_wrote(ops):
    """pg_rewind starts the rewound node's replay at the last common checkpoint through the
    backup_label it writes. Without it (rejoin used to delete it) the node replayed from the
    source's latest checkpoint, which rejoin takes just before the rewind, and missed what the
    source wrote since they diverged where the rewind copied no block: here a table's catalog
    rows (found on 2026-12-03). The case: the region lost under a primary that wrote past the
    replica, the replica promoted and written to, the old primary rewound onto it."""
    from pcdb.sandbox.engine import HA_NODES

    sb = ops.sandbox
    ops.failover("planned")                             # the new primary's first records, not yet on the replica
    old = sb.primary().name
    sb.stop_region()
    sb.promote_replica(by="real")
    sb.switch_application("replica")
    try:
        replica = ops.endpoint("replica").conninfo(ops.admin, ops.admin_password())
        with psycopg.connect(replica, autocommit=True) as conn:
            conn.execute("CREATE TABLE rewind_probe AS SELECT generate_series(1, 200) AS id")
            lsn = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        sb.start_region()
        sb.state.nodes[old].role = "standby"
        sb.save()
        assert sb.rejoin(old) == "rewound"
        node = sb.node(old)

        def replayed() -> bool:
            with node.connect(ops.admin, ops.env.service.database) as conn:
                return conn.execute("SELECT pg_last_wal_replay_lsn() >= %s", (lsn,)).fetchone()[0]
        node.wait(replayed, f"{old} replaying the promoted replica's writes", 30)
        with sb.node(old).connect(ops.admin, ops.env.service.database) as conn:
            assert conn.execute("SELECT count(*) FROM rewind_probe").fetchone()[0] == 200
            assert conn.execute("SELECT count(*) FROM pg_attribute WHERE attrelid = 'rewind_probe'::regclass "
                                "AND attnum > 0").fetchone()[0] == 1
    finally:
        # the sandbox's own failback puts the module's sandbox back as it was
        other = next(n for n in HA_NODES if n != old)
        if sb.node(other).is_running() is False:
            sb.node(other).start(sb.timeout)
        sb.reverse_replication()
        sb.switch_back()
        with primary_conn(ops) as conn:
            conn.execute("DROP TABLE IF EXISTS rewind_probe")
