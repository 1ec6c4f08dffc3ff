"""The pcdb command's warm start (cli/warm.py): a command forked from a process that imported
everything already says, does and ends exactly as the same command run cold; it serves only its
own user and only the code it imported.

`pcdb preflight` is the command here: it needs no server, its answer depends on the caller's
environment and working folder, and a secret kept in a named pipe holds it at a known point for
as long as a test wants (until something writes to the pipe)."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

from cli import warm
from pcdb.process import alive
from pcdb.sandbox import proc
from tests.conftest import wait_until

# The console script's entry point, with SIGINT as an interactive shell leaves it (a test run
# started in a script's background would hand it on ignored).
PCDB = [sys.executable, "-c", "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "sys.argv[0] = 'pcdb'; from cli.warm import main; main()"]
SPEC = """extends: {deployments}/local.yaml
name: warm
sandbox:
  root: {folder}/sb
security:
  roles:
    product_change_app: {{password: {secret}}}
"""


@contextmanager
def home(folder: Path):
    """This process's HOME for a moment: the warm process of that HOME is the one cli.warm finds."""
    before = os.environ.get("HOME")
    os.environ["HOME"] = str(folder)
    try:
        yield
    finally:
        os.environ["HOME"] = before or ""


def start_warm(folder: Path) -> int:
    folder.mkdir(mode=0o700, exist_ok=True)
    with home(folder):
        action, said = warm.start()
        assert action == "started", said
        assert warm.answers(within=120), Path(warm.log_file()).read_text()     # as `server up` waits
        return warm.running_pid()


@contextmanager
def warm_process():
    """A warm process of its own HOME, stopped and removed however the test ends."""
    root = Path(tempfile.mkdtemp(prefix="pcdb-warm-", dir="/tmp"))     # a unix socket's path is short
    folder = root / "home"
    try:
        yield folder, start_warm(folder)
    finally:
        with home(folder):
            warm.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def warm_home():
    with warm_process() as (folder, _):
        yield folder


def pcdb(*args: str, folder: Path, cwd: Path, warm_home: Path | None, extra: dict | None = None):
    """The command as a person runs it: warm with ``warm_home`` as HOME, else cold."""
    env = {k: v for k, v in os.environ.items() if k != "PCDB_WARM"} | (extra or {})
    env |= {"HOME": str(warm_home)} if warm_home else {"PCDB_WARM": "0", "HOME": str(folder)}
    return subprocess.run([*PCDB, *args], cwd=cwd, env=env, check=False, capture_output=True, text=True, timeout=300)


def served(warm_home: Path) -> list[str]:
    with home(warm_home):
        return [line for line in Path(warm.log_file()).read_text().splitlines() if " runs `" in line]


def spec_in(folder: Path, secret: str) -> Path:
    path = folder / "spec.yaml"
    path.write_text(SPEC.format(deployments=Path(__file__).resolve().parents[2] / "deployments", folder=folder,
                                secret=secret))
    return path


def test_a_warm_command_says_and_exits_exactly_as_the_same_command_cold(warm_home, tmp_path):
    """The same output, error output and exit status, with the caller's environment (a secret
    set or not) and working folder (a relative spec path); and it did run warm."""
    spec_in(tmp_path, "{env: PCDB_WARM_TEST_APP_PASSWORD}")
    password = {"PCDB_WARM_TEST_APP_PASSWORD": secrets.token_urlsafe(24) + "aA1!"}
    before = len(served(warm_home))
    outcomes = {}
    for case, extra in (("no secret", {}), ("secret", password)):
        for side in ("cold", "warm"):
            r = pcdb("preflight", "--env", "spec.yaml", "--json", folder=tmp_path, cwd=tmp_path,
                     warm_home=warm_home if side == "warm" else None, extra=extra)
            outcomes[case, side] = (r.returncode, r.stdout, r.stderr)
        assert outcomes[case, "warm"] == outcomes[case, "cold"], case
    assert outcomes["no secret", "cold"][0] == 1 and "PCDB_WARM_TEST_APP_PASSWORD is not set" in outcomes[
        "no secret", "cold"][1]
    assert outcomes["secret", "cold"][0] == 0 and '"ok": true' in outcomes["secret", "cold"][1]
    missing = [pcdb("preflight", "--env", "missing.yaml", folder=tmp_path, cwd=tmp_path, warm_home=w)
               for w in (None, warm_home)]
    assert missing[0].returncode == missing[1].returncode == 1
    assert missing[0].stderr == missing[1].stderr and "missing.yaml" in missing[0].stderr
    assert len(served(warm_home)) - before == 3 and all("runs `preflight`" in line for line in served(warm_home))


