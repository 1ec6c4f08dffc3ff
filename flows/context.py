"""The context every runbook runs with: the spec, its target, and secrets from Prefect Secret
blocks. Prefect is imported only when a secret is read from a block (Azure's); a sandbox reads
its own files, so a command that only reads the sandbox (``pcdb history``) starts without it.
"""

from __future__ import annotations

from pcdb.config import Environment
from pcdb.context import RunbookContext
from pcdb.errors import SecretError
from pcdb.targets.factory import make_target


def load_secret_block(name: str) -> str:
    """Read a Prefect Secret block (only the flow layer touches blocks)."""
    from prefect.blocks.system import Secret

    try:
        return Secret.load(name).get()
    except ValueError:
        raise SecretError(f"the Prefect Secret block {name!r} does not exist; create it (Prefect UI: Blocks > "
                          f"Secret, or `Secret(value=...).save({name!r})`), then run again") from None


def runbook_context(spec: Environment, **client_options) -> RunbookContext:
    """The context every runbook runs with: the spec, its target, secrets from Prefect blocks.

    ``client_options`` reach the Azure management clients (tests pass their ARM transport)."""
    ctx = RunbookContext(spec, None, secret_loader=load_secret_block)  # type: ignore[arg-type]
    ctx.target = make_target(spec, ctx.secret, **client_options)
    return ctx
