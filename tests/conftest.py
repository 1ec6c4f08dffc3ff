"""Shared fixtures: real sandboxes in short folders (on tmpfs when there is one), always destroyed at the end."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from unittest import mock

# Prefect keeps its database and results under PREFECT_HOME: a folder of this test session only.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="pcdb-prefect-")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# The orchestrator's home (ledger spool, a persistent server's files): never the machine's own.
os.environ["PCDB_ORCHESTRATOR_HOME"] = tempfile.mkdtemp(prefix="pcdb-orch-")

import pytest

from pcdb.config import DEPLOYMENTS, load_environment
from pcdb.sandbox import Sandbox
from pcdb.sandbox.proc import server_user
from pcdb.targets.sandbox import SandboxTarget

_CREATED: list[Sandbox] = []

for _home in ("PREFECT_HOME", "PCDB_ORCHESTRATOR_HOME"):     # also in xdist's controller, which runs no test
    atexit.register(shutil.rmtree, os.environ[_home], True)


def _scratch() -> Path | None:
    """Where the test servers keep their files: a memory file system (tmpfs) when the machine has
    one with room, else beside the test's spec under /tmp. On this machine's ext4 creating a file
    costs 0.3-0.9 ms of kernel time against 0.02 ms on tmpfs, and the suite creates hundreds of
    thousands (initdb, every base backup, clone, copy and restore: docs/benchmarks.md). The
    servers are the same PostgreSQL either way; the crash tests kill processes, not the machine,
    so nothing they check depends on the disk. PCDB_TEST_SCRATCH=/some/folder chooses the place,
    PCDB_TEST_SCRATCH=off keeps everything under /tmp; the benchmarks set it (benchmarks/__main__.py)."""
    chosen = os.environ.get("PCDB_TEST_SCRATCH", "")
    if chosen == "off":
        return None
    if chosen:
        return Path(chosen)
    shm = Path("/dev/shm")
    try:
        room = shutil.disk_usage(shm).free
        memory = next(int(line.split()[1]) << 10 for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return None
    enough = room >= SCRATCH_ROOM and memory >= SCRATCH_ROOM + (4 << 30)     # and 4 GB for the processes
    return shm if mount_of(shm)[1:2] == ("tmpfs",) and enough else None


def mount_of(folder: Path) -> tuple[str, ...]:
    """The mount ``folder`` is on, as /proc/mounts names it: (mount point, file system type,
    device); () when it cannot be read."""
    try:
        mounts = [line.split()[1:2] + line.split()[2:3] + line.split()[0:1]
                  for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return ()
    here = str(folder)
    inside = [m for m in mounts if here == m[0] or here.startswith(m[0].rstrip("/") + "/")]
    return tuple(max(inside, key=lambda m: len(m[0]))) if inside else ()


# The servers of `./dev test` held at most 7.1 GB there at once (three workers, 2026-12-04,
# docs/benchmarks.md): a tmpfs is used only with room for that and some to spare.
SCRATCH_ROOM = 9 << 30
SCRATCH = _scratch()
_SCRATCHED: list[tuple[Path, Path]] = []     # (the folder under /tmp, its twin on SCRATCH)


def sandbox_root(folder: Path, name: str = "sb") -> Path:
    """The root of the sandbox ``name`` of a test folder made by :func:`new_sandbox_root`."""
    return (SCRATCH / folder.name if SCRATCH else folder) / name


def make_spec(folder: Path, extra: str = "", sandbox: str = "") -> Path:
    """A spec extending local.yaml: its sandbox in ``sandbox_root(folder)``, fsync off, ``sandbox``
    more lines of the sandbox section (indented), ``extra`` YAML appended."""
    path = folder / "test.yaml"
    path.write_text(f"extends: {DEPLOYMENTS / 'local.yaml'}\nname: test\n"
                    f"sandbox:\n  root: {sandbox_root(folder)}\n  fsync: false\n  start_timeout: 60s\n{sandbox}{extra}")
    return path


def new_sandbox_root() -> Path:
    """A short folder under /tmp (unix socket paths must stay under ~107 bytes) the server user can
    enter, and its twin of the same name on the scratch file system for its servers' files."""
    while True:
        root = Path(tempfile.mkdtemp(prefix="pcdb-t", dir="/tmp"))
        os.chmod(root, 0o711)       # the server user passes through to the sandbox; nobody lists it
        if SCRATCH is None:
            return root
        try:
            (SCRATCH / root.name).mkdir(mode=0o700)
        except FileExistsError:     # left by a run that was killed: not ours to remove
            continue
        os.chmod(SCRATCH / root.name, 0o711)
        _SCRATCHED.append((root, SCRATCH / root.name))
        return root


