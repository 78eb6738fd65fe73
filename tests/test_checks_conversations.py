"""System checks of the conversation and WebSocket settings (copilotedge.E030/W030)."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from copilotedge.checks import check_settings


def ids() -> list[str]:
    return [message.id for message in check_settings()]


def test_the_suite_settings_pass():
    assert not [i for i in ids() if i in ("copilotedge.E030", "copilotedge.W030")]


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
        assert "copilotedge.W030" in ids()
