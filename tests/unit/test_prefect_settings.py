"""The settings a command owns (the server, its credential, its CA) reach Prefect, and Prefect's
settings are built again only when it did not read them itself (cli/common.py,
``prefect_settings``): rebuilding them costs 0.09 s of every command that runs a flow."""

from __future__ import annotations

import pytest
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_CLIENT_MAX_RETRIES,
    PREFECT_SERVER_ANALYTICS_ENABLED,
    get_current_settings,
    temporary_settings,
)

from cli.common import OWNED_SETTINGS, prefect_settings

URL = "http://127.0.0.1:9/api"


@pytest.fixture
def as_prefect_read_them(monkeypatch):
    """Prefect holding the values the environment gives (as when it is imported after the command
    set them)."""
    for name in OWNED_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    with temporary_settings({PREFECT_API_URL: URL, PREFECT_CLIENT_MAX_RETRIES: 3,
                             PREFECT_SERVER_ANALYTICS_ENABLED: False}):
        monkeypatch.setenv("PREFECT_API_URL", URL)
        monkeypatch.setenv("PREFECT_CLIENT_MAX_RETRIES", "3")
        monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        yield


def test_what_prefect_already_holds_is_not_set_again(as_prefect_read_them):
    before = get_current_settings()
    with prefect_settings():
        assert get_current_settings() is before


def test_a_value_prefect_does_not_hold_is_set_for_the_block_and_only_there(as_prefect_read_them, monkeypatch):
    monkeypatch.setenv("PREFECT_CLIENT_MAX_RETRIES", "5")
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "true")
    with prefect_settings():
        assert PREFECT_CLIENT_MAX_RETRIES.value() == 5
        assert PREFECT_SERVER_ANALYTICS_ENABLED.value() is True
        assert PREFECT_API_URL.value() == URL
    assert PREFECT_CLIENT_MAX_RETRIES.value() == 3
    assert PREFECT_SERVER_ANALYTICS_ENABLED.value() is False


def test_a_server_the_command_found_after_prefect_was_imported_is_the_one_it_talks_to(monkeypatch):
    """The temporary server's address is known only once it has started (``ensure_api``)."""
    for name in OWNED_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    with temporary_settings({PREFECT_API_URL: None}):
        monkeypatch.setenv("PREFECT_API_URL", URL)
        with prefect_settings():
            assert PREFECT_API_URL.value() == URL
        assert PREFECT_API_URL.value() is None