def new_target(extra: str = "", sandbox: str = "") -> SandboxTarget:
    """A target on a fresh sandbox (not yet up); destroyed at the end of the session."""
    folder = new_sandbox_root()
    spec = make_spec(folder, f"reports_dir: {folder / 'reports'}\n{extra}", sandbox)
    env = load_environment(spec)
    sandbox = Sandbox(env, root=sandbox_root(folder))
    _CREATED.append(sandbox)
    target = SandboxTarget(env, sandbox)
    target.env_path = spec  # the spec file, for CLI tests
    return target


def destroy_all() -> list[str]:
    """Destroy every sandbox the suite made; return the processes that survived (should be none)."""
    survivors = []
    for sandbox in _CREATED:
        try:
            sandbox.destroy()
        finally:
            survivors += processes_under(sandbox.root)
            shutil.rmtree(sandbox.root.parent, ignore_errors=True)
    _CREATED.clear()
    for folder, twin in _SCRATCHED:     # with the sandboxes made by the CLI or a service, stopped by their tests
        survivors += processes_under(twin)
        shutil.rmtree(twin, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)
    _SCRATCHED.clear()
    return survivors


# What a fixture needs, as a marker: a test using it (directly or through another fixture) is
# marked so, and `./dev test fast` leaves it out.
FIXTURE_NEEDS = {"prefect_harness": "prefect", "target": "postgres", "fresh_target": "postgres", "azurite": "azurite"}
FAST = os.environ.get("PCDB_TEST_FAST") == "1"   # ./dev test fast: no server of any kind


# The modules that take longest, with their seconds in a whole `./dev test` (2026-12-04, three
# workers, --junitxml). `./dev test` hands whole modules to its workers (pytest-xdist, --dist
# loadfile: a module's shared servers are made once) in collection order (--no-loadscope-reorder:
# xdist would order them by their number of tests): the longest first, so the short ones fill the
# end. Simulated on that run, the longest worker's share fell from 654 to 632 s, the even split.
# A module not listed weighs half a second a test that needs a server (0.01 s one that does not);
# a stale figure only orders less well.
MODULE_SECONDS = {
    "service/test_service.py": 426, "crash/test_crash_matrix.py": 258, "azure/test_upgrade_on_azure.py": 146,
    "flows/test_drills.py": 139, "azure/test_runbooks_on_azure.py": 135, "flows/test_install.py": 95,
    "service/test_server_fresh.py": 89, "health/test_health.py": 76, "maintenance/test_maintenance.py": 75,
    "flows/test_backup_verification.py": 60, "flows/test_upgrade.py": 58, "crash/test_supervisor.py": 37,
    "integration/test_sandbox_operations.py": 37, "integration/test_bad_specs.py": 34,
    "integration/test_warm_start.py": 25,     # measured alone, 2026-12-05 (its warm processes)
}


def pytest_configure(config):
    """Commands run cold in the tests, each exactly as its code says, whatever warm process a
    developer's `./dev up` keeps (cli/warm.py); tests/integration/test_warm_start.py runs them warm."""
    os.environ.setdefault("PCDB_WARM", "0")


def pytest_sessionstart(session):
    """Prefect's migrated, empty database made once, before the workers start (pcdb.prefectdb):
    each worker's harness and each new server then copies it instead of migrating its own."""
    if not FAST and not hasattr(session.config, "workerinput"):
        from pcdb.prefectdb import template_database

        template_database()


