"""The sandbox's storage quota is enforced as Azure enforces storage: measured in `status` and by
Phase 7, read-only at 95 % (default_transaction_read_only) through the supervisor's guard, kept
by the parameter reconciliation, writable again once space is freed. On the shared sandbox, seen
through a quota just above what its databases take now."""

from __future__ import annotations

import psycopg
import pytest

from pcdb import checks
from pcdb.context import RunbookContext
from pcdb.sandbox import Sandbox, storage
from pcdb.sandbox.supervisor import Supervisor
from pcdb.targets.sandbox import SandboxTarget

pytestmark = pytest.mark.postgres


def with_quota(target, quota: int) -> SandboxTarget:
    spec = target.env.sandbox.model_copy(update={"storage_quota": quota})
    env = target.env.model_copy(update={"sandbox": spec})
    return SandboxTarget(env, Sandbox(env, root=target.sandbox.root))


def test_storage_past_95_percent_turns_the_primary_read_only_until_space_is_freed(target):
    sandbox = target.sandbox
    used = storage.usage(sandbox)["used_bytes"]
    small = with_quota(target, int(used / 0.90))          # 90 % used: fine, nothing to do
    status = small.sandbox.status()
    assert 89 <= status["storage"]["percent"] < 95 and not any("storage at" in p for p in status["problems"])
    assert storage.enforce(small.sandbox) is None
    ctx = RunbookContext(small.env, small)
    primary = sandbox.primary()
    try:
        with primary.connect(sandbox.admin_user, dbname=target.env.service.database) as conn:
            conn.execute("CREATE TABLE public.quota_filler (pad text); "
                         "ALTER TABLE public.quota_filler ALTER COLUMN pad SET STORAGE EXTERNAL")   # not compressed
            rows = int(0.08 * used / 2048) + 1                 # 90 % -> about 97 %
            conn.execute("INSERT INTO public.quota_filler SELECT repeat(md5(g::text), 64) FROM generate_series(1, %s) g",
                         (rows,))
            conn.execute("CHECKPOINT")
        supervisor = Supervisor(small.sandbox, after=60, log=lambda message: None)
        done = supervisor.check(0.0)                        # the primary answers: the storage guard looks
        assert done is not None and "read-only" in done
        now = storage.usage(small.sandbox)
        assert now["percent"] >= 95 and now["read_only"] and now["read_only_by_guard"]
        with primary.connect(sandbox.admin_user, dbname=target.env.service.database) as conn:
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                conn.execute("INSERT INTO public.quota_filler VALUES ('x')")
        problems = small.sandbox.status()["problems"]
        assert any("the primary is read-only" in p and "raise sandbox.storage_quota" in p for p in problems)
        with ctx.connect() as conn:
            check = checks.check_storage(conn, small.env, small)
        assert not check.passed and "read-only at 95 %" in check.evidence
        # An install's parameter step does not undo the guard: the setting is not the spec's to reset.
        assert target.ensure_parameters().action == "unchanged"
        assert storage.usage(small.sandbox)["read_only"]
        assert supervisor.check(1.0) is None                 # looked at again only after CHECK_EVERY
        # Freeing space, as on Azure: a session of the operator's own, read-write.
        with primary.connect(sandbox.admin_user, dbname=target.env.service.database) as conn:
            conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE")
            conn.execute("DROP TABLE public.quota_filler")
            conn.execute("CHECKPOINT")
        assert "writable again" in supervisor.check(storage.CHECK_EVERY + 1)
        with primary.connect(sandbox.admin_user, dbname=target.env.service.database) as conn:
            conn.execute("CREATE TEMP TABLE t (x int); INSERT INTO t VALUES (1)")
        with ctx.connect() as conn:
            assert checks.check_storage(conn, small.env, small).passed
    finally:
        with primary.connect(sandbox.admin_user, dbname=target.env.service.database) as conn:
            conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE")
            conn.execute("DROP TABLE IF EXISTS public.quota_filler")
            conn.execute("ALTER SYSTEM RESET default_transaction_read_only")
            conn.execute("SELECT pg_reload_conf()")


def test_the_spec_cannot_set_the_guards_read_only_switch(tmp_path):
    from pcdb.config import DEPLOYMENTS, load_environment
    from pcdb.errors import PcdbError

    spec = tmp_path / "ro.yaml"
    spec.write_text(f"extends: {DEPLOYMENTS / 'local.yaml'}\nname: ro\nparameters:\n  default_transaction_read_only: 'on'\n")
    with pytest.raises(PcdbError) as error:
        load_environment(spec)
    assert "default_transaction_read_only" in str(error.value) and "storage guard" in str(error.value)
