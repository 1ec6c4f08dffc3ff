"""pcdb's own run heartbeat (flows/heartbeat.py): what it sends, and that it stops with the run."""

import threading
import time
import uuid
from datetime import timedelta
from types import SimpleNamespace

from prefect.settings import get_current_settings

from flows import heartbeat
from pcdb import runbooks


def test_every_registered_runbook_sends_pcdb_heartbeats():
    from prefect.utilities.importtools import import_object

    missing = [r.name for r in runbooks.RUNBOOKS if not getattr(import_object(r.flow).fn, "sends_heartbeat", False)]
    assert missing == []


def test_a_run_beats_with_its_flow_deployment_and_tags_and_the_thread_ends_with_the_block(monkeypatch):
    run = SimpleNamespace(id=uuid.uuid4(), name="brave-otter", flow_id=uuid.uuid4(), deployment_id=uuid.uuid4(),
                          tags=["pcdb-env:svc"])
    monkeypatch.setattr(heartbeat.FlowRunContext, "get", lambda: SimpleNamespace(flow_run=run,
                                                                                  flow=SimpleNamespace(name="dr-drill")))
    sent, lock = [], threading.Lock()

    def send(**event):
        with lock:
            sent.append(event)

    with heartbeat.beating(timedelta(milliseconds=5), send=send) as thread:
        deadline = time.monotonic() + 10
        while len(sent) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert not thread.is_alive()                       # stopped with the block, not a sleep later
    count = len(sent)
    assert count >= 3
    first = sent[0]
    assert first["event"] == "prefect.flow-run.heartbeat"
    assert first["resource"]["prefect.resource.id"] == f"prefect.flow-run.{run.id}"
    assert first["resource"]["pcdb.sender"] == "pcdb"
    related = {r["prefect.resource.role"]: r["prefect.resource.id"] for r in first["related"]}
    assert related == {"flow": f"prefect.flow.{run.flow_id}", "deployment": f"prefect.deployment.{run.deployment_id}",
                       "tag": "prefect.tag.pcdb-env:svc"}   # the automations match the environment's tag
    assert len(sent) == count                          # nothing after the block


def test_outside_a_flow_run_nothing_is_sent(monkeypatch):
    monkeypatch.setattr(heartbeat.FlowRunContext, "get", lambda: None)
    sent = []
    with heartbeat.beating(send=lambda **e: sent.append(e)) as thread:
        pass
    assert thread is None and sent == []


def test_where_pcdb_starts_a_run_prefects_own_heartbeat_is_off():
    before = get_current_settings()
    assert before.flows.heartbeat_frequency is not None   # Prefect's default: on
    with heartbeat.without_prefect_heartbeat():
        inside = get_current_settings()
        assert inside.flows.heartbeat_frequency is None
        # only that changed: the rest is what the command runs with
        assert inside.model_dump(exclude={"flows"}) == before.model_dump(exclude={"flows"})
        assert inside.flows.model_dump(exclude={"heartbeat_frequency"}) == \
            before.flows.model_dump(exclude={"heartbeat_frequency"})
        with heartbeat.without_prefect_heartbeat():   # already off: nothing to change
            assert get_current_settings() is inside
    assert get_current_settings() is before


def test_prefect_validates_every_runbooks_parameters_through_the_heartbeat_wrapper():
    """Prefect resolves a flow's parameter types in the globals of the function it holds (the
    wrapper's); a type it cannot resolve fails every deployed run before its first line."""
    from prefect.exceptions import ParameterTypeError
    from prefect.utilities.importtools import import_object

    for runbook in runbooks.RUNBOOKS:
        flow = import_object(runbook.flow)
        try:
            flow.validate_parameters({})
        except ParameterTypeError:
            pass                                   # a required parameter missing: validation itself ran