def pytest_collection_modifyitems(config, items):
    for item in items:
        for fixture in item.fixturenames:
            if fixture in FIXTURE_NEEDS:
                item.add_marker(FIXTURE_NEEDS[fixture])

    guess: dict[Path, float] = {}      # a module not listed: by its tests, and what they need
    for item in items:
        needs = any(item.get_closest_marker(m) for m in ("postgres", "prefect", "azurite"))
        guess[item.path] = guess.get(item.path, 0.0) + (0.5 if needs else 0.01)

    def weight(item) -> float:
        module = item.path.relative_to(Path(__file__).parent).as_posix()
        return -MODULE_SECONDS.get(module, guess[item.path])
    items.sort(key=weight)     # stable: each module's tests stay in their order, together


class UnmarkedServer(AssertionError):
    """A test run by `./dev test fast` started a server it is not marked for."""


def _refuse(what: str, marker: str):
    def refuse(*args, **kwargs):
        raise UnmarkedServer(f"this test {what} but is not marked `{marker}`: mark it (pytestmark = "
                             f"pytest.mark.{marker}) so that `./dev test fast` leaves it out")
    return refuse


if FAST:   # a test that needs a server and does not say so fails here, instead of slowing `fast` down
    from pcdb.sandbox.bootstrap import NodeMaker
    from pcdb.sandbox.node import Node

    Node.start = _refuse("starts PostgreSQL", "postgres")
    NodeMaker._initdb = _refuse("creates a PostgreSQL server", "postgres")
    os.environ["PREFECT_API_URL"] = "http://127.0.0.1:9/api"     # nothing listens: Prefect fails at once
    os.environ["PREFECT_CLIENT_MAX_RETRIES"] = "0"
    os.environ["PREFECT_SERVER_ALLOW_EPHEMERAL_MODE"] = "false"


@pytest.fixture(autouse=True)
def _environment_as_found():
    """Every test leaves the process's environment as it found it (what its module's and the
    session's fixtures set is part of what it found). A pcdb command run in this process sets the
    server's address and credential for the rest of its process, which is right for a command and
    wrong for a test worker: the next test on the worker inherited them, and a CLI process it
    started met the other server's credential (401, a red CI: 8277593)."""
    before = dict(os.environ)
    yield
    after = dict(os.environ)
    for name in after.keys() - before.keys():          # one by one: a thread still running never sees it empty
        del os.environ[name]
    for name, value in before.items():
        if after.get(name) != value:
            os.environ[name] = value


@pytest.fixture(autouse=True)
def _arm_as_specified():
    """Whatever a test did through the fake ARM, pcdb's requests and the fake's answers on a
    flexible server agree with Microsoft's REST specification (tests/azure/arm_spec.py)."""
    from tests.azure.fake_arm import FakeArm

    FakeArm.made.clear()
    yield
    problems = sorted({p for arm in FakeArm.made for p in arm.spec_problems})
    FakeArm.made.clear()
    assert problems == [], "differences from the REST specification:\n" + "\n".join(problems)


@pytest.fixture(scope="session", autouse=True)
def _cleanup_every_sandbox():
    """Whatever happens in the tests, every server started by the suite is stopped and removed."""
    yield
    survivors = destroy_all()
    shutil.rmtree(os.environ["PREFECT_HOME"], ignore_errors=True)
    shutil.rmtree(os.environ["PCDB_ORCHESTRATOR_HOME"], ignore_errors=True)
    assert survivors == [], f"servers left running after the suite: {survivors}"


@pytest.fixture(scope="session")
def prefect_harness():
    """One real Prefect API (temporary server, SQLite in PREFECT_HOME) for the whole session."""
    from prefect.logging.configuration import setup_logging

    if FAST:
        _refuse("starts a Prefect server", "prefect")()

    setup_logging()  # bind Prefect's handlers to the real stderr before a CliRunner swaps it
    with harness():
        # A pcdb command run in this process (CliRunner) reads the server's address from the
        # environment, as it does from a DBA's shell: it finds the harness there. Without it, the
        # command asked for a temporary server of its own with a credential of its own, and got
        # the harness only because Prefect keeps one such server per process.
        from prefect.settings import PREFECT_API_URL

        os.environ["PREFECT_API_URL"] = PREFECT_API_URL.value()
        try:
            yield
        finally:
            os.environ.pop("PREFECT_API_URL", None)


