"""The persistent Prefect server and its workers as processes pcdb starts, finds and stops.

Plain Python (no prefect import): processes, pid files, ports and the server's /api/health.
What is registered *inside* Prefect (work pools, deployments, automations) is flows/service.py.

One server serves every environment whose spec names the same orchestrator home and port (a
fleet: ``local`` and a spec extending it share it); each environment has its own work pool
``pcdb-<env>`` and a process worker polling it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from pcdb import clock
from pcdb import secrets as pw
from pcdb.changes import Change
from pcdb.config import Environment, OrchestratorTls, SecretRef
from pcdb.errors import PcdbError, SecretError
from pcdb.prefectdb import seed_database
from pcdb.private import audit, private_dir, write_private
from pcdb.process import alive
from pcdb.secrets import KeyVaultReader, read_or_create_value


class OrchestratorError(PcdbError):
    """The Prefect server or a worker could not be started, reached or stopped."""


def default_home() -> Path:
    """Where the orchestrator keeps its database, logs and pid files, unless the spec or
    $PCDB_ORCHESTRATOR_HOME says otherwise (beside the sandboxes, /var/lib/pcdb as root)."""
    if os.geteuid() == 0:
        return Path("/var/lib/pcdb/prefect")
    base = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state"))
    return base / "pcdb" / "prefect"


@dataclass(frozen=True)
class ServerConfig:
    """Where an environment's Prefect server runs and what it stores its history in."""

    home: Path
    host: str
    port: int
    database_url: str | None  # None: SQLite in home; else a PostgreSQL URL (never printed)
    backend: str              # sqlite | postgresql
    managed_postgres: bool    # the sandbox engine runs the backend cluster under home/postgres
    auth: SecretRef = field(default_factory=lambda: SecretRef(generate=True))
    encryption_key: SecretRef = field(default_factory=lambda: SecretRef(generate=True))
    tls: OrchestratorTls | None = None

    @property
    def serves_tls(self) -> bool:
        return self.tls is not None and self.tls.cert_file is not None

    @property
    def url(self) -> str:
        """The API URL every client and worker on this machine uses."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"{'https' if self.serves_tls else 'http'}://{host}:{self.port}/api"

    @property
    def ui_url(self) -> str:
        """Where a person opens the UI: the TLS proxy in front of the server, or the server itself."""
        if self.tls is not None and self.tls.proxy_url:
            return self.tls.proxy_url.rstrip("/")
        return self.url.removesuffix("/api")

    @property
    def ca_file(self) -> str | None:
        """What clients verify a self-served TLS certificate with."""
        return (self.tls.ca_file or self.tls.cert_file) if self.serves_tls else None

    @property
    def secrets_dir(self) -> Path:
        return self.home / "secrets"

    def credentials(self, key_vault: KeyVaultReader | None = None) -> tuple[str, str]:
        """(the API's auth string 'user:password', the blocks' Fernet key) from their sources;
        the generated ones made once into the home's secrets folder (0600 in 0700).

        Raises:
            SecretError: a source cannot be read (by this user), or a value has the wrong form.
        """
        auth = _resolve(self.auth, self.secrets_dir / "prefect-auth", lambda: "pcdb:" + secrets.token_urlsafe(24),
                        key_vault)
        if ":" not in auth or auth.startswith(":") or auth.endswith(":"):
            raise SecretError(f"the orchestrator's auth from {self.auth.describe()} must be 'user:password'")
        if self.encryption_key.generate and not (self.secrets_dir / "prefect-encryption-key").exists():
            kept = _database_key(self)                # a database made before pcdb kept the key apart
            if kept:
                read_or_create_value(self.secrets_dir / "prefect-encryption-key", lambda: kept)
                _forget_database_key(self)
        key = _resolve(self.encryption_key, self.secrets_dir / "prefect-encryption-key",
                       lambda: base64.urlsafe_b64encode(os.urandom(32)).decode(), key_vault)
        try:
            if len(base64.urlsafe_b64decode(key.encode())) != 32:
                raise ValueError
        except ValueError:
            raise SecretError(f"the orchestrator's encryption key from {self.encryption_key.describe()} is not a "
                              "Fernet key (32 bytes, url-safe base64)") from None
        return auth, key

    def client_env(self, key_vault: KeyVaultReader | None = None) -> dict[str, str]:
        """What a client of this server (the CLI, a worker, a flow run) needs to reach it."""
        env = {"PREFECT_API_URL": self.url, "PREFECT_API_AUTH_STRING": self.credentials(key_vault)[0]}
        if self.ca_file:
            env["PREFECT_API_SSL_CERT_FILE"] = self.ca_file
        return env

    def run_url(self, run_id: object) -> str:
        """The UI page of one flow run."""
        return f"{self.ui_url}/runs/flow-run/{run_id}"


def spool_path(env: Environment) -> Path:
    """Where ledger records wait when the ledger's server cannot take them (the orchestrator's home)."""
    return server_config(env).home / "ledger-spool" / f"{env.name}.jsonl"


def server_config(env: Environment) -> ServerConfig:
    """The orchestrator an environment's runbooks report to (spec section ``orchestrator``).

    $PREFECT_API_DATABASE_CONNECTION_URL, when set, names the PostgreSQL backend (Prefect's own
    setting); $PCDB_ORCHESTRATOR_HOME and $PCDB_PREFECT_PORT override home and port."""
    spec = env.orchestrator
    home = Path(os.environ.get("PCDB_ORCHESTRATOR_HOME") or spec.home or default_home()).absolute()
    port = int(os.environ.get("PCDB_PREFECT_PORT") or spec.port)
    url = os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL")
    managed = url is None and spec.database == "sandbox-postgres"
    if url is None and spec.database == "sandbox-postgres":
        url = f"postgresql+asyncpg://prefect@/prefect?host={home / 'postgres' / 'run'}&port={port + 1}"
    backend = "postgresql" if url and url.startswith("postgresql") else "sqlite"
    return ServerConfig(home, spec.host, port, url, backend, managed, spec.auth, spec.encryption_key, spec.tls)


def _resolve(ref: SecretRef, generated: Path, make, key_vault: KeyVaultReader | None) -> str:
    """An orchestrator secret from its source (never a Prefect block: it unlocks them)."""
    if ref.env:
        return pw.from_env(ref.env)
    if ref.file:
        return pw.from_file(ref.file)
    if ref.key_vault:
        if key_vault is None:
            from pcdb.keyvault import read_secret as key_vault
        return key_vault(ref.key_vault.vault, ref.key_vault.secret)
    return pw.read_or_create_value(generated, make)


def _database_key(config: ServerConfig) -> str | None:
    """The Fernet key Prefect stored in its own database when it ran without one given (SQLite)."""
    path = config.home / "prefect.db"
    if config.backend != "sqlite" or not path.exists():
        return None
    import sqlite3

    with contextlib.closing(sqlite3.connect(path)) as db:
        try:
            row = db.execute("SELECT value FROM configuration WHERE key = 'ENCRYPTION_KEY'").fetchone()
        except sqlite3.OperationalError:
            return None
    return json.loads(row[0]).get("fernet_key") if row else None


def _forget_database_key(config: ServerConfig) -> None:
    import sqlite3

    with contextlib.closing(sqlite3.connect(config.home / "prefect.db")) as db, db:
        db.execute("DELETE FROM configuration WHERE key = 'ENCRYPTION_KEY'")


def _now() -> str:
    return clock.now().isoformat(timespec="seconds")


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _holder_of(port: int) -> str:
    """Which process listens on ``port`` (from /proc), for the 'port taken' message."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == "0A":  # LISTEN
                inodes.add(cols[9])
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
                    return f"pid {pid}: {cmd[:120]}"
        except OSError:
            continue
    return "another program"


