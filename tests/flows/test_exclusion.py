"""One mutating runbook per environment, and no slot held for good by a holder that died: a
killed holder's slot is freed by the next runbook, a live holder is named, `pcdb unlock`
clears a stale slot by hand, and two installs at once end in one clear refusal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from typer.testing import CliRunner

from pcdb.cli import app
from tests.conftest import new_target

pytestmark = pytest.mark.integration


def hold_and_die(env: str) -> None:
    """A pcdb process that takes the slot and is SIGKILLed while it holds it."""
    from prefect.settings import PREFECT_API_URL

    script = ("import os, signal\nfrom flows.exclusion import mutating_slot\n"
              f"with mutating_slot({env!r}, 'zone drill'):\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    result = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()},
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]


def test_a_killed_holders_slot_is_freed_by_the_next_runbook(prefect_harness, caplog):
    from flows.exclusion import holder, mutating_slot

    hold_and_die("killed-env")
    assert holder("killed-env")["what"] == "zone drill"          # the record outlived its process
    with mutating_slot("killed-env", "zone drill"):               # not refused: the holder is gone
        assert holder("killed-env")["pid"] == os.getpid()
    assert "is gone" in caplog.text
    assert holder("killed-env") is None


def test_pcdb_unlock_frees_a_stale_slot_and_names_a_live_holder(prefect_harness):
    from flows.exclusion import holder, mutating_slot

    spec = new_target().env_path
    spec.write_text(spec.read_text().replace("name: test", "name: stale-env"))
    hold_and_die("stale-env")
    result = CliRunner().invoke(app, ["unlock", "--env", str(spec)])
    assert result.exit_code == 0 and "freed the mutating slot of stale-env" in result.stdout
    assert "is gone" in result.stdout and holder("stale-env") is None

    with mutating_slot("stale-env", "install"):
        refused = CliRunner().invoke(app, ["unlock", "--env", str(spec)])
        assert refused.exit_code == 1 and "may still be running" in refused.stderr
        assert "install run - since" in refused.stderr and f"pid {os.getpid()}" in refused.stderr
        forced = CliRunner().invoke(app, ["unlock", "--env", str(spec), "--force"])
        assert forced.exit_code == 0 and "forced" in forced.stdout


def test_two_installs_at_once_end_in_one_refusal_naming_the_running_one(prefect_harness):
    from flows.exclusion import holder
    from flows.install import install

    target = new_target()
    first = {}
    runner = threading.Thread(target=lambda: first.setdefault(
        "state", install(spec_path=str(target.env_path), phases=[1, 2, 3, 4], return_state=True)))
    runner.start()
    deadline = time.monotonic() + 120
    while holder("test") is None:                               # the first install holds the slot
        assert time.monotonic() < deadline and runner.is_alive(), "the first install never took the slot"
        time.sleep(0.1)
    running = holder("test")["run_id"]
    second = install(spec_path=str(target.env_path), phases=[1, 2, 3, 4], return_state=True)
    runner.join(timeout=300)
    assert second.is_failed()
    assert f"another drill or mutating runbook holds test: install run {running}" in second.message
    assert first["state"].is_completed(), first["state"].message
    target.sandbox.destroy()


def test_a_slot_taken_without_a_record_is_asked_for_again_not_refused(prefect_harness, monkeypatch):
    """A slot held by no recorded holder (a holder between taking it and recording itself, or a
    grant that came after a timeout and is being handed back, or a slow server) is not a
    refusal: the runbook asks again until it settles. CI once refused an install this way."""
    from prefect.concurrency.sync import concurrency

    import flows.exclusion as exclusion

    limit = exclusion.ensure_mutating_limit("unrecorded-env")
    unrecorded = concurrency(limit, occupy=1, strict=True)
    unrecorded.__enter__()                                   # taken, and nothing recorded yet
    attempts = []

    def asking(*args, **kwargs):
        attempts.append(kwargs["timeout_seconds"])
        if len(attempts) == 2:                               # the first ask timed out: the holder ends
            unrecorded.__exit__(None, None, None)
        return concurrency(*args, **kwargs)

    monkeypatch.setattr(exclusion, "concurrency", asking)
    with exclusion.mutating_slot("unrecorded-env", "install"):
        assert exclusion.holder("unrecorded-env")["what"] == "install"
    # Asked again (a loaded server may need one more ask after the holder ended), never refused.
    assert len(attempts) >= 2 and exclusion.holder("unrecorded-env") is None