@contextmanager
def harness(timeout: int = 120):
    """Prefect's test harness on the server application pcdb runs (flows/serverapp.py, tied to
    this process) with its database already migrated (the tests' and the benchmarks')."""
    from prefect.testing.utilities import prefect_test_harness

    from flows.tempserver import tied_server_class

    with mock.patch("prefect.testing.utilities.mkdtemp", seeded_mkdtemp), \
            mock.patch("prefect.testing.utilities.SubprocessASGIServer", tied_server_class()), \
            prefect_test_harness(server_startup_timeout=timeout):
        yield


def seeded_mkdtemp(*args, **kwargs) -> str:
    """The harness's folder with its database already migrated (pcdb.prefectdb's template, as
    pcdb's own servers start): the harness names its database prefect-test.db in this folder."""
    from pcdb.prefectdb import seed_database

    folder = tempfile.mkdtemp(*args, **kwargs)
    seed_database(Path(folder) / "prefect-test.db")
    return folder


def installed_target() -> SandboxTarget:
    """A new sandbox brought up: HA pair, first backup, replica, database."""
    t = new_target()
    t.ensure_resource_group()
    t.ensure_server()
    t.ensure_replica()
    t.ensure_database()
    return t


@pytest.fixture(scope="session")
def target() -> SandboxTarget:
    """One installed sandbox (HA pair, replica, database) shared by the read-mostly tests."""
    return installed_target()


@pytest.fixture()
def fresh_target() -> SandboxTarget:
    """A sandbox of the test's own, destroyed when the test ends."""
    t = new_target()
    yield t
    t.sandbox.destroy()


def processes_under(root: Path) -> list[str]:
    """Command lines of the server user's processes that mention ``root``."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.stat(f"/proc/{pid}").st_uid != server_user().uid:
                continue
            args = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if str(root) in args:
            found.append(args)
    return found


def wait_until(predicate, what: str, timeout: float = 120, interval: float = 0.2):
    """The predicate's first true value, polled until the deadline; else the test fails saying what."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what} did not happen within {timeout:.0f}s")


def paused_run_id(timeout: float = 60):
    """The id of the flow run that paused for input (polled with a deadline)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
            if runs:
                return runs[0].id
            time.sleep(0.2)
    raise AssertionError("no flow run paused for input")


def next_request(run_id, answered: int = 0, timeout: float = 60) -> dict:
    """The decision a paused run waits on, newer than attempt ``answered``: after an answer the
    run asks again (a new attempt) and pauses again, polled with a deadline."""
    from flows.runbook import pending_request

    deadline = time.monotonic() + timeout
    while (waiting := pending_request(run_id)) is None or waiting["attempt"] <= answered:
        assert time.monotonic() < deadline, f"run {run_id} did not ask for a decision within {timeout:.0f}s"
        time.sleep(0.2)
    return waiting


def phase_summaries(result: dict) -> dict[int, str]:
    """The install result's phases as number -> summary ("unchanged", "16/16 checks passed")."""
    return {p["number"]: p["summary"] for p in result["phases"]}


class Receiver:
    """A real local HTTP endpoint that records what notification blocks post to it."""

    def __init__(self):
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, predicate, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [m for m in self.received if predicate(m)]
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError(f"no matching notification; received {self.received}")


class SmtpReceiver:
    """A real local SMTP server (aiosmtpd) that records the messages a notification sends."""

    def __init__(self):
        from aiosmtpd.controller import Controller

        received = self.received = []

        class Handler:
            async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
                from email import message_from_bytes

                message = message_from_bytes(envelope.content)
                received.append({"to": list(envelope.rcpt_tos), "subject": message["Subject"],
                                 "text": message.get_payload(decode=True).decode().strip()})
                return "250 OK"

        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()


