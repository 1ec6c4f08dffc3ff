"""pcdb's flows record their parameters as Prefect would, without importing FastAPI to do it."""

from __future__ import annotations

from pathlib import Path

from prefect import Flow

from flows.install import install
from flows.runbook import RunbookFlow


def test_every_runbook_flow_is_a_runbook_flow():
    import importlib

    from pcdb.runbooks import RUNBOOKS

    entry = [r.flow.split(":") for r in RUNBOOKS]
    flows = {f"{m}:{f}": getattr(importlib.import_module(m), f) for m, f in entry}
    assert len(flows) >= 13 and all(isinstance(f, RunbookFlow) for f in flows.values()), flows


def test_plain_parameters_are_recorded_as_prefect_records_them_and_the_rest_goes_to_prefect():
    plain = {"env": "local", "spec_path": None, "phases": [1, 2, 7], "dry_run": False, "reverify": True,
             "options": {"rounds": 3, "ratio": 0.5}}
    assert install.serialize_parameters(plain) == Flow.serialize_parameters(install, plain) == plain
    other = {"spec_path": Path("/tmp/spec.yaml"), "phases": (1, 2)}
    assert install.serialize_parameters(other) == {"spec_path": "/tmp/spec.yaml", "phases": [1, 2]}
