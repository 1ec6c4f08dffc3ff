"""The local notification sink (pcdb.sink): what a newcomer reads instead of a Teams channel."""

from __future__ import annotations

import json
import os
import stat
import threading
import urllib.error
import urllib.request
from datetime import datetime, timezone

import pytest

from pcdb import clock, sink


def post(url: str, data: bytes) -> int:
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture()
def running(tmp_path):
    log = tmp_path / "notifications.log"
    server = sink.serve(0, "tok3n", log)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", log
    server.shutdown()


def test_a_message_on_the_token_path_is_written_readable_and_private(running):
    base, log = running
    message = {"channel": "sms", "subject": "pcdb health CRITICAL on local", "body": "read-only-primary: firing\nsee x"}
    with clock.fixed(datetime(2026, 12, 2, 9, 50, 1, tzinfo=timezone.utc)):
        assert post(f"{base}/tok3n", json.dumps(message).encode()) == 204
    assert log.read_text() == ("2026-12-02T09:50:01+00:00 [sms] pcdb health CRITICAL on local\n"
                               "    read-only-primary: firing\n    see x\n")
    assert stat.S_IMODE(os.stat(log).st_mode) == 0o600


def test_another_path_is_refused_and_nothing_is_written(running):
    base, log = running
    assert post(f"{base}/guess", b'{"subject": "fake alert"}') == 404
    assert post(f"{base}/", b'{"subject": "fake alert"}') == 404
    assert not log.exists()


def test_a_body_that_is_not_json_is_kept_as_the_message(running):
    base, log = running
    assert post(f"{base}/tok3n", b"plain words") == 204
    assert "[?] (no subject)\n    plain words\n" in log.read_text()
