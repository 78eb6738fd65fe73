"""The tool settings' checks and the agents' tool lists (E047, E080, E081)."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

import tests.sample_tools  # noqa: F401  (registers the tools named below)
from copilotedge.chat.agents import get_agent
from copilotedge.checks import check_settings


def ids() -> list[str]:
    return [message.id for message in check_settings()]


@pytest.mark.parametrize(
    ("name", "value", "check_id"),
    [
        ("COPILOTEDGE_MAX_TOOL_STEPS", 0, "copilotedge.E080"),
        ("COPILOTEDGE_MAX_TOOL_STEPS", "many", "copilotedge.E080"),
        ("COPILOTEDGE_TOOL_CONFIRM_TIMEOUT", -1, "copilotedge.E081"),
        ("COPILOTEDGE_TOOL_CONFIRM_TIMEOUT", "soon", "copilotedge.E081"),
    ],
)
def test_bad_tool_settings_are_reported(name, value, check_id):
    with override_settings(**{name: value}):
        assert check_id in ids()
        with pytest.raises(SystemCheckError, match=check_id):
            call_command("check", stdout=StringIO(), stderr=StringIO())


def test_the_defaults_pass():
    assert not [i for i in ids() if i in {"copilotedge.E080", "copilotedge.E081"}]


@pytest.mark.parametrize(
    "tools",
    [["caller", "nope"], ["tests.sample_tools.missing"], "caller", [1]],
)
def test_an_agent_naming_unknown_tools_is_reported(tools):
    with override_settings(COPILOTEDGE_AGENTS={"default": {"tools": tools}}):
        assert "copilotedge.E047" in ids()
        with pytest.raises(SystemCheckError, match="E047"):
            call_command("check", stdout=StringIO(), stderr=StringIO())


def test_an_agent_with_known_tools_passes_and_keeps_them():
    tools = ["caller", "tests.sample_tools.delete_note_tool"]
    with override_settings(COPILOTEDGE_AGENTS={"default": {"tools": tools}}):
        assert "copilotedge.E047" not in ids()
        assert "copilotedge.W040" not in ids()
        assert get_agent("default").tools == tuple(tools)
