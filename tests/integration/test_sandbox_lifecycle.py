"""up after a crash restarts what exists; down leaves nothing running; destroy removes everything;
the CLI gives one clear line for user errors and never changes anything on a bad spec."""

import json
import os
import signal
import subprocess

import psycopg
import pytest
from typer.testing import CliRunner

from cli.main import app
from pcdb.errors import SandboxError
from pcdb.sandbox import proc
from tests.conftest import make_spec, new_sandbox_root, processes_under, sandbox_root

pytestmark = pytest.mark.postgres
runner = CliRunner()


def cli(target, *args):
    return runner.invoke(app, [*args, "--env", str(target.env_path)],
                         env={"PCDB_SANDBOX_ROOT": str(target.sandbox.root)})


def test_up_status_down_destroy_through_the_cli(fresh_target):
    root = fresh_target.sandbox.root
    first = cli(fresh_target, "sandbox", "up", "--json")
    assert first.exit_code == 0, first.output
    changes = json.loads(first.stdout)
    assert {c["action"] for c in changes if c["resource"] != "supervisor"} == {"created", "updated"}
    assert [c["action"] for c in changes if c["resource"] == "supervisor"] == ["started"]  # automatic failover

    again = cli(fresh_target, "sandbox", "up", "--json")
    assert {c["action"] for c in json.loads(again.stdout)} == {"unchanged"}
    running = json.loads(cli(fresh_target, "sandbox", "status", "--json").stdout)
    binaries = running["postgresql"]["binaries_version"]               # what `postgres --version` says
    assert [n["version"] for n in running["nodes"]] == [binaries] * 3  # what each server says it runs
    assert running["postgresql"]["spec_version"] == binaries.split(".")[0] == "15"   # local.yaml on Debian 12
    assert running["postgresql"]["matches_spec"] and running["postgresql"]["warning"] is None

    # The spec now asks for 14 (production's): this sandbox was made on 15 and keeps it until it is
    # made again (tests/flows/test_sandbox_major.py runs one on 14). Said, not hidden.
    older = fresh_target.env_path.with_name("pg14.yaml")
    older.write_text(f"extends: {fresh_target.env_path}\nserver:\n  version: \"14\"\n")
    said = runner.invoke(app, ["sandbox", "status", "--env", str(older)],
                         env={"PCDB_SANDBOX_ROOT": str(root), "COLUMNS": "200"})
    assert said.exit_code == 0, said.output
    assert f"PostgreSQL {binaries} " in said.stdout and "the spec's server.version: 14" in said.stdout
    assert f"WARNING: the spec's server.version is 14, but the sandbox runs PostgreSQL {binaries}" in \
        " ".join(said.stderr.split())
    up14 = runner.invoke(app, ["sandbox", "up", "--env", str(older)], env={"PCDB_SANDBOX_ROOT": str(root)})
    assert "a sandbox keeps the binaries it was made with: `pcdb sandbox destroy` and `pcdb sandbox up` make " \
           "it on 14" in " ".join(up14.stderr.split())
    assert (root / "state.json").stat().st_mode & 0o777 == 0o600     # the topology and events: the owner's only

    assert processes_under(root)
    down = cli(fresh_target, "sandbox", "down")
    assert down.exit_code == 0 and "stopped: supervisor, " in down.stdout
    assert processes_under(root) == []

    status = json.loads(cli(fresh_target, "sandbox", "status", "--json").stdout)
    assert [n["running"] for n in status["nodes"]] == [False, False, False]

    restarted = cli(fresh_target, "sandbox", "up", "--json")
    assert {c["action"] for c in json.loads(restarted.stdout) if c["resource"] == "server"} == {"started"}

    gone = cli(fresh_target, "sandbox", "destroy", "--yes")
    assert gone.exit_code == 0 and not root.exists() and processes_under(root) == []


def test_after_a_crash_up_restarts_the_servers_and_keeps_the_data(fresh_target):
    fresh_target.ensure_server()
    fresh_target.ensure_replica()
    fresh_target.ensure_database()
    endpoint = fresh_target.endpoint()
    info = endpoint.conninfo(fresh_target.admin, fresh_target.admin_password())
    with psycopg.connect(info, autocommit=True) as conn:
        conn.execute("CREATE TABLE survives (id int)")
        conn.execute("INSERT INTO survives VALUES (1), (2), (3)")
    for node in fresh_target.sandbox.nodes():          # kill -9 every postmaster: a power cut
        pid = int((node.data / "postmaster.pid").read_text().splitlines()[0])
        os.kill(pid, signal.SIGKILL)
    for node in fresh_target.sandbox.nodes():
        node.wait(lambda node=node: not node.is_running(), "postmaster gone", 10)

    changes = [*fresh_target.ensure_server(), fresh_target.ensure_replica()]
    assert [c.action for c in changes if c.resource == "server"] == ["started"] * 3
    with psycopg.connect(info) as conn:
        assert conn.execute("SELECT count(*) FROM survives").fetchone()[0] == 3
    assert fresh_target.server_state().ha_state == "Healthy"


