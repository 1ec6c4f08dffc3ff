"""The port split into role protocols (pcdb.targets.base): every runbook module declares the roles
it uses (``PORT``), touches nothing of a target outside them, and the targets (Azure, the sandbox
and the in-memory fake) each implement every role as a whole protocol."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from pcdb.config import load_environment
from pcdb.targets import base
from pcdb.targets.azure import AzureTarget
from pcdb.targets.memory import MemoryTarget
from pcdb.targets.sandbox import SandboxTarget

ROOT = Path(__file__).resolve().parents[2]
# The runbooks and what runs them; the targets and their adapters implement the port instead.
RUNBOOK_MODULES = sorted([*(ROOT / "pcdb").glob("*.py"), *(ROOT / "flows").glob("*.py"), *(ROOT / "tasks").glob("*.py")])


def target_operations(source: str) -> set[str]:
    """What a module asks of a target: ``target.X`` and ``<anything>.target.X``."""
    used = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            value = node.value
            if (isinstance(value, ast.Name) and value.id == "target") or \
                    (isinstance(value, ast.Attribute) and value.attr == "target"):
                used.add(node.attr)
    return used


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def undeclared(path: Path, source: str) -> set[str]:
    used = target_operations(source)
    if not used:
        return set()
    module = importlib.import_module(module_name(path))
    port = getattr(module, "PORT", None)
    if port is None:
        return {f"(no PORT) {op}" for op in used}
    return used - base.role_operations(port)


@pytest.mark.parametrize("path", RUNBOOK_MODULES, ids=lambda p: module_name(p))
def test_a_runbook_touches_only_the_roles_it_declares(path):
    assert undeclared(path, path.read_text()) == set()


def test_the_check_finds_an_operation_outside_the_declared_roles():
    """Planted: the cost review (PORT = Billing) fails over the server; a flow that reaches the
    target with no declaration at all is named too."""
    path = ROOT / "pcdb" / "cost.py"
    planted = path.read_text() + "\n\ndef _planted(target):\n    target.failover('forced')\n"
    assert undeclared(path, planted) == {"failover"}
    path = ROOT / "flows" / "cost.py"
    planted = path.read_text() + "\n\ndef _planted(ctx):\n    ctx.target.daily_costs(1, 2)\n"
    assert undeclared(path, planted) == {"(no PORT) daily_costs"}


def test_the_roles_cover_the_whole_port_once():
    seen: dict[str, str] = {}
    for role in base.ROLES:
        own = {n for n in vars(role) if not n.startswith("_")}
        for op in own:
            assert op not in seen, f"{op} is in {seen[op]} and {role.__name__}"
            seen[op] = role.__name__
    assert set(seen) | {"env", "poll_seconds", "capabilities"} == base.role_operations(base.Target)


@pytest.mark.parametrize("target_class", [AzureTarget, SandboxTarget, MemoryTarget], ids=lambda c: c.__name__)
def test_every_target_implements_every_role_whole(target_class):
    """Checked on the class, not an instance: no ``__getattr__`` may answer for a missing operation."""
    assert "__getattr__" not in vars(target_class)
    for role in base.ROLES:
        missing = {op for op in base.role_operations(role) - {"env", "poll_seconds", "capabilities"}
                   if not callable(getattr(target_class, op, None))}
        assert not missing, f"{target_class.__name__} lacks {role.__name__}: {sorted(missing)}"


def test_the_fake_is_every_role_and_a_view_is_only_the_roles_it_was_given():
    fake = MemoryTarget(load_environment("local"))
    assert all(isinstance(fake, role) for role in base.ROLES) and isinstance(fake, base.Target)
    view = base.RoleView(fake, base.Billing)
    assert view.daily_costs is not None and view.env is fake.env
    with pytest.raises(AttributeError, match="failover is in none of the roles this runbook declared \\(Billing\\)"):
        view.failover("forced")
    assert fake.calls == []
