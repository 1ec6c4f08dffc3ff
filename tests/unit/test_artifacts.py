"""A run's artifacts go beside it (tasks/artifacts.py), and a refused one still stops the run."""

from __future__ import annotations

import pytest

from tasks import artifacts as beside
from tests.conftest import wait_until


def test_a_refused_artifact_is_raised_at_the_next_check_and_at_the_end(monkeypatch):
    def refuse(rows, key, description):
        raise RuntimeError(f"the server refused {key}")
    monkeypatch.setattr(beside, "create_table_artifact", refuse)

    artifacts = beside.Artifacts()
    artifacts.check()                                   # nothing sent yet: nothing to say
    artifacts.table([{"a": 1}], key="install-phase-1", description="what changed")

    def refused() -> str | None:
        try:
            artifacts.check()
        except RuntimeError as exc:
            return str(exc)
        return None
    assert wait_until(refused, "the refusal seen by check()", timeout=30) == "the server refused install-phase-1"
    with pytest.raises(RuntimeError, match="refused install-phase-1"):
        artifacts.flush()
