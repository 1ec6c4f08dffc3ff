"""The runbook registry (pcdb/runbooks.py) is the one list of runbooks: a flow that is not in it,
a runbook without a run limit, a prefect.yaml that differs from it, a command or a default that
disagrees with it, or a mutating flow that does not take the environment's slot, fails here."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest
import yaml

from pcdb import runbooks
from pcdb.config import load_environment
from pcdb.paths import PREFECT_FILE

ROOT = Path(__file__).resolve().parents[2]


def module_flows() -> dict[str, str]:
    """The flows defined at module level in flows/*.py: flow name -> entry point."""
    found = {}
    for path in (ROOT / "flows").glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            for deco in getattr(node, "decorator_list", []):
                if isinstance(deco, ast.Call) and getattr(deco.func, "id", "") == "flow":
                    name = next(k.value.value for k in deco.keywords if k.arg == "name")
                    found[name] = f"flows.{path.stem}:{node.name}"
    return found


def test_every_flow_is_registered_with_its_entry_point_and_every_entry_is_a_flow():
    assert module_flows() == {r.name: r.flow for r in runbooks.RUNBOOKS}


def test_every_runbook_has_a_run_limit_and_the_automations_cover_them_all():
    assert all(r.run_limit.total_seconds() > 0 for r in runbooks.RUNBOOKS)
    limits = load_environment("local").orchestrator.limits()
    assert set(limits) == set(runbooks.NAMES)


def test_a_run_limit_for_something_that_is_not_a_runbook_is_refused(tmp_path):
    from pcdb.errors import ConfigError

    spec = tmp_path / "x.yaml"
    spec.write_text("extends: local\nname: x\norchestrator:\n  run_limits: {dr_drill: 1h}\n")
    with pytest.raises(ConfigError) as refused:
        load_environment(spec)
    assert "orchestrator.run_limits" in str(refused.value) and "dr_drill: not a runbook" in str(refused.value)


def test_prefect_yaml_is_the_registry_written_out():
    assert PREFECT_FILE.read_text() == runbooks.prefect_yaml(), \
        "prefect.yaml differs from the registry: run `python -m pcdb.runbooks --write`"
    deployments = yaml.safe_load(PREFECT_FILE.read_text())["deployments"]
    assert {d["entrypoint"] for d in deployments} == {r.flow for r in runbooks.RUNBOOKS}


def test_every_command_exists_and_shares_the_flows_defaults():
    """`pcdb drill --mode` and the dr-drill deployment's form start from the same default as the
    flow (once: the deployment said planned, the CLI and the flow forced)."""
    import typer

    from cli.main import app

    group = typer.main.get_command(app)
    compared = []
    for runbook in runbooks.RUNBOOKS:
        command = group.commands.get(runbook.command.split()[1])
        assert command is not None, f"{runbook.name}: no command {runbook.command}"
        module, function = runbook.flow.split(":")
        signature = inspect.signature(getattr(importlib.import_module(module), function).fn)
        for param in getattr(command, "params", []):
            if param.name in signature.parameters and param.name not in ("env",):
                flow_default = signature.parameters[param.name].default
                if flow_default is not inspect.Parameter.empty and param.default is not None:
                    assert param.default == flow_default, (runbook.name, param.name, param.default, flow_default)
                    compared.append(f"{runbook.name}.{param.name}")
        for deployment in runbook.deployments:
            assert set(deployment.parameters) <= set(signature.parameters), (runbook.name, deployment.name)
    assert "dr-drill.mode" in compared and len(compared) >= 5, compared


@pytest.mark.parametrize("runbook", runbooks.RUNBOOKS, ids=lambda r: r.name)
def test_a_mutating_runbook_takes_the_slot_and_ends_refused_when_it_is_taken(runbook):
    module = runbook.flow.split(":")[0]
    text = (ROOT / (module.replace(".", "/") + ".py")).read_text()
    takes = "mutating_slot(" in text
    assert takes == runbook.mutating, f"{runbook.name}: mutating={runbook.mutating} but takes the slot: {takes}"
    if runbook.mutating:
        assert "@refusable" in text, f"{runbook.name} takes the slot but is not @refusable"


def test_every_deployment_parameter_is_typed_and_described_and_choices_are_enums():
    """The UI's Custom run is a real form: each parameter has a description, and a choice is a
    select (an enum), never free text a run would refuse later."""
    from prefect.utilities.callables import parameter_schema

    from pcdb import maintenance

    enums = {}
    for runbook in runbooks.RUNBOOKS:
        module, name = runbook.flow.split(":")
        schema = parameter_schema(getattr(importlib.import_module(module), name).fn).model_dump_for_openapi()
        for param, prop in schema["properties"].items():
            assert prop.get("description"), f"{runbook.name}: parameter {param} has no description"
            found = [prop.get("enum"), prop.get("items", {}).get("enum"),
                     *(x.get("enum") or x.get("items", {}).get("enum") for x in prop.get("anyOf", []))]
            if any(found):
                enums[(runbook.name, param)] = next(e for e in found if e)
    assert enums[("dr-drill", "scenario")] == ["zone", "region", "corruption"]
    assert enums[("dr-drill", "mode")] == ["planned", "forced"]
    assert enums[("failover", "scenario")] == ["zone", "region", "failback"]
    assert enums[("incident", "severity")] == ["P1", "P2", "P3", "P4"]
    assert enums[("maintenance", "only")] == list(maintenance.STEPS)


def test_every_pause_takes_a_typed_input_whose_every_field_is_described():
    """The resume form a person fills: every field says what to put in it, also once the run has
    filled in its defaults (the message to sign, the decision)."""
    from flows.incident import IncidentAction
    from flows.runbook import Decide, with_initial_data

    shown = with_initial_data(Decide, "## Decision", signer="", message="pcdb decision v1 ...", decision="approve")
    for model in (Decide, shown, IncidentAction):
        schema = model.model_json_schema()
        undescribed = [name for name, prop in schema["properties"].items() if not prop.get("description")]
        assert not undescribed, f"{model.__name__}: {undescribed}"
    assert shown.model_json_schema()["properties"]["message"]["default"] == "pcdb decision v1 ..."
    assert shown._description == "## Decision"
    assert Decide.model_json_schema()["properties"]["decision"]["enum"] == ["approve", "reject"]