def _private_log(path: Path, own_folder: bool = True):
    """A log file opened for appending, readable by its owner only (its folder made 0700 unless
    it is the home, whose mode secure_home sets)."""
    if own_folder:
        private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "ab")


def _prefect_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "prefect", *args]


def _stop_pid(pid: int, timeout: float = 20) -> bool:
    """SIGTERM the process group, escalate to SIGKILL after ``timeout``; True when it was running."""
    return bool(_stop_pids([pid], timeout))


def _stop_pids(pids: list[int], timeout: float = 20) -> set[int]:
    """SIGTERM each process group at once, wait for all of them together, SIGKILL those still
    running after ``timeout`` (and wait for that too); returns the pids that were running. One
    deadline for all: three workers busy with a run each take 20 s to stop, not 60."""
    running = set()
    for pid in pids:
        if alive(pid):
            try:
                os.killpg(pid, signal.SIGTERM)
                running.add(pid)
            except ProcessLookupError:
                pass
    left = _wait_gone(running, timeout)
    for pid in left:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _wait_gone(left, 5)                  # a SIGKILL is final; its delivery takes a moment
    return running


def _wait_gone(pids: set[int], timeout: float) -> set[int]:
    """Wait until none of ``pids`` runs, or ``timeout``; returns those still running."""
    deadline = time.monotonic() + timeout
    waiting = set(pids)
    while waiting:
        for pid in list(waiting):
            try:
                os.waitpid(pid, os.WNOHANG)  # reap our own child (tests start and stop in one process)
            except ChildProcessError:
                pass
            if not alive(pid):
                waiting.discard(pid)
        if not waiting or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return waiting


