"""Evidence every runbook run leaves behind, whatever its outcome: a row in the hash-chained
ledger on the managed server (pcdb/ledger.py), the report archived write-once, and a critical
notification when the run failed, crashed or was cancelled.

A runbook wraps its body in ``with evidence(spec, ctx) as ev:``, fills ``ev.figures`` and
``ev.report`` as it goes, and the record is written when the body ends (Completed or Failed).
A run killed from outside never reaches that ``finally``: the ``on_crashed`` and
``on_cancellation`` hooks record it from the runner instead.
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID

from prefect.artifacts import create_markdown_artifact
from prefect.context import FlowRunContext

from flows.notify import notify
from pcdb import clock, ledger
from pcdb.config import Environment, load_environment
from pcdb.context import RunbookContext
from pcdb.decisions import Collected
from pcdb.errors import PcdbError, SlotTaken
from pcdb.orchestrator import spool_path
from pcdb.private import private_dir, write_private
from pcdb.schema import LEDGER_SCHEMA
from pcdb.targets.base import Archive

PORT = Archive   # the one role of the target port used here (tests/unit/test_port_roles.py checks it)

logger = logging.getLogger("pcdb.evidence")


@dataclass
class Evidence:
    """What the runbook tells the ledger about its run."""

    figures: dict = field(default_factory=dict)
    report: str | None = None
    decisions: Collected | None = None       # the run's decisions (signed or claimed), from flows/runbook.py


def report_path(spec: Environment, stem: str) -> Path:
    """Where a run's report goes: ``<reports_dir>/<stem>-<UTC time>.md``, or ``-2``, ``-3`` ... when
    another run of the same second has it. Reserved here (created empty, 0600, exclusively), so
    no report ever overwrites another: reports are evidence, written once."""
    private_dir(spec.reports_path)
    base = f"{stem}-{clock.now():%Y%m%dT%H%M%SZ}"
    for n in range(1, 1000):
        path = spec.reports_path / (f"{base}.md" if n == 1 else f"{base}-{n}.md")
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            return path
        except FileExistsError:
            continue
    raise PcdbError(f"{spec.reports_path}: a thousand reports named {base}: not one more")


def publish_report(spec: Environment, stem: str, text: str, description: str, key: str | None = None,
                   path: Path | None = None, artifact_text: str | None = None) -> Path:
    """A run's report (at ``path``, by default :func:`report_path`) and the run's markdown artifact
    (key ``key`` or ``stem``, described with the path; ``artifact_text`` when it differs, e.g.
    pictures embedded rather than linked)."""
    path = write_private(path or report_path(spec, stem), text)
    create_markdown_artifact(artifact_text or text, key=key or stem, description=f"{description} ({path})")
    return path


def ledger_link(spec: Environment) -> str:
    """Where this run's ledger row is read, for its report and artifact (the row is written when
    the run ends)."""
    from prefect.runtime import flow_run

    run_id = flow_run.get_id() or "<run id>"
    return f"- Ledger row of this run: `pcdb history --env {spec.name} --run {run_id}` (written when the run ends)"


def spool_for(spec: Environment) -> ledger.Spool:
    """Where records wait when the managed server cannot take them (the orchestrator's home)."""
    return ledger.Spool(spool_path(spec))


def triggered_by(run, decided: Collected | None = None) -> str:
    """Who or what is behind the run: a signed decision it holds, or the server-side cause (a
    schedule, an automation); anything else is what a client said of itself, recorded as
    *claimed* (a tag or a user name proves nobody)."""
    signed = decided.triggered_by() if decided is not None else None
    if signed:
        return signed
    if run is not None and getattr(run, "auto_scheduled", False):
        return "schedule"
    creator = getattr(run, "created_by", None) if run is not None else None
    kind = (getattr(creator, "type", None) or "").lower()
    if kind == "automation":
        return f"automation {creator.display_value or creator.id}"
    if run is None:
        return f"claimed: direct call by {getpass.getuser()}@{socket.gethostname()}"
    by = next((t.split(":", 1)[1] for t in (run.tags or []) if t.startswith("pcdb-by:")), None)
    if run.deployment_id is not None:
        return f"claimed: deployment run by {by or getattr(creator, 'display_value', None) or 'the Prefect UI or API'}"
    return f"claimed: pcdb CLI by {getpass.getuser()}@{socket.gethostname()}"


def _record(spec: Environment, ctx: RunbookContext | None, run, flow_name: str, state: str,
            ev: Evidence, deployment: str | None) -> dict:
    report_sha = archive = None
    if ev.report and Path(ev.report).is_file():
        report_sha = ledger.file_sha256(ev.report)
        if ctx is not None:
            try:
                archive = ctx.target.archive_report(Path(ev.report), report_sha)
            except (OSError, PcdbError) as exc:
                logger.warning("report %s not archived: %s", ev.report, exc)
    record = ledger.RunRecord(
        run_id=str(run.id) if run else "direct", flow=flow_name, environment=spec.name, state=state,
        triggered_by=triggered_by(run, ev.decisions), deployment=deployment,
        decisions=ev.decisions.as_json() if ev.decisions is not None else [],
        parameters=ledger.clean_parameters(dict(run.parameters) if run else {}),
        started_at=getattr(run, "start_time", None), ended_at=clock.now(),
        figures=ev.figures, report_path=ev.report, report_sha256=report_sha, report_archive=archive)
    if ctx is None:
        from flows.runbook import runbook_context

        ctx = runbook_context(spec)
    outcome = ledger.record(ctx.connect, LEDGER_SCHEMA, record, spool_for(spec), _anchors(ctx))
    (logger.info if outcome["ledger"] == "recorded" else logger.warning)("run ledger: %s", outcome)
    return outcome


def _anchors(ctx: RunbookContext):
    """The environment's evidence store for the ledger's anchors (None when it cannot be reached:
    the rows are anchored by the next run)."""
    try:
        return ctx.target.ledger_anchors()
    except PcdbError as exc:
        logger.warning("the ledger's anchors cannot be written now: %s", exc)
        return None


def _deployment_name(run) -> str | None:
    if run is None or run.deployment_id is None:
        return None
    from prefect.runtime import deployment

    return deployment.name


@contextmanager
def evidence(spec: Environment, ctx: RunbookContext | None, flow_name: str) -> Iterator[Evidence]:
    """Record the run in the ledger when the body ends: Completed, Failed, Refused (the slot was
    taken), or Cancelled/Crashed (killed)."""
    ev = Evidence()
    run_context = FlowRunContext.get()
    run = run_context.flow_run if run_context else None
    if run is not None:
        _RUN_SPECS[run.id] = spec
    state = "Failed"
    try:
        yield ev
        state = "Completed"
    except SlotTaken:  # another mutating runbook holds the environment: refused, not failed
        state = "Refused"
        raise
    except Exception:
        raise
    except BaseException:  # SIGTERM: cancelled by the worker (a person, the run limit), or killed
        state = _killed_state(run)
        raise
    finally:
        try:
            ev.figures.setdefault("outcome", state.lower())
            _record(spec, ctx, run, flow_name, state, ev, _deployment_name(run))
        except Exception as exc:  # noqa: BLE001 - evidence must never hide the run's own outcome
            logger.error("the run ledger could not be written: %s", exc)


def _killed_state(run) -> str:
    """Cancelled when the server was cancelling this run, Crashed otherwise."""
    if run is None:
        return "Crashed"
    try:
        from prefect import get_client

        with get_client(sync_client=True) as client:
            current = client.read_flow_run(run.id).state
        return "Cancelled" if current and current.name in ("Cancelling", "Cancelled") else "Crashed"
    except Exception:  # noqa: BLE001
        return "Crashed"


def _already_recorded(spec: Environment, run_id: str) -> bool:
    from flows.runbook import runbook_context

    try:
        with runbook_context(spec).connect() as conn:
            return ledger.row_of_run(conn, LEDGER_SCHEMA, run_id) is not None
    except Exception:  # noqa: BLE001 - unreachable: the spool will carry our record
        return any(r.run_id == run_id for r in spool_for(spec).pending())


# The spec each run of this process loaded (``evidence`` records it): the run's hooks notify and
# record with the spec the run ran with, not with the file as it may read after the run.
_RUN_SPECS: dict[UUID, Environment] = {}


def _spec_of(run) -> Environment | None:
    if run.id in _RUN_SPECS:
        return _RUN_SPECS[run.id]
    parameters = run.parameters or {}
    try:
        return load_environment(parameters.get("spec_path") or parameters.get("env") or "local")
    except PcdbError:
        return None


def on_failure(flow, flow_run, state) -> None:
    """A failed run: critical notification (the record itself was written by ``evidence``)."""
    run = flow_run
    spec = _spec_of(run)
    if spec is None:
        return
    from flows.service import automation_notifies, env_tag

    if env_tag(spec) in (run.tags or []) and automation_notifies(spec):  # told by the automation: once is enough
        logger.info("run %s failed; the server's automation notifies %s", run.id, spec.name)
    else:
        notify(spec, "critical", f"pcdb {flow.name} FAILED on {spec.name}",
               f"Run {run.name} ({run.id}) of {flow.name} on {spec.name} failed: {state.message}")


def on_killed(flow, flow_run, state) -> None:
    """A crashed or cancelled run (killed from outside). Recorded here when the run's own body
    could not record it; a crash is notified unless the server's automation does."""
    from flows.service import automation_notifies, env_tag

    run = flow_run
    spec = _spec_of(run)
    if spec is None:
        return
    if state.is_crashed() and not (env_tag(spec) in (run.tags or []) and automation_notifies(spec)):
        notify(spec, "critical", f"pcdb {flow.name} CRASHED on {spec.name}",
               f"Run {run.name} ({run.id}) of {flow.name} on {spec.name} crashed: {state.message}")
    try:
        if not _already_recorded(spec, str(run.id)):
            _record(spec, None, run, flow.name, state.name, Evidence(figures={"message": state.message or ""}),
                    None)
    except Exception as exc:  # noqa: BLE001
        logger.error("the run ledger could not be written for %s: %s", run.id, exc)


HOOKS = {"on_failure": [on_failure], "on_crashed": [on_killed], "on_cancellation": [on_killed]}
