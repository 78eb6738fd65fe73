"""System checks of the conversation and WebSocket settings (copilotedge.E030, W030, W031)."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from copilotedge.checks import check_settings


def ids() -> list[str]:
    return [message.id for message in check_settings()]


def test_the_suite_settings_pass():
    assert not [i for i in ids() if i.startswith(("copilotedge.E03", "copilotedge.W03"))]


@pytest.mark.parametrize(
    "name",
    ["HISTORY_MAX_TOKENS", "FLUSH_INTERVAL", "LIVE_INTERVAL", "WS_MAX_CHATS", "RETENTION_DAYS"],
)
@pytest.mark.parametrize("value", [0, -1, "many"])
def test_a_non_positive_number_is_an_error(name, value):
    with override_settings(**{f"COPILOTEDGE_{name}": value}):
        errors = [m for m in check_settings() if m.id == "copilotedge.E030"]
        assert [f"COPILOTEDGE_{name}" in m.msg for m in errors] == [True]
        with pytest.raises(SystemCheckError, match=r"copilotedge\.E030"):
            call_command("check")


def test_no_channel_layer_is_a_warning():
    with override_settings(CHANNEL_LAYERS={}):
        (warning,) = [m for m in check_settings() if m.id == "copilotedge.W030"]
    assert "CHANNEL_LAYERS" in (warning.hint or "")
    assert "REDIS_URL" not in (warning.hint or "")


REDIS_LAYER = "channels_redis.core.RedisChannelLayer"


@pytest.mark.parametrize(
    "config",
    [
        {"hosts": ["redis://127.0.0.1:6379/0"]},
        {"hosts": [{"address": "redis://127.0.0.1:6379/0"}]},
        {"hosts": [{"address": "redis://127.0.0.1:6379/0", "socket_timeout": 5}]},
        {"hosts": [("127.0.0.1", 6379)]},
        {},  # localhost, with the defaults
    ],
)
def test_a_redis_layer_with_redis_py_8s_read_timeout_is_a_warning(monkeypatch, config):
    monkeypatch.setattr("copilotedge.conversations.checks.version", lambda name: "8.1.0")
    layers = {"default": {"BACKEND": REDIS_LAYER, "CONFIG": config}}
    with override_settings(CHANNEL_LAYERS=layers):
        assert "copilotedge.W031" in ids()


@pytest.mark.parametrize(
    "host",
    [
        {"address": "redis://127.0.0.1:6379/0", "socket_timeout": None},
        {"address": "redis://127.0.0.1:6379/0", "socket_timeout": 30},
        "redis://127.0.0.1:6379/0?socket_timeout=30",
    ],
)
def test_a_redis_layer_that_waits_longer_passes(monkeypatch, host):
    monkeypatch.setattr("copilotedge.conversations.checks.version", lambda name: "8.1.0")
    layers = {"default": {"BACKEND": REDIS_LAYER, "CONFIG": {"hosts": [host]}}}
    with override_settings(CHANNEL_LAYERS=layers):
        assert "copilotedge.W031" not in ids()


def test_redis_py_7_waits_for_ever_by_default(monkeypatch):
    monkeypatch.setattr("copilotedge.conversations.checks.version", lambda name: "7.4.0")
    layers = {"default": {"BACKEND": REDIS_LAYER, "CONFIG": {"hosts": ["redis://x"]}}}
    with override_settings(CHANNEL_LAYERS=layers):
        assert "copilotedge.W031" not in ids()


def test_the_pub_sub_layer_polls_and_is_not_warned(monkeypatch):
    monkeypatch.setattr("copilotedge.conversations.checks.version", lambda name: "8.1.0")
    backend = "channels_redis.pubsub.RedisPubSubChannelLayer"
    layers = {"default": {"BACKEND": backend, "CONFIG": {"hosts": ["redis://x"]}}}
    with override_settings(CHANNEL_LAYERS=layers):
        assert "copilotedge.W031" not in ids()


def test_a_sqlite_database_with_deferred_transactions_is_warned_about():
    from copilotedge.conversations.checks import check_sqlite

    sqlite = {"ENGINE": "django.db.backends.sqlite3", "NAME": "x"}
    (warning,) = check_sqlite({"default": sqlite})
    assert warning.id == "copilotedge.W032"
    assert 'DATABASES["default"]["OPTIONS"]' in warning.hint and "IMMEDIATE" in warning.hint
    immediate = {**sqlite, "OPTIONS": {"transaction_mode": "IMMEDIATE"}}
    postgres = {"ENGINE": "django.db.backends.postgresql"}
    assert check_sqlite({"default": immediate, "other": postgres}) == []
    # The suite's own database is set up as the README says.
    assert "copilotedge.W032" not in ids()
