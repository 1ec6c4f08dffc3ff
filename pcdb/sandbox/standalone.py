"""The orchestrator's own PostgreSQL: a small cluster the sandbox engine runs for the Prefect
server's history (Prefect's self-hosting guide wants PostgreSQL, not SQLite, for a server that
runs for years). It is never the service database: its own folder under the orchestrator's
home, no TCP at all (a unix socket in a 0700 folder), one database ``prefect``.
"""

from __future__ import annotations

import os
import shutil

from pcdb.changes import Change
from pcdb.orchestrator import ServerConfig
from pcdb.sandbox import proc
from pcdb.sandbox.node import Node, conf_line
from pcdb.sql import query

USER = DATABASE = "prefect"


def orchestrator_node(config: ServerConfig) -> Node:
    """The cluster's folders and (socket-only) port number."""
    return Node("orchestrator-db", config.home / "postgres", config.port + 1, proc.find_bindir())


def _access_files() -> dict[str, str]:
    """Socket only, and only the OS users pcdb runs as (peer, mapped to the prefect role)."""
    users = dict.fromkeys([proc.invoking_user(), proc.server_user().name])
    return {"pg_hba.conf": "# pcdb: the orchestrator's database, socket only, peer from pcdb's OS users\n"
                           f"local   all   {USER}   peer map=pcdb\n"
                           "local   all   all      reject\n",
            "pg_ident.conf": "".join(f"pcdb    {u:<15} {USER}\n" for u in users)}


def _ensure_access(node: Node) -> bool:
    changed = False
    for name, text in _access_files().items():
        path = node.data / name
        if not path.exists() or path.read_text() != text:
            proc.write_file(path, text, mode=0o600)
            changed = True
    return changed


def _create(node: Node) -> None:
    """initdb into a temporary folder, configure it, then rename: a kill halfway leaves no
    half-made cluster that would later start with the default port and socket."""
    building = node.home.with_name(node.home.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    partial = Node(node.name, building, node.port, node.bindir)
    for folder in (partial.home, partial.run_dir, partial.log_dir):
        folder.mkdir(parents=True, mode=0o700)
    proc.chown_tree(partial.home)
    proc.run([partial.prog("initdb"), "-D", str(partial.data), "-U", USER, "-E", "UTF8", "--locale=C.UTF-8",
              "--auth-local=trust", "--auth-host=reject", "-N"], timeout=120, what="initdb of the orchestrator database")
    settings = {"listen_addresses": "", "port": node.port, "unix_socket_directories": node.run_dir,
                "unix_socket_permissions": "0700", "logging_collector": "on", "log_directory": node.log_dir,
                "max_connections": 50, "shared_buffers": "64MB"}
    with open(partial.data / "postgresql.conf", "a") as conf:
        conf.write("\n# --- pcdb: the orchestrator's own database, socket only ---\n")
        conf.write("".join(conf_line(k, v) for k, v in settings.items()))
    _ensure_access(partial)
    os.replace(building, node.home)


def ensure_orchestrator_database(config: ServerConfig, timeout: float = 60) -> Change:
    """Create the cluster and its ``prefect`` database when missing; start it when stopped."""
    node = orchestrator_node(config)
    config.home.mkdir(parents=True, exist_ok=True)
    os.chmod(config.home, 0o711)  # the server user must pass through to its folder below; nobody lists it
    action = "unchanged"
    if not node.exists():
        _create(node)
        action = "created"
    rewritten = _ensure_access(node)  # an older cluster had trust on its socket
    if not node.is_running():
        node.start(timeout)
        action = "started" if action == "unchanged" else action
    elif rewritten:
        node.reload()
    with node.connect(USER) as conn:
        if not conn.execute(query("sandbox.sql", "database_exists"), {"name": DATABASE}).fetchone()[0]:
            conn.execute(f"CREATE DATABASE {DATABASE}")
            action = "created"
    return Change("orchestrator_database", str(node.home), action,  # type: ignore[arg-type]
                  notes=(f"PostgreSQL for the Prefect server, socket {node.run_dir}",))


def stop_orchestrator_database(config: ServerConfig) -> list[str]:
    node = orchestrator_node(config)
    if node.is_running():
        node.stop("fast", timeout=30)
        return ["orchestrator database"]
    return []
