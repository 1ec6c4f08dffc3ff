"""Only transient failures are retried (R-INS-1): a permission or validation error never is."""

import psycopg
import pytest

from pcdb.errors import ConfigError, SecretError, TransientError, is_transient


@pytest.mark.parametrize("exc, retried", [
    (psycopg.OperationalError("connection refused"), True),                 # no server answer
    (psycopg.errors.LockNotAvailable("lock timeout"), True),               # 55P03
    (psycopg.errors.SerializationFailure("conflict"), True),               # 40001
    (psycopg.errors.AdminShutdown("terminating"), True),                   # 57P01
    (psycopg.errors.CannotConnectNow("starting up"), True),                # 57P03
    (TransientError("throttled"), True),
    (ConnectionResetError(), True),
    (psycopg.errors.InsufficientPrivilege("permission denied"), False),    # 42501
    (psycopg.errors.UndefinedTable("no such table"), False),
    (SecretError("PCDB_X is not set"), False),
    (ConfigError("spec.yaml", []), False),
    (ValueError("bad"), False),
])
def test_retry_classification(exc, retried):
    assert is_transient(exc) is retried