NOBODY_READS = """import json, sys
out = {}
for path in json.loads(sys.argv[1]):
    try:
        with open(path, "rb") as handle:
            handle.read(1)
        out[path] = "read"
    except OSError as exc:
        out[path] = type(exc).__name__
print(json.dumps(out))
"""


def read_as_nobody(paths: list[Path]) -> dict[str, str]:
    """Try to read each file as the unprivileged user ``nobody``: path -> "read" or the error."""
    if os.geteuid() != 0:
        pytest.skip("reading as another local user needs root to switch to it")
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    result = subprocess.run([python, "-c", NOBODY_READS, json.dumps([str(p) for p in paths])], user="nobody",
                            group="nogroup", extra_groups=[], capture_output=True, text=True, timeout=60,
                            check=True, cwd="/")
    return json.loads(result.stdout)


NOBODY_CALLS = """import json, sys, urllib.error, urllib.request
out = []
for method, url, body in json.loads(sys.argv[1]):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            out.append(reply.status)
    except urllib.error.HTTPError as exc:
        out.append(exc.code)
print(json.dumps(out))
"""


def call_as_nobody(calls: list[tuple[str, str, dict | None]]) -> list[int]:
    """HTTP calls (method, url, JSON body) made by the unprivileged user ``nobody``, who cannot
    read pcdb's credential: the status of each."""
    if os.geteuid() != 0:
        pytest.skip("calling as another local user needs root to switch to it")
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    result = subprocess.run([python, "-c", NOBODY_CALLS, json.dumps(calls)], user="nobody", group="nogroup",
                            extra_groups=[], capture_output=True, text=True, timeout=120, check=True, cwd="/")
    return json.loads(result.stdout)


class Signers:
    """OpenSSH keys made for a test's people (ssh-keygen, ed25519), and the spec lines that name them."""

    def __init__(self, names: list[str] | tuple[str, ...]):
        self.folder = Path(tempfile.mkdtemp(prefix="pcdb-keys-"))
        atexit.register(shutil.rmtree, self.folder, True)      # private keys: never left behind
        self.keys: dict[str, Path] = {}
        for i, name in enumerate(names):
            path = self.folder / f"key{i}"
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@test", "-f", str(path)],
                           check=True, timeout=30)
            self.keys[name] = path

    def line(self, name: str) -> str:
        return Path(f"{self.keys[name]}.pub").read_text().strip()

    def yaml(self) -> str:
        """The decisions section: only signed decisions, these people's keys."""
        return "decisions:\n  unsigned: refused\n  signers:\n" + "".join(
            f"    {name}: {self.line(name)}\n" for name in self.keys)

    def sign(self, name: str, message: str) -> str:
        """What `ssh-keygen -Y sign -n pcdb` makes of ``message`` with ``name``'s key."""
        path = self.folder / "message"
        path.write_text(message)
        Path(f"{path}.sig").unlink(missing_ok=True)
        subprocess.run(["ssh-keygen", "-Y", "sign", "-n", "pcdb", "-f", str(self.keys[name]), str(path)],
                       check=True, capture_output=True, timeout=30)
        return Path(f"{path}.sig").read_text()


def production_spec(base: Path, signers: Signers, name: str = "prodlike") -> Path:
    """A production-mode spec over ``base``'s sandbox: signed decisions only, the orchestrator's
    credential from a file (production never generates it)."""
    secret = base.parent / "orchestrator-auth"
    secret.write_text("pcdb:production-test-credential\n")
    os.chmod(secret, 0o600)
    key = base.parent / "orchestrator-key"
    key.write_text("Xq7Pq3m6cZ2m2Y0sS0n3Qm1dX3pW6xY9eK2bL4nH8jE=\n")
    os.chmod(key, 0o600)
    path = base.parent / f"{name}.yaml"
    path.write_text(f"extends: {base}\nproduction: true\nnotifications:\n  local_sink: false\n{signers.yaml()}"
                    f"orchestrator:\n  auth: {{file: {secret}}}\n  encryption_key: {{file: {key}}}\n")
    return path
