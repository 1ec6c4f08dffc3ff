"""Server parameters reconciled both ways on real servers: what the spec adds is set on every node,
what it no longer names goes back to its default, and a list parameter stays a list."""

from __future__ import annotations

import pytest

from pcdb.config import load_environment
from pcdb.targets.sandbox import SandboxTarget

pytestmark = pytest.mark.postgres


def _with(target, folder, extra: str) -> SandboxTarget:
    spec = folder / "params.yaml"
    spec.write_text(f"extends: {target.env_path}\n{extra}")
    return SandboxTarget(load_environment(spec), target.sandbox)


def _show(node, admin, name):
    with node.connect(admin) as conn:
        return conn.execute(f"SHOW {name}").fetchone()[0]


def test_a_preload_library_is_added_and_removed_and_a_removed_parameter_goes_back_to_its_default(fresh_target, tmp_path):
    t = fresh_target
    t.ensure_resource_group(); t.ensure_server(); t.ensure_replica()  # noqa: E702
    default_statement = _show(t.sandbox.primary(), t.admin, "log_min_error_statement")

    more = _with(t, tmp_path, "parameters:\n  shared_preload_libraries: [pg_stat_statements, auto_explain]\n"
                              "  log_min_error_statement: warning\n")
    added = more.ensure_parameters()
    assert added.action == "updated"
    for node in t.sandbox.nodes():   # all three restarted with both libraries, as two names
        assert _show(node, t.admin, "shared_preload_libraries").replace(" ", "").split(",")[:2] == \
            ["pg_stat_statements", "auto_explain"]
        assert _show(node, t.admin, "log_min_error_statement") == "warning"
    assert more.ensure_parameters().action == "unchanged"

    back = SandboxTarget(t.env, t.sandbox)            # the spec without them
    assert back.parameter_differences()[t.sandbox.primary().name]["log_min_error_statement"][0] == "warning"
    removed = back.ensure_parameters()
    assert "(default: removed from the spec)" in str(removed.diff["log_min_error_statement"][1])
    for node in t.sandbox.nodes():
        assert "auto_explain" not in _show(node, t.admin, "shared_preload_libraries")
        assert _show(node, t.admin, "log_min_error_statement") == default_statement
        assert "log_min_error_statement" not in (node.data / "postgresql.auto.conf").read_text()
    assert back.ensure_parameters().action == "unchanged"
    assert all(not d for d in back.parameter_differences().values())
