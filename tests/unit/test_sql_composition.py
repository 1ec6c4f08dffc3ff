"""Where pcdb composes SQL from words that are not its own constants, each word is checked against
an allow-list at the point it becomes SQL (a spec or a catalog value never reaches psql.SQL raw)."""

from __future__ import annotations

import pytest

from pcdb import security
from pcdb.errors import PcdbError


def test_only_privilege_keywords_become_sql_in_a_grant():
    assert security._privs({"SELECT", "INSERT"}).as_string(None) == "INSERT, SELECT"
    for bad in ({"SELECT; DROP TABLE bill"}, {"ALL PRIVILEGES"}, {"select"}):
        with pytest.raises(PcdbError, match="not a privilege"):
            security._privs(bad)
