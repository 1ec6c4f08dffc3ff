"""SCRAM-SHA-256 verifiers computed on the client, as psql's \\password does.

Sending ``PASSWORD 'SCRAM-SHA-256$...'`` instead of the clear text keeps passwords out of the
server log even with log_statement = 'all' (R-SEC-6 asks for it; R-SEC-3 forbids secrets in logs).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

ITERATIONS = 4096


def verifier(password: str, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """Return the SCRAM-SHA-256 verifier PostgreSQL stores for ``password``."""
    salt = salt or os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def matches(stored: str, password: str) -> bool:
    """Whether ``password`` is the one behind the verifier ``stored`` (same salt and iterations)."""
    try:
        method, rest = stored.split("$", 1)
        params, keys = rest.split("$", 1)
        iterations, salt = params.split(":", 1)
        stored_key = keys.split(":", 1)[0]
    except ValueError:
        return False
    if method != "SCRAM-SHA-256":
        return False
    candidate = verifier(password, base64.b64decode(salt), int(iterations))
    return hmac.compare_digest(candidate.split("$")[2].split(":")[0], stored_key)