def blocked_reading(pipe: Path) -> int | None:
    """A writer's end of the pipe once a command waits to read it (none before: ENXIO)."""
    try:
        return os.open(pipe, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return None


@contextmanager
def waiting_for_its_secret(folder: Path, warm_home: Path | None, ignore_sigint: bool = False, **popen):
    """`pcdb preflight` (warm with ``warm_home``, else cold) held reading its secret from a named
    pipe: yields the process and, warm, the pid of the command's process. The pipe's writer is
    open meanwhile (the command waits on); closed after, the command reads an empty secret."""
    pipe = folder / "app-password"
    if not pipe.exists():
        os.mkfifo(pipe, 0o600)
        spec_in(folder, f"{{file: {pipe}}}")
    handler = "signal.SIG_IGN" if ignore_sigint else "signal.default_int_handler"
    argv = [sys.executable, "-c", f"import signal, sys; signal.signal(signal.SIGINT, {handler}); "
            "sys.argv[0] = 'pcdb'; from cli.warm import main; main()", "preflight", "--env", "spec.yaml"]
    env = {k: v for k, v in os.environ.items() if k != "PCDB_WARM"}
    env |= {"HOME": str(warm_home)} if warm_home else {"PCDB_WARM": "0", "HOME": str(folder)}
    command = subprocess.Popen(argv, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               **popen)
    writer = wait_until(lambda: blocked_reading(pipe), "the command waits for its secret", timeout=120, interval=0.05)
    try:
        child = None
        if warm_home:
            runs = served(warm_home)[-1]
            assert runs.endswith(f"for pid {command.pid}")
            child = int(runs.split()[3])
        yield command, child
    finally:
        os.close(writer)


def state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]


def test_ctrl_c_ends_the_command_as_it_ends_a_cold_one_and_a_killed_pcdb_takes_its_command_along(warm_home,
                                                                                                  tmp_path):
    ended = {}
    for side in ("cold", "warm"):
        with waiting_for_its_secret(tmp_path, warm_home if side == "warm" else None) as (command, _):
            command.send_signal(signal.SIGINT)
            _, stderr = command.communicate(timeout=60)
        ended[side] = (command.returncode, stderr.strip().splitlines()[-1:])
    assert ended["warm"] == ended["cold"] and ended["warm"][0] != 0, ended

    with waiting_for_its_secret(tmp_path, warm_home) as (command, child):
        assert alive(child)
        command.kill()
        command.wait(timeout=60)
        wait_until(lambda: not alive(child), "the command's process ends with pcdb", timeout=60, interval=0.05)


def test_ctrl_z_stops_the_command_with_pcdb_and_fg_resumes_both(warm_home, tmp_path):
    """As a shell runs a job: a process group of its own, whose parent (here the test) is in the
    same session, so that the kernel stops it on SIGTSTP."""
    with waiting_for_its_secret(tmp_path, warm_home, process_group=0) as (command, child):
        command.send_signal(signal.SIGTSTP)
        wait_until(lambda: state(command.pid) == "T" and state(child) == "T", "both stopped", timeout=60,
                   interval=0.05)
        command.send_signal(signal.SIGCONT)
        wait_until(lambda: state(command.pid) != "T" and state(child) != "T", "both resumed", timeout=60,
                   interval=0.05)
    stdout, stderr = command.communicate(timeout=60)            # the secret is empty: it ends on that
    assert command.returncode == 1 and "is empty" in stdout, (stdout, stderr)


def test_a_ctrl_z_the_kernel_discards_leaves_the_command_running_as_it_leaves_pcdb(warm_home, tmp_path):
    """In a session of its own nothing could resume a stopped pcdb, so the kernel discards its
    SIGTSTP (an orphaned process group): pcdb runs on, and its command must not stay stopped."""
    with waiting_for_its_secret(tmp_path, warm_home, start_new_session=True) as (command, child):
        command.send_signal(signal.SIGTSTP)
    stdout, stderr = command.communicate(timeout=60)            # ends on its empty secret: never stopped
    assert command.returncode == 1 and "is empty" in stdout, (stdout, stderr)


