"""What every runbook flow shares: its context (spec, target, secrets) and the decisions a person
makes in it.

A decision is a pause in the flow body, between tasks, never inside one. The flow publishes the
request (environment, run, step, the plan's SHA-256, who may decide) as a flow-run input
``pcdb-request-NNN`` and pauses with a typed :class:`Decide` form; a person answers it in the
Prefect UI's resume form (pasting an ``ssh-keygen -Y sign -n pcdb`` signature) or with
``pcdb approve``, which reads the request, signs it and resumes the run. The flow verifies the
answer (pcdb/decisions.py); a refused answer is told back (``pcdb-result-NNN``) and the flow
waits again, so a wrong signature cannot end a run. Before the irreversible step the plan is
made again: a plan that changed since it was signed is refused too. Accepted decisions go to
the run's ledger row.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Literal
from uuid import UUID

from prefect import Flow
from prefect.artifacts import create_markdown_artifact
from prefect.context import TagsContext
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.runtime import flow_run
from pydantic import Field

from flows.context import load_secret_block, runbook_context  # noqa: F401 - every flow's context, from here
from pcdb import clock, decisions
from pcdb.config import DrStep, Environment
from pcdb.context import RunbookContext
from pcdb.decisions import Collected, Decision, DecisionRefused, Request, plan_sha256
from pcdb.errors import ApprovalError, PcdbError, SlotTaken
from pcdb.steps import Steps
from pcdb.targets.base import Topology

PORT = Topology   # the one role of the target port used here (tests/unit/test_port_roles.py checks it)

logger = logging.getLogger("pcdb.decisions")
REQUEST_KEY = "pcdb-request-"
RESULT_KEY = "pcdb-result-"


class RunbookFlow(Flow):
    """A Prefect flow whose parameters are recorded as they are when they are plain JSON, as
    every pcdb flow's are (names, paths, numbers, flags and lists of them: what a deployment's
    parameters must be anyway). Prefect's own recording imports FastAPI for its encoder: about
    65 ms of every command that runs a flow (docs/benchmarks.md, P2). Anything else goes to it."""

    def serialize_parameters(self, parameters: dict) -> dict:
        if all(isinstance(key, str) and _plain(value) for key, value in parameters.items()):
            return dict(parameters)
        return super().serialize_parameters(parameters)


def _plain(value) -> bool:
    if value is None or isinstance(value, str | bool | int | float):
        return True
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def flow(**options) -> Callable[[Callable], RunbookFlow]:
    """Prefect's ``@flow(...)`` for pcdb's runbooks: the same options, a :class:`RunbookFlow`
    whose steps are not tagged (:func:`untagged_steps`)."""
    def make(fn: Callable) -> RunbookFlow:
        return RunbookFlow(untagged_steps(fn), **options)
    return make


def untagged_steps(body):
    """The run carries the environment's tag (the CLI tags the run it starts, a deployment its
    runs: the server's automations match on it); its task runs do not. Prefect gives a task run
    every tag of the context it starts in, and asks the server for a concurrency slot per tag
    for each tagged task run: one more round trip for each step of every run started from the
    CLI (27 in a no-change install, about 0.4 s of P2), for limits pcdb never sets. Nothing
    reads a task run's tags; a deployed run's steps never had any."""
    @functools.wraps(body)
    def run(*args, **kwargs):
        with TagsContext(current_tags=set()):
            return body(*args, **kwargs)
    return run


def refusable(body):
    """A runbook that needs the environment's slot ends as Refused (a completed state, told at info
    level) when another mutating runbook holds it: an expected outcome that pages nobody, where a
    failed run would page teams, email and SMS."""
    @functools.wraps(body)
    def run(*args, **kwargs):
        try:
            return body(*args, **kwargs)
        except SlotTaken as exc:
            from prefect import get_run_logger
            from prefect.states import Completed

            get_run_logger().info("refused: %s", exc)
            return Completed(message=f"refused: {exc}", name="Refused")
    return run


class Decide(RunInput):
    """A decision on the step shown above. Sign the message exactly as it is (with your name on its
    signer line): `ssh-keygen -Y sign -n pcdb -f ~/.ssh/id_ed25519 message.txt`, or let
    `pcdb approve --run <this run> --key <your key>` do all of it."""

    signer: str = Field(description="your name, as the spec's decisions.signers writes it")
    decision: Literal["approve", "reject"] = Field("approve", description="approve, or reject (nothing is changed)")
    message: str = Field(description="the message you signed: the one shown, with your name on its signer line")
    signature: str = Field("", description="the armored signature (-----BEGIN SSH SIGNATURE-----...); empty only "
                                           "where the spec allows unsigned decisions (the sandbox)")
    reason: str = Field("", description="why, in a line (kept with the decision in the run ledger)")


def with_initial_data(cls: type[RunInput], description: str, **values) -> type[RunInput]:
    """``cls`` with these values as its fields' defaults, each field keeping its description
    (Prefect's own ``with_initial_data`` drops them, and the resume form would show bare names)."""
    import pydantic

    fields = {}
    for name, value in values.items():
        original = cls.model_fields[name]
        fields[name] = (original.annotation, Field(value, description=original.description))
    model = pydantic.create_model(cls.__name__, __base__=cls, **fields)
    model._description = description
    return model


class Decider:
    """The decisions of one run: asked, verified, re-planned, collected for the ledger."""

    def __init__(self, spec: Environment, yes: bool = False):
        if yes and spec.production:
            raise PcdbError("approvals by flag are for the sandbox only; production waits for a signed decision")
        self.spec = spec
        self.yes = yes
        self.collected = Collected()
        self.attempt = 0
        self.notes: list[str] = []

    def decide(self, step: str, plan: dict, owners: tuple[str, ...], needed: int = 1, shown: str = "",
               replan: Callable[[], dict] | None = None) -> list[Decision]:
        """Wait for ``needed`` owners to approve ``plan`` at ``step`` (all of them with
        ``needed=len(owners)``); the decisions, once the plan was made again and is the same.

        Raises:
            ApprovalError: rejected, no one may decide, or no decision within the timeout.
        """
        spec = self.spec
        if not owners:
            raise ApprovalError(f"nobody may decide step {step} on {spec.name}: name its owners in the spec")
        run_id = str(flow_run.get_id() or "direct")
        timeout = spec.install.approval.timeout
        unsigned = spec.decisions.unsigned == "allowed" and not spec.production
        if self.yes:
            request = Request(spec.name, run_id, step, plan_sha256(plan), owners, timeout, unsigned)
            made = decisions.by_flag(request, "--yes")
            self.collected.accepted.append(made)
            self.notes.append(f"{step}: decided by flag (--yes){'; ' + shown if shown else ''}")
            return [made]
        started = clock.now()
        accepted: dict[str, Decision] = {}
        while len(accepted) < needed:
            waiting = tuple(o for o in owners if o not in accepted)
            request = Request(spec.name, run_id, step, plan_sha256(plan), waiting, timeout, unsigned)
            answer = self._ask(request, plan, shown, accepted, started)
            try:
                made = decisions.verify(request, answer.message, answer.signature, spec.decisions.signers)
                if made.decision == "approve" and replan is not None and plan_sha256(replan()) != request.plan_sha256:
                    plan = replan()
                    accepted.clear()      # every signature was over the plan that changed
                    raise DecisionRefused("the plan changed since it was signed (made again right before acting: "
                                          f"sha256 {plan_sha256(plan)[:12]}…, not {request.plan_sha256[:12]}…); "
                                          "nothing was changed: read the new plan and sign it")
            except DecisionRefused as exc:
                self._told(request, "refused", str(exc))
                self.collected.refused.append(f"{step}: {answer.signer or 'someone'}: {exc}")
                self.notes.append(f"{step}: refused ({answer.signer or 'unnamed'}): {exc}")
                logger.warning("decision on %s refused: %s", step, exc)
                continue
            self._told(request, "accepted", f"{made.decision} by {made.signer}"
                       + (f" (signed, {made.fingerprint})" if made.signed else " (unsigned: claimed)"))
            if made.decision == "reject":
                self.collected.accepted.append(made)
                raise ApprovalError(f"{step} was rejected by {made.signer} ({answer.reason or 'no reason given'}); "
                                    "nothing was changed")
            accepted[made.signer] = made
            self.notes.append(f"{step}: approved by {made.signer}"
                              f"{' (signed ' + made.fingerprint + ')' if made.signed else ' (claimed, unsigned)'}"
                              f"{': ' + answer.reason if answer.reason else ''}")
        self.collected.accepted += accepted.values()
        return list(accepted.values())

    def _ask(self, request: Request, plan: dict, shown: str, accepted: dict, started: datetime) -> Decide:
        from prefect.input import create_flow_run_input

        self.attempt += 1
        template = request.message("<your name>")
        create_flow_run_input(f"{REQUEST_KEY}{self.attempt:03d}", {**request.as_json(), "plan": plan, "shown": shown,
                                                                    "attempt": self.attempt})
        signed = ", ".join(accepted) or "nobody yet"
        description = (f"## Decision: {request.step} on `{request.environment}`\n\n{shown}\n\n"
                       f"- Plan SHA-256: `{request.plan_sha256}`\n- Who may decide: {', '.join(request.owners)} "
                       f"(approved so far: {signed})\n- Sign this message (your name on its signer line):\n\n"
                       f"```\n{template}```\n\n`pcdb approve --env {request.environment} --run {request.run_id} "
                       f"--key <your key>` does it for you.")
        create_markdown_artifact(description, key=f"decision-{_slug(request.step)}",
                                 description=f"what {request.step} decides, and how to sign it")
        left = request.timeout - (clock.now() - started)
        try:
            return pause_flow_run(wait_for_input=with_initial_data(
                Decide, description, signer="", message=template, decision="approve"),
                timeout=max(1, int(left.total_seconds())), poll_interval=2, key=f"decision-{self.attempt}")
        except FlowPauseTimeout:
            raise ApprovalError(f"no decision on {request.step} within {request.timeout} "
                                f"({', '.join(request.owners)} may decide); nothing was changed") from None

    def _told(self, request: Request, result: str, detail: str) -> None:
        from prefect.input import create_flow_run_input

        create_flow_run_input(f"{RESULT_KEY}{self.attempt:03d}", {"step": request.step, "result": result,
                                                                   "detail": detail})


def _slug(step: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in step.lower())


def topology(ctx: RunbookContext) -> dict:
    """What a failover decides on: which server is primary, standby and replica, and where the
    application points. A decision made on one topology does not hold for another."""
    state = ctx.target.server_state()
    return {"ha_state": state.ha_state, "application": ctx.target.application_target(),
            "nodes": sorted([n.name, n.role, n.running] for n in state.nodes)}


def gates(spec: Environment, ctx: RunbookContext, decider: Decider, kind: str):
    """The decision before a failover's irreversible step, and each other team's confirmation:
    ``decide(facts)`` and ``confirm(step, what)`` for the core (pcdb/drills.py, pcdb/failover.py,
    pcdb/recovery.py)."""
    def decide(facts: dict) -> None:
        # A server to delete is part of what is signed (its own decision, bound to its name),
        # not only a fact shown beside the plan.
        deletes = {"delete": facts["delete"]} if facts.get("delete") else {}

        def plan() -> dict:
            return {"kind": kind, "environment": spec.name, "topology": topology(ctx), **deletes}
        decider.decide(f"{kind}-delete" if deletes else f"{kind}-decision", plan(), spec.approvers(),
                       shown=_facts(facts), replan=plan)

    def confirm(step: DrStep, what: str) -> None:
        owners = spec.team_members(spec.confirming_teams(step)) or spec.approvers()
        decider.decide(f"confirm-{step.role}", {"kind": kind, "step": step.role, "what": what}, owners,
                       shown=f"{', '.join(spec.confirming_teams(step))}: confirm when done: {what}")
    return decide, confirm


def approve_plan(spec: Environment, decider: Decider, step: str, plan: dict, shown: str,
                 replan: Callable[[], dict] | None = None) -> None:
    """One approver approves ``plan`` (a production drill, maintenance, a recovery's replay)."""
    decider.decide(step, plan, spec.approvers(), shown=shown, replan=replan)


def _facts(facts: dict) -> str:
    return "Facts now (not part of what is signed): " + "; ".join(f"{k}: {v}" for k, v in facts.items())


# -- the client side: what `pcdb approve` and the tests do ------------------------------------------

def pending_request(run_id: UUID) -> dict | None:
    """The decision a paused run waits for (its latest request), or None."""
    from prefect import get_client
    from prefect.input import filter_flow_run_input

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run_id).state
    if state is None or not state.is_paused():
        return None
    found = filter_flow_run_input(REQUEST_KEY, limit=1000, flow_run_id=run_id)
    if not found:
        return None
    return max((item.decoded_value for item in found), key=lambda v: v["attempt"])