def environment_privacy(env: Environment) -> list[str]:
    """Anything of an environment's that others could read: its reports (with the recoveries'
    exported rows), incident records, and the health and capacity stores."""
    home = server_config(env).home
    return audit([(env.reports_path, 0o700, 0o600), (home / "incidents" / env.name, 0o700, 0o600),
                  (home / "health", 0o700, 0o600), (home / "capacity", 0o700, 0o600),
                  (home / "ledger-spool", 0o700, 0o600)])


class Orchestrator:
    """Start, find and stop one Prefect server (with its UI) and the workers of its pools."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.home = config.home

    # -- files -----------------------------------------------------------------------------

    @property
    def pid_file(self) -> Path:
        return self.home / "server.json"

    @property
    def log_file(self) -> Path:
        return self.home / "server.log"

    def worker_file(self, pool: str) -> Path:
        return self.home / "workers" / f"{pool}.json"

    def _read(self, path: Path) -> dict | None:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def _write(self, path: Path, data: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)   # the home's mode is secure_home's to set
        tmp = write_private(path.with_suffix(".tmp"), json.dumps(data, indent=2) + "\n", folder_mode=None)
        os.replace(tmp, path)

    @property
    def database_file(self) -> Path:
        """Prefect's SQLite database (flow runs, logs, artifacts, encrypted blocks)."""
        return self.home / "prefect.db"

    @property
    def home_mode(self) -> int:
        """0700; 0711 when the sandbox engine runs the backend cluster under it (its server user
        must pass through, to its own 0700 folder, without listing anything)."""
        return 0o711 if self.config.managed_postgres else 0o700

    def secure_home(self) -> None:
        """The home private and Prefect's database 0600: they hold every run's history and blocks."""
        private_dir(self.home)
        os.chmod(self.home, self.home_mode)
        for path in (self.database_file, *self.home.glob("prefect.db-*")):
            if path.exists():
                os.chmod(path, 0o600)

    def privacy_problems(self) -> list[str]:
        """Anything of the orchestrator's that others could read."""
        return audit([(self.home, self.home_mode, None), (self.database_file, 0o600, None),
                      (self.log_file, 0o600, None), (self.home / "workers", 0o700, 0o600)])

    # -- server ----------------------------------------------------------------------------

    def healthy(self, timeout: float = 2.0) -> bool:
        """The API answers /health (whoever started it)."""
        context = ssl.create_default_context(cafile=self.config.ca_file) if self.config.ca_file else None
        try:
            with urllib.request.urlopen(f"{self.config.url}/health", timeout=timeout, context=context) as reply:
                return reply.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def server_pid(self) -> int | None:
        """The pid of the server pcdb started here, when it is still running."""
        info = self._read(self.pid_file)
        if info and alive(int(info["pid"])):
            return int(info["pid"])
        return None

    def is_up(self) -> bool:
        """Our server is running and its API answers."""
        return self.server_pid() is not None and self.healthy()

    def server_env(self) -> dict[str, str]:
        """The environment of the server process. Whatever the operator set for Prefect is passed
        through (defaults included: INFO logs); pcdb sets only what it owns: the home, where it
        listens, the URLs, the API's credential, the blocks' encryption key, and analytics off
        (the server never reports to Prefect's telemetry, as ``prefect server start
        --analytics-off`` ran it before pcdb started the application itself)."""
        auth, key = self.config.credentials()
        env = {**os.environ}
        for name, default in (("PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT", "false"),
                              ("PREFECT_LOGGING_LEVEL", "INFO")):
            env.setdefault(name, default)
        env.update({
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_HOME": str(self.home),
            "PREFECT_SERVER_API_HOST": self.config.host,
            "PREFECT_SERVER_API_PORT": str(self.config.port),
            # The UI calls this URL from the browser: without it, a non-default port shows
            # "Oops. Something went wrong"; behind a TLS proxy it is the proxy's.
            "PREFECT_UI_API_URL": f"{self.config.ui_url}/api",
            "PREFECT_API_URL": self.config.url,
            "PREFECT_SERVER_API_AUTH_STRING": auth,     # every request, the UI's too, must carry it
            "PREFECT_API_AUTH_STRING": auth,            # the server's own calls to its API
            "PREFECT_SERVER_ENCRYPTION_KEY": key,       # blocks encrypted with a key not kept beside them
        })
        if self.config.ca_file:
            env["PREFECT_API_SSL_CERT_FILE"] = self.config.ca_file
        if self.config.database_url:
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = self.config.database_url
        return env

    def server_command(self) -> list[str]:
        """Prefect's server application under uvicorn, as ``prefect server start`` runs it, through
        pcdb's factory (flows/serverapp.py: a request the busy SQLite database refused is asked
        again inside the server, instead of after the client's 2 s back-off); with TLS, the
        certificate (``prefect server start`` has no TLS option)."""
        command = [sys.executable, "-m", "uvicorn", "--factory", "flows.serverapp:create_app",
                   "--host", self.config.host, "--port", str(self.config.port), "--timeout-keep-alive", "5",
                   "--log-level", os.environ.get("PREFECT_SERVER_LOGGING_LEVEL", "warning").lower()]
        if self.config.serves_tls:
            command += ["--ssl-certfile", self.config.tls.cert_file, "--ssl-keyfile", self.config.tls.key_file]
        return command

    def up(self, timeout: float = 180) -> Change:
        """Start the server unless it runs; wait until /api/health answers.

        Raises:
            OrchestratorError: the port is taken by something else, or the server did not
                answer within ``timeout`` (the message names its log).
        """
        if self.is_up():
            self.secure_home()
            return Change("prefect_server", self.config.ui_url, "unchanged",
                          notes=(f"pid {self.server_pid()}, {self.config.backend}",))
        stale = self.server_pid()
        if stale:  # ours, but not answering: restart it
            _stop_pid(stale)
        if not _port_free(self.config.host, self.config.port):
            raise OrchestratorError(
                f"port {self.config.port} on {self.config.host} is already taken by {_holder_of(self.config.port)}; "
                f"stop it, or give the Prefect server another port (orchestrator.port in the spec, or "
                f"PCDB_PREFECT_PORT). Nothing was started")
        if self.config.backend == "sqlite":
            seed_database(self.database_file)   # a new home: Prefect's schema already migrated
        self.secure_home()
        log = _private_log(self.log_file, own_folder=False)
        try:
            child = subprocess.Popen(
                self.server_command(), env={**self.server_env(), "PREFECT__SERVER_FINAL": "1"}, cwd=self.home,
                stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True, umask=0o077)   # prefect.db: 0600
        finally:
            log.close()
        self._write(self.pid_file, {"pid": child.pid, "url": self.config.url, "ui_url": self.config.ui_url,
                                    "backend": self.config.backend, "started_at": _now()})
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if child.poll() is not None or time.monotonic() > deadline:
                _stop_pid(child.pid)
                tail = self.log_file.read_text(errors="replace").strip().splitlines()[-3:]
                raise OrchestratorError(
                    f"the Prefect server did not answer on {self.config.url} within {timeout:.0f}s "
                    f"({'exited' if child.poll() is not None else 'still starting'}): {' / '.join(tail)}; "
                    f"see {self.log_file}")
            time.sleep(0.25)
        return Change("prefect_server", self.config.ui_url, "started",
                      notes=(f"pid {child.pid}, {self.config.backend}, home {self.home}",))

    def down(self) -> list[str]:
        """Stop every worker, then the server; the database stays. Returns what was stopped."""
        workers = {pool: self.worker_pid(pool) for pool in self.worker_pools()}
        sink = self._read(self.sink_file)
        sink_pid = int(sink["pid"]) if sink else None
        ended = _stop_pids([pid for pid in (*workers.values(), sink_pid) if pid])   # together, then the server
        stopped = [f"worker {pool}" for pool, pid in workers.items() if pid in ended]
        for pool in workers:
            self.worker_file(pool).unlink(missing_ok=True)
        if sink_pid in ended:
            stopped.append("local notification sink")
        self.sink_file.unlink(missing_ok=True)
        pid = self.server_pid()
        if pid and _stop_pid(pid):
            stopped.append(f"prefect server (pid {pid})")
        self.pid_file.unlink(missing_ok=True)
        return stopped

    # -- the local notification sink (pcdb.sink) -----------------------------------------------

    @property
    def sink_file(self) -> Path:
        return self.home / "sink.json"

    @property
    def notifications_log(self) -> Path:
        return self.home / "notifications.log"

    def sink(self) -> dict | None:
        """The running sink's {pid, port, token, log, url}, or None."""
        info = self._read(self.sink_file)
        if info and alive(int(info["pid"])):
            return info | {"url": f"http://127.0.0.1:{info['port']}/{info['token']}"}
        return None

    def start_sink(self) -> tuple[Change, str]:
        """The sink on a free loopback port with a new token (or the running one): (change, URL)."""
        running = self.sink()
        if running:
            return Change("notification_sink", str(self.notifications_log), "unchanged",
                          notes=(f"pid {running['pid']}",)), running["url"]
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        token = secrets.token_urlsafe(24)
        with _private_log(self.home / "sink.err", own_folder=False) as log:
            child = subprocess.Popen([sys.executable, "-m", "pcdb.sink", str(port), token, str(self.notifications_log)],
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, umask=0o077)
        deadline = time.monotonic() + 30
        while _port_free("127.0.0.1", port):
            if child.poll() is not None or time.monotonic() > deadline:
                raise OrchestratorError(f"the local notification sink did not start; see {self.home / 'sink.err'}")
            time.sleep(0.05)
        self._write(self.sink_file, {"pid": child.pid, "port": port, "token": token,
                                     "log": str(self.notifications_log), "started_at": _now()})
        return (Change("notification_sink", str(self.notifications_log), "started", notes=(f"pid {child.pid}",)),
                f"http://127.0.0.1:{port}/{token}")

    # -- workers ---------------------------------------------------------------------------

    def worker_pools(self) -> list[str]:
        return sorted(p.stem for p in (self.home / "workers").glob("*.json"))

    def worker_pid(self, pool: str) -> int | None:
        info = self._read(self.worker_file(pool))
        if info and alive(int(info["pid"])):
            return int(info["pid"])
        return None

    def start_worker(self, pool: str, env: dict[str, str], cwd: Path) -> Change:
        """A process worker polling ``pool``; its flow runs inherit ``env`` and run in ``cwd``."""
        pid = self.worker_pid(pool)
        if pid:
            return Change("prefect_worker", pool, "unchanged", notes=(f"pid {pid}",))
        log_path = self.home / "workers" / f"{pool}.log"
        private_dir(log_path.parent)
        full_env = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", **os.environ, **env, **self.config.client_env(),
                    "PREFECT_HOME": str(self.home / "client")}
        for name in ("PREFECT_SERVER_API_AUTH_STRING", "PREFECT_SERVER_ENCRYPTION_KEY"):
            full_env.pop(name, None)          # the server's own: never in a worker or its flow runs
        with _private_log(log_path) as log:
            child = subprocess.Popen(
                _prefect_cmd("worker", "start", "--pool", pool, "--type", "process",
                             "--name", f"{pool}@{socket.gethostname()}"),
                env=full_env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, umask=0o077)     # what its flow runs write: the owner's only
        self._write(self.worker_file(pool), {"pid": child.pid, "pool": pool, "started_at": _now(),
                                             "log": str(log_path)})
        return Change("prefect_worker", pool, "started", notes=(f"pid {child.pid}, log {log_path}",))

