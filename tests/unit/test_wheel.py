"""A wheel install works, not only a checkout: the SQL, the shipped specs and prefect.yaml are
package data. The wheel is built, unpacked outside the checkout, and pcdb run from it in a
folder that is not the project (the installed dependencies are the test environment's)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    wheels = tmp_path_factory.mktemp("wheels")
    source = tmp_path_factory.mktemp("source")      # pip builds in the source tree: a copy keeps the checkout clean
    for name in ("cli", "pcdb", "flows", "tasks"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", source / "pyproject.toml")
    # The venv's own setuptools builds it when it has one (seconds); else pip's isolated build fetches it.
    try:
        import setuptools  # noqa: F401 - only whether it is there
        isolation = ["--no-build-isolation"]
    except ImportError:
        isolation = []
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "-w", str(wheels), str(source)],
                   check=True, capture_output=True, timeout=600)
    (wheel,) = wheels.glob("pcdb-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"pcdb/prefect.yaml", "pcdb/deployments/prod.yaml", "pcdb/deployments/local.yaml",
            "pcdb/sql/install.sql", "pcdb/sql/migrations/0001_product_change_schema.sql",
            "pcdb/data/pg15_settings.json", "pcdb/config/loader.py", "flows/capacity.py", "cli/main.py"} <= names
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    return target


def pcdb(installed: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PCDB_", "AZURE_"))}
    env |= {"PYTHONPATH": str(installed), "HOME": str(cwd), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300, check=False)


def test_the_installed_package_checks_the_prod_spec_and_plans_it_outside_the_checkout(installed, tmp_path):
    where = pcdb(installed, tmp_path, "--help")
    assert where.returncode == 0
    origin = subprocess.run([sys.executable, "-c", "import pcdb, pcdb.sql; print(pcdb.__file__, pcdb.sql.SQL_DIR)"],
                            cwd=tmp_path, env={"PYTHONPATH": str(installed)}, capture_output=True, text=True, check=True)
    assert origin.stdout.startswith(str(installed)) and str(ROOT) not in origin.stdout
    check = pcdb(installed, tmp_path, "config", "check", "--env", "prod")
    assert check.returncode == 0 and "prod: spec is valid" in check.stdout, check.stderr
    plan = pcdb(installed, tmp_path, "plan", "--env", "prod", "--assume-empty")
    assert plan.returncode == 0, plan.stderr
    assert "phonebill-postgresql-prod" in plan.stdout and " to create" in plan.stdout
