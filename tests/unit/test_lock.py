"""Locked dependencies: requirements.lock pins every package with its hashes, names everything
pyproject.toml asks for, and is what this environment was installed from (./dev setup installs
it with pip --require-hashes; an upgrade is `./dev lock` and a commit)."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def locked() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of requirements.lock."""
    text = (ROOT / "requirements.lock").read_text()
    out = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        head = re.match(r"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^ \\\n;]+)", block)
        if head:
            out[_norm(head.group(1))] = (head.group(3), re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return out


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_locked_package_has_an_exact_version_and_its_hashes():
    pins = locked()
    assert len(pins) > 100
    assert [name for name, (_, hashes) in pins.items() if not hashes] == []


def test_the_lock_names_every_dependency_pyproject_asks_for():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    names = {_norm(re.match(r"[A-Za-z0-9_.\-]+", w).group(0)) for w in wanted}
    assert sorted(names - set(locked())) == []


def test_this_environment_runs_the_locked_versions():
    wrong = {name: (version, metadata.version(name)) for name, (version, _) in locked().items()
             if _installed(name) and metadata.version(name) != version}
    assert wrong == {}, "this environment was not installed from requirements.lock (./dev setup)"


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False
