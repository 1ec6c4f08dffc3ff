"""The local notification sink: where a sandbox's alerts go before anyone has a Teams channel.

`pcdb server up` starts it for an environment whose spec sets ``notifications.local_sink: true``
(local.yaml does; a production spec may not) and points that environment's custom-webhook
blocks at it, so the server's automations and the runbooks' own notifications take the same
road as on production. Each message becomes a few readable lines in
``<orchestrator home>/notifications.log`` (0600):

    2026-12-02T09:50:01+00:00 [sms] pcdb health CRITICAL on local
        read-only-primary: the primary is read-only (storage at 95 %) ...

It listens on loopback only, and only on a path holding a random token the blocks know, so
another local user cannot slip a false alert in. ``python -m pcdb.sink PORT TOKEN LOGFILE``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from pcdb import clock

MAX_BYTES = 1 << 20   # one notification; anything larger is refused


def format_message(message: dict) -> str:
    """One notification as the log shows it: time, channel, subject, the body indented."""
    body = str(message.get("body", "")).strip()
    lines = [f"{clock.now().isoformat(timespec='seconds')} [{message.get('channel', '?')}] "
             f"{str(message.get('subject') or '(no subject)').strip()}"]
    lines += [f"    {line}" for line in body.splitlines() or [""]]
    return "\n".join(lines) + "\n"


def serve(port: int, token: str, log: Path) -> ThreadingHTTPServer:
    """The sink's HTTP server (not yet serving); every accepted message is appended to ``log``."""
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            if self.path != f"/{token}" or not 0 < length <= MAX_BYTES:
                self.send_response(404 if self.path != f"/{token}" else 413)
                self.end_headers()
                return
            raw = self.rfile.read(length)
            try:
                message = json.loads(raw)
                if not isinstance(message, dict):
                    raise ValueError("not an object")
            except ValueError:
                message = {"body": raw.decode(errors="replace")}
            text = format_message(message)
            with lock:
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                try:
                    os.write(fd, text.encode())
                finally:
                    os.close(fd)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):   # the log file is for notifications, not requests
            pass

    return ThreadingHTTPServer(("127.0.0.1", port), Handler)


def main(argv: list[str]) -> None:
    if len(argv) != 3:
        sys.exit("usage: python -m pcdb.sink PORT TOKEN LOGFILE")
    serve(int(argv[0]), argv[1], Path(argv[2])).serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
