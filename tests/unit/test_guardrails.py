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
    for name in ("cli", "pcdb", "flows", "tasks", "pyproject.toml"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dest / name)
    return dest


def lint_imports(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "lint-imports"), "--no-cache"], cwd=folder, capture_output=True, text=True,
                          timeout=120, check=False, env={"PYTHONPATH": str(folder), "PATH": str(BIN)})


# One planted import across each boundary of the layers (and the two other contracts): the file it
# goes into, the module it imports, and the words lint-imports reports it with.
PLANTED = [
    ("pcdb/units.py", "pcdb.sandbox.engine", "pcdb.units -> pcdb.sandbox.engine"),        # base -> adapter
    ("pcdb/sandbox/proc.py", "pcdb.targets.base", "pcdb.sandbox.proc -> pcdb.targets.base"),  # adapter -> targets
    ("pcdb/sandbox/node.py", "pcdb.azure.plan", "pcdb.sandbox.node -> pcdb.azure.plan"),  # adapter -> the other one
    ("pcdb/targets/base.py", "pcdb.install", "pcdb.targets.base -> pcdb.install"),        # targets -> core runbook
    ("pcdb/install.py", "tasks.install", "pcdb.install -> tasks.install"),               # core -> tasks
    ("tasks/steps.py", "flows.notify", "tasks.steps -> flows.notify"),                   # tasks -> flow support
    ("flows/notify.py", "flows.capacity", "flows.notify -> flows.capacity"),             # flow support -> a flow
    ("flows/cost.py", "flows.sla", "flows.cost -> flows.sla"),                           # a flow -> another flow
    ("flows/sla.py", "cli.common", "flows.sla -> cli.common"),                           # flows -> the CLI
    ("pcdb/clock.py", "prefect", "pcdb.clock -> prefect"),                               # the core -> Prefect
    ("flows/capacity.py", "psycopg", "flows.capacity -> psycopg"),                       # SQL in a flow
]


def layers_of_pyproject() -> list[list[str]]:
    import tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (layers,) = [c["layers"] for c in contracts if c["type"] == "layers"]
    return [[m.strip() for m in layer.replace("|", ":").split(":")] for layer in layers]


def test_every_module_is_in_exactly_one_layer():
    """A module the contract does not name would escape it: every top-level module of pcdb/ and
    of flows/, and each of cli and tasks, is in exactly one layer."""
    named = [m for layer in layers_of_pyproject() for m in layer]
    assert len(named) == len(set(named)), sorted({m for m in named if named.count(m) > 1})
    covered = set(named)

    def owner(module: str) -> str | None:
        parts = module.split(".")
        return next((".".join(parts[:i]) for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in covered), None)
    modules = [f"pcdb.{p.stem if p.suffix else p.name}" for p in (ROOT / "pcdb").iterdir()
               if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists())]
    modules += [f"flows.{p.stem}" for p in (ROOT / "flows").glob("*.py") if p.stem != "__init__"]
    modules += ["cli", "tasks"]
    assert [m for m in modules if owner(m) is None] == []


def test_the_import_contracts_hold_and_each_boundary_breaks_when_crossed(tmp_path):
    project = copy_of_project(tmp_path)
    clean = lint_imports(project)
    assert clean.returncode == 0, clean.stdout[-3000:]
    for path, module, _ in PLANTED:
        file = project / path
        file.write_text(file.read_text() + f"\nimport {module}  # planted across a boundary\n")
    broken = lint_imports(project)
    assert broken.returncode == 1 and "BROKEN" in broken.stdout
    report = " ".join(broken.stdout.split())
    assert [words for _, _, words in PLANTED if words not in report] == [], broken.stdout[-4000:]


def test_ruff_passes_on_the_tree_and_fails_on_a_finding(tmp_path):
    clean = subprocess.run([str(BIN / "ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True, timeout=120,
                           check=False)
    assert clean.returncode == 0, clean.stdout
    project = copy_of_project(tmp_path)
    (project / "pcdb" / "planted.py").write_text("import os\n")
    found = subprocess.run([str(BIN / "ruff"), "check", "."], cwd=project, capture_output=True, text=True, timeout=120,
                           check=False)
    assert found.returncode == 1 and "F401" in found.stdout


def test_every_prefect_task_lives_in_tasks_and_every_flow_in_flows():
    """A task defined in a flow module, or a flow outside flows/, would escape the layers' roles
    (the retry policy is tasks.retry's)."""
    import ast

    misplaced = []
    for folder in ("cli", "pcdb", "flows", "tasks"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                for deco in getattr(node, "decorator_list", []):
                    target = deco.func if isinstance(deco, ast.Call) else deco
                    name = target.id if isinstance(target, ast.Name) else getattr(target, "attr", "")
                    if (name == "task" and folder != "tasks") or (name == "flow" and folder != "flows"):
                        misplaced.append(f"{path.relative_to(ROOT)}:{node.lineno} @{name}")
    assert misplaced == []
