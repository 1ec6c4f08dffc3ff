"""Build the target an environment spec names."""

from __future__ import annotations

from pcdb.config import Environment
from pcdb.errors import TargetError
from pcdb.targets.base import Target


def make_target(env: Environment) -> Target:
    """SandboxTarget for target 'sandbox'; the Azure target comes with its own issue."""
    if env.target == "sandbox":
        from pcdb.targets.sandbox import SandboxTarget

        return SandboxTarget(env)
    raise TargetError(f"environment {env.name!r} targets {env.target}, which this version of pcdb cannot "
                      "reach yet (the Azure target is its own issue); use --env local")