def test_a_start_is_not_taken_as_done_from_a_stale_pid_file_that_says_ready(fresh_target):
    """A node's start returns as soon as its new postmaster says it is up (every 5 ms, not pg_ctl's
    100 ms), never on a postmaster.pid left behind: here one that names a live process and says
    "ready". PostgreSQL refuses to start beside it, and the start must say so."""
    fresh_target.ensure_server()
    node = fresh_target.sandbox.standby()
    node.stop("fast", timeout=30)
    # As the server user: PostgreSQL knows another user's process is no postmaster of its own.
    squatter = subprocess.Popen(["sleep", "60"], **proc.server_user().popen)
    try:
        proc.write_file(node.data / "postmaster.pid",
                        f"{squatter.pid}\n{node.data}\n1700000000\n{node.port}\n{node.run_dir}\n\n"
                        "  0  0\nready   \n")
        with pytest.raises(SandboxError, match="lock file"):
            node.start(30)
    finally:
        squatter.kill()
        squatter.wait()
    node.start(30)                                        # the stale file names a dead process now
    assert node.is_running()
    node.wait(lambda: fresh_target.server_state().ha_state == "Healthy", "the standby synchronous again", 60)


def test_a_bad_spec_is_rejected_before_anything_is_created():
    folder = new_sandbox_root()
    spec = make_spec(folder, "parameters:\n  log_slow_queries: on\n")
    root = folder / "never"
    result = runner.invoke(app, ["sandbox", "up", "--env", str(spec)], env={"PCDB_SANDBOX_ROOT": str(root)})
    assert result.exit_code == 1
    assert "parameters.log_slow_queries" in result.stderr and "MySQL" in result.stderr
    assert "Traceback" not in result.output
    assert not root.exists()
    folder.joinpath("test.yaml").unlink()
    folder.rmdir()


def test_status_of_a_missing_sandbox_says_what_to_do(tmp_path):
    result = runner.invoke(app, ["sandbox", "status", "--env", "local"],
                           env={"PCDB_SANDBOX_ROOT": str(tmp_path / "none")})
    assert result.exit_code == 1 and "run `pcdb sandbox up --env local`" in result.stderr


def test_the_sandbox_commands_refuse_a_production_spec():
    result = runner.invoke(app, ["sandbox", "up", "--env", "prod"])
    assert result.exit_code == 1 and "targets azure, not the sandbox" in result.stderr


def test_config_check_shows_the_document_values_converted():
    result = runner.invoke(app, ["config", "check", "--env", "prod", "--json"])
    assert result.exit_code == 0
    applied = json.loads(result.stdout)
    assert applied["shared_buffers"] == {"declared": "4GB", "setting": "524288", "unit": "8kB", "restart": True}


def test_destroy_removes_only_a_sandbox_and_never_without_yes_when_nobody_can_be_asked(tmp_path):
    from pcdb.config import load_environment
    from tests.conftest import make_spec, new_sandbox_root

    folder = new_sandbox_root()
    precious = folder / "not-a-sandbox"
    precious.mkdir()
    (precious / "keep.txt").write_text("data of someone else\n")
    spec = make_spec(folder, sandbox="").read_text().replace(str(sandbox_root(folder)), str(precious))
    (folder / "test.yaml").write_text(spec)
    env = str(folder / "test.yaml")
    runner = CliRunner()
    refused = runner.invoke(app, ["sandbox", "destroy", "--env", env])            # stdin is not a terminal
    assert refused.exit_code == 1 and "without --yes" in refused.stderr
    not_ours = runner.invoke(app, ["sandbox", "destroy", "--env", env, "--yes"])
    assert not_ours.exit_code == 1 and "is not a sandbox (no state.json): nothing was deleted" in not_ours.stderr
    assert (precious / "keep.txt").read_text() == "data of someone else\n"

    mode_before = precious.stat().st_mode
    up = runner.invoke(app, ["sandbox", "up", "--env", env])                     # nor is it made a sandbox
    assert up.exit_code == 1 and "is not a sandbox (no state.json) and not empty (keep.txt)" in up.stderr
    assert precious.stat().st_mode == mode_before and sorted(p.name for p in precious.iterdir()) == ["keep.txt"]
    assert load_environment(env).sandbox.root == str(precious)


def test_a_shared_folder_such_as_tmp_keeps_its_mode(tmp_path):
    import os

    from tests.conftest import make_spec, new_sandbox_root

    folder = new_sandbox_root()
    shared = folder / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)                                                      # like /tmp
    spec = make_spec(folder).read_text().replace(str(sandbox_root(folder)), str(shared))
    (folder / "test.yaml").write_text(spec)
    result = CliRunner().invoke(app, ["sandbox", "up", "--env", str(folder / "test.yaml"), "--json"])
    assert result.exit_code == 0, result.output
    assert oct(shared.stat().st_mode & 0o7777) == "0o1777"                       # not turned into 0755
    CliRunner().invoke(app, ["sandbox", "destroy", "--env", str(folder / "test.yaml"), "--yes"])
