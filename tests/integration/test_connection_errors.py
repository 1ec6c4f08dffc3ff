"""Retry classification of real connection failures (pcdb.errors.is_transient), on the shared sandbox."""

import psycopg
import pytest

from pcdb.errors import is_transient


@pytest.mark.postgres
def test_a_refused_login_is_told_from_an_unreachable_server_without_reading_the_message(target):
    """Real connection failures: the server refusing the password (it took one) is never retried;
    nothing listening is. The message text is not what decides (both come without a SQLSTATE)."""
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(target.endpoint("primary").conninfo(target.env.server.admin.user, "Wrong-Passw0rd!1"))
    assert refused.value.sqlstate is None and not is_transient(refused.value)
    with pytest.raises(psycopg.OperationalError) as down:
        psycopg.connect(host="127.0.0.1", port=1, dbname="postgres", user="x", connect_timeout=5)
    assert down.value.sqlstate is None and is_transient(down.value)
