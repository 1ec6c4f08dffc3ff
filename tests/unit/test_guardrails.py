"""`./dev lint` (run by .ci/run before the tests) fails on a ruff finding and on a broken layer
contract: checked on a copy of the project with one violation planted."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def copy_of_project(tmp_path: Path) -> Path:
    dest = tmp_path / "project"
    dest.mkdir()
    for name in ("pcdb", "flows", "tasks", "pyproject.toml"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dest / name)
    return dest


def lint_imports(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "lint-imports"), "--no-cache"], cwd=folder, capture_output=True, text=True,
                          timeout=120, check=False, env={"PYTHONPATH": str(folder), "PATH": str(BIN)})


def test_the_import_contract_holds_and_breaks_when_pcdb_imports_a_flow(tmp_path):
    project = copy_of_project(tmp_path)
    assert lint_imports(project).returncode == 0
    units = project / "pcdb" / "units.py"
    units.write_text(units.read_text() + "\nimport flows.capacity  # a plain module reaching for a runbook\n")
    broken = lint_imports(project)
    assert broken.returncode == 1 and "BROKEN" in broken.stdout and "pcdb.units -> flows.capacity" in broken.stdout


def test_ruff_passes_on_the_tree_and_fails_on_a_finding(tmp_path):
    clean = subprocess.run([str(BIN / "ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True, timeout=120,
                           check=False)
    assert clean.returncode == 0, clean.stdout
    project = copy_of_project(tmp_path)
    (project / "pcdb" / "planted.py").write_text("import os\n")
    found = subprocess.run([str(BIN / "ruff"), "check", "."], cwd=project, capture_output=True, text=True, timeout=120,
                           check=False)
    assert found.returncode == 1 and "F401" in found.stdout