def answer(run_id: UUID, request: dict, signer: str, message: str, signature: str, decision: str = "approve",
           reason: str = "", timeout: float = 120) -> dict:
    """Resume the run with a decision and wait for its verdict: {result: accepted|refused, detail}."""
    import time

    from prefect.flow_runs import resume_flow_run
    from prefect.input import read_flow_run_input

    resume_flow_run(run_id, run_input={"signer": signer, "decision": decision, "message": message,
                                       "signature": signature, "reason": reason})
    key = f"{RESULT_KEY}{request['attempt']:03d}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        verdict = read_flow_run_input(key, flow_run_id=run_id)
        if verdict is not None:
            return verdict
        time.sleep(0.3)
    raise PcdbError(f"run {run_id} did not answer the decision within {timeout:.0f}s: is its worker up?")


@contextmanager
def stepped() -> Iterator[Steps]:
    """The step runner of a flow run (every step a task run, pcdb.steps), and at the end, whatever
    the outcome, the run's "steps" artifact: each step, when it began, how long it took and how
    it ended, so the run page shows where a run stopped."""
    from tasks.steps import task_steps

    step = task_steps()
    try:
        yield step
    finally:
        if step.records:
            create_markdown_artifact("\n".join(["## Steps", "", *step.table()]), key="steps",
                                     description="each step of this run: when it began, how long it took, how it ended")


def name_run(text: str) -> None:
    """Rename the current flow run for what it did ("zone drill · forced · 0 lost · RTO 0.2 s"),
    so the runs list reads as a history. Best effort: a name is not worth failing a run for."""
    from prefect import get_client

    run_id = flow_run.get_id()
    if run_id is None:
        return
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(run_id, name=text[:120])
    except Exception as exc:  # noqa: BLE001 - the run's outcome stands without its name
        logger.warning("the run could not be renamed %r: %s", text, exc)
