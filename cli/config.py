"""`pcdb config check`: an environment spec checked, every problem at once.
"""

from __future__ import annotations

import json

from rich.markup import escape
from rich.table import Table

from cli.common import EnvOption, JsonOption, config_app, err, out, user_errors
from pcdb.config import Environment, load_environment


def _print_warnings(spec: Environment) -> None:
    """What is valid but must be known (placeholder keys, a version leaving support), on stderr."""
    from pcdb.config import checks

    for warning in checks.warnings(spec):
        err.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False, soft_wrap=True)


@config_app.command("check")
@user_errors
def config_check(env: EnvOption = "prod", as_json: JsonOption = False) -> None:
    """Validate an environment spec and show the server parameters as they will be applied."""
    spec: Environment = load_environment(env)
    applied = spec.desired_parameters()
    _print_warnings(spec)
    if as_json:
        print(json.dumps({n: {"declared": v.declared, "setting": v.setting, "unit": v.unit,
                              "restart": v.needs_restart} for n, v in applied.items()}, indent=2))
        return
    table = Table("parameter", "declared", "applied as", "restart", title=f"{env}: spec is valid")
    for name, value in applied.items():
        table.add_row(name, value.declared, f"{value.setting} {value.unit or ''}".strip(),
                      "yes" if value.needs_restart else "")
    out.print(table)
