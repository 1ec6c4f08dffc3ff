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

from cli.main import app
from tests.conftest import new_target

pytestmark = pytest.mark.postgres


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
    caplog.set_level("INFO")
    with mutating_slot("killed-env", "zone drill"):               # not refused: the holder is gone
        assert holder("killed-env")["pid"] == os.getpid()
    assert "freeing the slot of killed-env after 1 look(s)" in caplog.text and "is gone" in caplog.text
    assert holder("killed-env") is None
    # Freeing a dead holder's slot is routine: no ERROR line, no traceback, before the warning.
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL") or r.exc_info], caplog.text


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
    from flows.exclusion import holder, mutating_slot
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
    with mutating_slot("test", "install"):                     # and from the CLI, while one holds it
        refused_cli = CliRunner().invoke(app, ["install", "--env", str(target.env_path), "--phases", "1,2,3,4"])
        here = f"install run - since {holder('test')['since']} (pid {os.getpid()}"
    # An expected outcome, not a failure: Refused (a completed state, so no failure hook pages
    # anyone), naming the running install; the CLI still exits 1 with the same words.
    assert second.name == "Refused" and second.is_completed(), second
    assert f"another drill or mutating runbook holds test: install run {running}" in second.message
    assert refused_cli.exit_code == 1, refused_cli.output
    assert f"another drill or mutating runbook holds test: {here}" in refused_cli.stderr
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
    looks = []
    looked = exclusion._free

    def looking(name):
        looks.append(name)
        if len(looks) == 3:                                  # two looks found it taken: the holder ends
            unrecorded.__exit__(None, None, None)
        return looked(name)

    monkeypatch.setattr(exclusion, "_free", looking)
    monkeypatch.setattr(exclusion, "POLL_SECONDS", 0.1)
    with exclusion.mutating_slot("unrecorded-env", "install"):   # wait_seconds=0, yet not refused
        assert exclusion.holder("unrecorded-env")["what"] == "install"
    assert len(looks) >= 3 and exclusion.holder("unrecorded-env") is None


def test_a_waiting_runbook_says_what_it_waits_for_and_is_refused_when_the_wait_ends(prefect_harness, monkeypatch,
                                                                                   caplog):
    import flows.exclusion as exclusion
    from pcdb.errors import SlotTaken

    monkeypatch.setattr(exclusion, "POLL_SECONDS", 0.05)
    monkeypatch.setattr(exclusion, "SAY_EVERY_SECONDS", 0.2)
    caplog.set_level("INFO", logger="pcdb.exclusion")
    with exclusion.mutating_slot("waited-env", "region drill"):   # a live holder: this process
        with pytest.raises(SlotTaken) as refused:
            with exclusion.mutating_slot("waited-env", "maintenance", wait_seconds=1):
                pytest.fail("took a slot a live holder holds")
    said = [r.getMessage() for r in caplog.records if "waits for the environment's slot" in r.getMessage()]
    assert said and all("the maintenance of waited-env waits for the environment's slot: held by region drill run"
                        in line for line in said)
    assert "after waiting 1s" in str(refused.value) and "pcdb unlock --env waited-env" in str(refused.value)
