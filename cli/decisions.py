"""`pcdb approve` (a signed decision for a waiting run) and `pcdb unlock` (a dead holder's slot).
"""

from __future__ import annotations

import json
import os
from typing import Annotated

import typer

from cli.common import (
    EnvOption,
    JsonOption,
    KeyOption,
    app,
    ensure_api,
    err,
    out,
    prefect_settings,
    use_orchestrator,
    user_errors,
)
from cli.signing import key_file, sign, signer_of
from pcdb.config import load_environment
from pcdb.errors import PcdbError


@app.command("approve")
@user_errors
def approve_command(env: EnvOption = "local",
                    run: Annotated[str, typer.Option("--run", help="the paused run's id (its UI page shows it)")] = "",
                    step: Annotated[str | None, typer.Option(
                        "--step", help="the step you decide (refused when the run waits for another)")] = None,
                    key: KeyOption = None,
                    as_name: Annotated[str | None, typer.Option("--as", help="your name in decisions.signers "
                                                                             "(default: the key's owner)")] = None,
                    reject: Annotated[bool, typer.Option("--reject", help="reject: nothing is changed")] = False,
                    reason: Annotated[str, typer.Option("--reason", help="why, in a line (kept in the ledger)")] = "",
                    as_json: JsonOption = False) -> None:
    """Decide a step a run waits for: shows what it decides, signs the decision message with your
    OpenSSH key (ssh-keygen -Y sign -n pcdb, or the agent), resumes the run, and prints whether
    the run accepted it (exit 1 with the reason when refused)."""
    from uuid import UUID

    spec = load_environment(env)
    if use_orchestrator(spec) is None and not os.environ.get("PREFECT_API_URL"):
        raise PcdbError(f"the Prefect server of {spec.name} is not running: a paused run waits there "
                        f"(`pcdb server up --env {env}`)")
    try:
        run_id = UUID(run)
    except ValueError:
        raise PcdbError(f"--run {run!r} is not a run id (a UUID, as the run's UI page shows)") from None
    from flows.runbook import answer, pending_request
    from pcdb.decisions import Request

    with prefect_settings():
        waiting = pending_request(run_id)
    if waiting is None:
        raise PcdbError(f"run {run} waits for no decision (it is not paused on one)")
    if step and waiting["step"] != step:
        raise PcdbError(f"run {run} waits for {waiting['step']}, not {step}")
    request = Request.from_json({k: waiting[k] for k in Request.__dataclass_fields__})
    key_path = key_file(key)
    signer = signer_of(spec, key_path, as_name)
    decision = "reject" if reject else "approve"
    err.print(f"{request.step} on {spec.name}, run {run}: {(waiting.get('shown') or '').strip()[:2000]}\n"
              f"plan sha256 {request.plan_sha256}; signing '{decision}' as {signer}", highlight=False, soft_wrap=True)
    message = request.message(signer, decision)
    signature = sign(message, key_path)
    with prefect_settings():
        verdict = answer(run_id, waiting, signer, message, signature, decision, reason)
    if as_json:
        print(json.dumps({"run": run, "step": request.step, "signer": signer, "decision": decision, **verdict}))
    if verdict["result"] != "accepted":
        raise PcdbError(f"refused: {verdict['detail']}")
    if not as_json:
        out.print(f"accepted: {verdict['detail']}", highlight=False)


@app.command("unlock")
@user_errors
def unlock_command(env: EnvOption = "local",
                   force: Annotated[bool, typer.Option("--force", help="free it even if its holder may still run")
                                    ] = False) -> None:
    """Free the environment's mutating-runbook slot when its holder is gone (a killed drill or
    install); a holder that may still be running is named and kept unless --force."""
    spec = load_environment(env)
    if use_orchestrator(spec) is None:
        ensure_api()
    from flows import exclusion

    record = exclusion.holder(spec.name)
    reason = exclusion.stale_reason(record)
    if record and reason is None and not force:
        raise PcdbError(f"the slot of {spec.name} is held by {exclusion.describe(record)}, which may still be "
                        "running; wait for it, or --force when you know it is gone")
    exclusion.free_slot(spec.name)
    out.print(f"freed the mutating slot of {spec.name}" + (f" ({exclusion.describe(record)}: {reason or 'forced'})"
                                                           if record else ""))
