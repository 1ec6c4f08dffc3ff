"""Phase 8: the handover document (R-INS-3), rendered as markdown. No secret ever goes in:
the renderer is given none, and the caller scans the result for every secret of the run."""

from __future__ import annotations

from datetime import datetime

from pcdb import clock
from pcdb.changes import Change
from pcdb.checks import CheckResult
from pcdb.config import Environment
from pcdb.targets.base import Endpoint

# §13.1 review items and the checks whose results support them.
CHECKLIST_EVIDENCE = {
    "architecture": ("HA failover test", "parameters read back equal the spec", "sample inserts and index use"),
    "security": ("connection and TLS", "non-TLS connection refused", "privileges of "),
    "cost": (),
    "operations": (),
    "disaster recovery": ("HA failover test", "point-in-time restore test"),
}


def checklist(env: Environment, results: list[CheckResult]) -> list[tuple[str, str, str]]:
    """(item, status, basis) for each §13.1 review item."""
    rows = []
    for item in env.install.review_checklist:
        key = item.split(":")[0].strip()
        names = CHECKLIST_EVIDENCE.get(key, ())
        related = [r for r in results if any(r.name.startswith(n) for n in names)]
        if not names:
            rows.append((item, "needs human review", "no automated check can judge this"))
        elif not related:
            rows.append((item, "not verified", "its checks did not run"))
        elif all(r.passed for r in related):
            rows.append((item, "supported by checks", ", ".join(r.name for r in related)))
        else:
            rows.append((item, "NOT supported", ", ".join(r.name for r in related if not r.passed)))
    return rows


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(env: Environment, run_id: str, phases: dict[int, list[Change]], results: list[CheckResult],
           endpoints: dict[str, Endpoint], approval: dict | None, titles: dict[int, str],
           password_expiry: dict[str, datetime] | None = None) -> str:
    """The handover markdown: what exists, every setting as applied, every check with evidence."""
    now = clock.now().isoformat(timespec="seconds")
    passed = sum(r.passed for r in results)
    out = [f"# Handover: {env.service.name} database, environment `{env.name}`", "",
           f"- Prefect flow run: `{run_id}`", f"- Generated: {now}",
           f"- Target: {env.target}; server `{env.server.name}` ({env.server.location}), "
           f"PostgreSQL {env.server.version}; database `{env.service.database}`, schema `{env.service.schema_name}`",
           f"- Checks: {passed} of {len(results)} passed", ""]
    if approval:
        out += ["## Approval (R-INS-4)", "",
                f"Approved by {', '.join(approval.get('approved_by', []))} at {approval.get('at')}; "
                f"comment: {_cell(approval.get('comment') or '-')}", ""]
    out += ["## Endpoints (no secrets)", "", "| endpoint | host | port | database | sslmode |", "|---|---|---|---|---|"]
    for name, ep in endpoints.items():
        out.append(f"| {name} | {ep.host} | {ep.port} | {ep.dbname} | {ep.sslmode} |")
    out += ["", "## What the install did, phase by phase", ""]
    for number, changes in sorted(phases.items()):
        out += [f"### Phase {number} · {titles.get(number, '')}", "", "| resource | name | action | details |",
                "|---|---|---|---|"]
        for c in changes:
            details = "; ".join([*(f"{k}: {a} → {b}" for k, (a, b) in c.diff.items()), *c.notes])
            out.append(f"| {c.resource} | {_cell(c.name)} | {c.action} | {_cell(details) or '-'} |")
        out.append("")
    out += ["## Server parameters as applied", "", "| parameter | declared | applied (own unit) |", "|---|---|---|"]
    for name, value in env.desired_parameters().items():
        out.append(f"| {name} | {_cell(value.declared)} | {_cell(value.setting)} {value.unit or ''} |")
    out += ["", "## Roles", "", "| role | connection limit | attributes | password source | password due for rotation |",
            "|---|---|---|---|---|"]
    expiry = password_expiry or {}
    for role in env.security.roles:
        due = expiry[role.name].date().isoformat() if role.name in expiry else "not recorded"
        out.append(f"| {role.name} | {role.connection_limit} | {', '.join(role.attributes) or '-'} | "
                   f"{role.password.describe()} | {due} |")
    out += ["", "## Verification (Phase 7)", "", "| check | requirement | result | evidence |", "|---|---|---|---|"]
    for r in results:
        out.append(f"| {r.name} | {r.requirement} | {r.verdict} | {_cell(r.evidence)} |")
    out += ["", "## Review checklist (§13.1)", "", "| item | status | basis |", "|---|---|---|"]
    for item, status, basis in checklist(env, results):
        out.append(f"| {_cell(item)} | {status} | {_cell(basis)} |")
    return "\n".join(out) + "\n"
