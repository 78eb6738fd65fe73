"""Agents (COPILOTEDGE_AGENTS): resolution with defaults, and their system checks."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from copilotedge.chat.agents import all_agents, get_agent
from copilotedge.checks import check_settings
from copilotedge.defaults import DEFAULT_MODEL
from copilotedge.exceptions import NotFound


def ids(agents: object) -> list[str]:
    with override_settings(COPILOTEDGE_AGENTS=agents):
        return [message.id for message in check_settings() if message.id.startswith("copilotedge.")]


def test_the_default_agent_uses_the_site_model():
    agent = get_agent(None)
    assert (agent.id, agent.model, agent.system_prompt, agent.params) == (
        "default",
        DEFAULT_MODEL,
        "",
        {},
    )
    assert agent.info()["className"] == "CopilotEdgeAgent"


def test_configured_agents_keep_their_model_prompt_and_params():
    agents = {
        "default": {"description": "d"},
        "coder": {
            "name": "Coder",
            "model": "@cf/qwen/qwq-32b",
            "system_prompt": "Code.",
            "params": {"temperature": 0.1},
        },
    }
    with override_settings(COPILOTEDGE_AGENTS=agents):
        coder = get_agent("coder")
        assert (coder.name, coder.model, coder.system_prompt, coder.params) == (
            "Coder",
            "@cf/qwen/qwq-32b",
            "Code.",
            {"temperature": 0.1},
        )
        assert get_agent("default").name == "default"
        assert list(all_agents()) == ["default", "coder"]
        with pytest.raises(NotFound):
            get_agent("nobody")


def test_the_shipped_agents_pass_the_checks():
    assert not [i for i in ids({"default": {"name": "default", "description": "d"}}) if "04" in i]


@pytest.mark.parametrize(
    ("agents", "expected"),
    [
        (["default"], "copilotedge.E040"),
        ({"default": "x"}, "copilotedge.E040"),
        ({"default": {}, "a/b": {}}, "copilotedge.E041"),
        ({"default": {"name": 3}}, "copilotedge.E042"),
        ({"default": {"model": "@cf/nobody/none"}}, "copilotedge.E043"),
        ({"default": {"params": {"temperature": 99}}}, "copilotedge.E044"),
        ({"default": {"params": {"tools": []}}}, "copilotedge.E044"),
        ({"default": {"params": []}}, "copilotedge.E044"),
        ({"default": {"prompt": "typo"}}, "copilotedge.W040"),
        ({"helper": {}}, "copilotedge.W041"),
    ],
)
def test_bad_agents_are_reported_with_stable_ids(agents, expected):
    assert expected in ids(agents)


def test_a_bad_stop_group_is_reported():
    with override_settings(COPILOTEDGE_AGUI_STOP_GROUP="no spaces allowed"):
        assert "copilotedge.E045" in [m.id for m in check_settings()]


def test_manage_py_check_fails_on_an_agent_error():
    with (
        override_settings(COPILOTEDGE_AGENTS={"default": {"model": "@cf/nobody/none"}}),
        pytest.raises(SystemCheckError, match=r"copilotedge\.E043"),
    ):
        call_command("check")