def test_a_signal_pcdb_was_started_ignoring_its_command_ignores_too(warm_home, tmp_path):
    """Whatever a script starts in the background starts with SIGINT ignored, and a cold command
    keeps ignoring it; the warm command's process is started the same."""
    with waiting_for_its_secret(tmp_path, warm_home, ignore_sigint=True) as (command, child):
        status = Path(f"/proc/{child}/status").read_text()
        ignored = int(next(line for line in status.splitlines() if line.startswith("SigIgn:")).split()[1], 16)
        assert ignored & (1 << (signal.SIGINT - 1))
        command.send_signal(signal.SIGINT)
    stdout, stderr = command.communicate(timeout=60)            # ends on its empty secret, not on SIGINT
    assert command.returncode == 1 and "is empty" in stdout, (stdout, stderr)


def test_a_warm_process_of_other_code_stops_and_the_command_runs_cold(tmp_path):
    """A request fingerprinted by other code (pcdb changed on disk since the warm process
    started) is answered "stale"; the warm process stops and the command runs cold."""
    with warm_process() as (folder, pid), home(folder):
        sock = warm._connect()
        warm._send(sock, {"argv": ["preflight"], "env": {}, "cwd": "/", "umask": 0o077, "code": "other code"},
                   [0, 1, 2])
        assert sock.makefile("rb").readline() == b"stale\n"
        sock.close()
        wait_until(lambda: not alive(pid), "the stale warm process ends", timeout=60, interval=0.05)
        assert not Path(warm.socket_path()).exists() and warm.ready() is None
        spec_in(tmp_path, "{env: PCDB_WARM_TEST_APP_PASSWORD}")
        result = pcdb("preflight", "--env", "spec.yaml", "--json", folder=tmp_path, cwd=tmp_path, warm_home=folder)
        assert result.returncode == 1 and "PCDB_WARM_TEST_APP_PASSWORD is not set" in result.stdout
        assert "runs `preflight`" not in Path(warm.log_file()).read_text()         # it ran cold


def test_a_command_that_may_prompt_is_never_forked_even_when_asked(warm_home):
    """`pcdb` never sends one (approve may ask for a key's passphrase on a terminal, which a
    forked process has not); the warm process refuses one too."""
    assert not warm.warm_command(["approve", "--env", "prod"]) and not warm.warm_command(["install", "--help"])
    assert warm.warm_command(["install", "--env", "local"]) and warm.warm_command(["incident", "status"])
    assert not warm.warm_command(["incident", "ack"]) and not warm.warm_command(["health", "silence"])
    with home(warm_home):
        sock = warm._connect()
        warm._send(sock, {"argv": ["approve", "--env", "prod"], "env": {}, "cwd": "/", "umask": 0o077,
                          "code": warm.code_fingerprint()}, [0, 1, 2])
        assert sock.makefile("rb").readline() == b"cold\n"
        sock.close()
        assert warm.ready() == warm.code_fingerprint()                      # and it serves on
        assert "runs `approve`" not in Path(warm.log_file()).read_text()


def test_server_down_stops_the_warm_process_unless_pcdb_warm_is_0(tmp_path):
    """`PCDB_WARM=0` leaves it alone both ways (the tests' `server down`s never stop a developer's)."""
    spec_in(tmp_path, "{env: PCDB_WARM_TEST_APP_PASSWORD}")
    with warm_process() as (folder, pid), home(folder):
        env = {k: v for k, v in os.environ.items() if k != "PCDB_WARM"}
        down = [*PCDB, "server", "down", "--env", "spec.yaml"]
        left = subprocess.run(down, cwd=tmp_path, env=env | {"PCDB_WARM": "0"}, capture_output=True, text=True,
                              timeout=120, check=False)
        assert left.returncode == 0 and "warm start" not in left.stdout and warm.ready() == warm.code_fingerprint()
        stopped = subprocess.run(down, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert stopped.returncode == 0 and f"warm start (pid {pid})" in stopped.stdout, stopped.stderr
        assert not alive(pid) and warm.ready() is None


def test_server_up_says_at_once_when_its_warm_process_ends_without_answering(monkeypatch):
    """`server up` waits for the warm process it started, but not for one that has ended (here:
    a look interval that is not a number): its row says commands start cold and where the log says why."""
    from cli import server
    from pcdb.changes import Change

    monkeypatch.setenv("PCDB_WARM_LOOK_EVERY", "soon")
    monkeypatch.setattr(server, "WARM_WAIT", 3600.0)     # waited out, the test would time out instead
    root = Path(tempfile.mkdtemp(prefix="pcdb-warm-", dir="/tmp"))
    try:
        with home(root / "home"):
            action, said = warm.start()
            assert action == "started", said
            [row] = server.warm_answers([Change("warm_start", "pcdb commands", action, notes=(said,))])
            assert row.action == "started" and row.notes[0] == said
            assert row.notes[1].startswith("not answering after 3600 s: commands start cold")
            assert warm.log_file() in row.notes[1]
            assert "PCDB_WARM_LOOK_EVERY='soon' is not a number" in Path(warm.log_file()).read_text()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_warm_process_whose_socket_is_gone_stops_by_itself(monkeypatch):
    """Its folder removed (a test's HOME, a cleaned cache) or its socket taken by a newer one: it
    ends at its next look instead of holding its memory for good."""
    monkeypatch.setenv("PCDB_WARM_LOOK_EVERY", "0.2")
    with warm_process() as (folder, pid), home(folder):
        Path(warm.socket_path()).unlink()
        wait_until(lambda: not alive(pid), "the warm process without a socket ends", timeout=60, interval=0.05)
        assert "its socket is gone: stopping" in Path(warm.log_file()).read_text()


def test_only_its_owner_reaches_the_warm_process(warm_home):
    """Its folder is the owner's alone and its files are 0600; another local user cannot connect,
    and one let in by a careless chmod is refused by the warm process itself (SO_PEERCRED)."""
    with home(warm_home):
        path = Path(warm.socket_path())
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (path.parent, path, Path(warm.log_file()))}
        assert modes == {path.parent.name: 0o700, path.name: 0o600, Path(warm.log_file()).name: 0o600}
        other = proc.server_user()
        if other.is_self:
            pytest.skip("needs root, to act as another user")
        knock = ["/usr/bin/python3", "-c", "import socket, sys; s = socket.socket(socket.AF_UNIX); "
                 "s.connect(sys.argv[1]); print(repr(s.recv(100)))", str(path)]
        above = [warm_home.parent, warm_home, warm_home / ".cache", warm_home / ".cache" / "pcdb"]
        modes = {p: stat.S_IMODE(p.stat().st_mode) for p in [*above, path.parent, path]}
        try:
            for p in above:                     # every folder above passable: the warm folder alone stops it
                p.chmod(0o711)
            refused = subprocess.run(knock, check=False, capture_output=True, text=True, timeout=60, **other.popen)
            path.parent.chmod(0o711)            # a careless chmod: the warm process must refuse by itself
            path.chmod(0o777)
            let_in = subprocess.run(knock, check=False, capture_output=True, text=True, timeout=60, **other.popen)
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        assert refused.returncode != 0 and "PermissionError" in refused.stderr
        assert let_in.returncode == 0 and let_in.stdout.strip() == "b''", let_in.stderr   # closed without a word
        assert "refused a connection from another user" in Path(warm.log_file()).read_text()
        assert warm.ready() == warm.code_fingerprint()                      # and still serving its owner


def test_the_command_sends_nothing_to_a_warm_process_in_a_folder_others_may_enter(tmp_path):
    """Its folder opened to others (anyone could have put a socket there): `pcdb` does not
    connect, the command runs cold; and the peer's uid is read as the kernel gives it."""
    with warm_process() as (folder, _), home(folder):
        assert warm.ready() == warm.code_fingerprint()
        spec_in(tmp_path, "{env: PCDB_WARM_TEST_APP_PASSWORD}")
        Path(warm.folder()).chmod(0o777)
        try:
            assert warm.ready() is None
            result = pcdb("preflight", "--env", "spec.yaml", "--json", folder=tmp_path, cwd=tmp_path,
                          warm_home=folder)
        finally:
            Path(warm.folder()).chmod(0o700)
        assert result.returncode == 1 and "PCDB_WARM_TEST_APP_PASSWORD is not set" in result.stdout
        assert "runs `preflight`" not in Path(warm.log_file()).read_text()         # it ran cold
    a, b = socket.socketpair()
    with a, b:
        assert warm._peer(a)[1:] == (os.getuid(), os.getgid())


def test_the_code_fingerprint_changes_with_any_file_of_the_packages(tmp_path, monkeypatch):
    """A copy of the packages: an edited file (its time or its size) makes another fingerprint,
    as does a new file; the same tree makes the same one."""
    for package in warm.PACKAGES:
        shutil.copytree(Path(warm.ROOT) / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(warm, "ROOT", str(tmp_path))
    first = warm.code_fingerprint()
    assert warm.code_fingerprint() == first
    edited = tmp_path / "pcdb" / "process.py"
    os.utime(edited, ns=(edited.stat().st_atime_ns, edited.stat().st_mtime_ns + 1))
    second = warm.code_fingerprint()
    (tmp_path / "flows" / "new.py").write_text("")
    assert len({first, second, warm.code_fingerprint()}) == 3
