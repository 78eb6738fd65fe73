"""@copilotedge.tool: what the model is shown of a function, and finding tools by name."""

from __future__ import annotations

import pytest

import copilotedge
from copilotedge.tools import Tool, UnknownTool, get_tool, registered_tools
from tests import sample_tools


def test_the_definition_comes_from_the_signature_and_docstring():
    definition = get_tool("repeat").definition()
    assert definition == {
        "type": "function",
        "function": {
            "name": "repeat",
            "description": "Repeat a text.",
            "parameters": {
                "type": "object",
                "properties": {
                    "text": {"type": "string", "description": "What to repeat", "title": "Text"},
                    "times": {"type": "integer", "default": 2, "title": "Times"},
                },
                "required": ["text"],
                "additionalProperties": False,
            },
        },
    }


def test_the_context_parameter_is_not_shown_to_the_model():
    tool = get_tool("caller")
    assert tool.definition()["function"]["parameters"]["properties"] == {}
    assert tool.context_parameter == "context"
    assert tool.is_async is False
    assert get_tool("repeat").is_async is True


def test_name_description_and_options_override():
    tool = get_tool("delete_note")
    assert (tool.name, tool.description, tool.confirm) == ("delete_note", "Delete a note.", True)
    assert get_tool("too_slow").timeout == 0.2
    assert get_tool("staff_secret").permission == "copilotedge.view_usagerecord"


def test_the_decorator_leaves_the_function_callable():
    assert sample_tools.delete_note_tool("x") == "deleted x"
    assert "delete_note" in registered_tools()


def test_tools_are_found_by_dotted_path_too():
    assert get_tool("tests.sample_tools.caller") is get_tool("caller")
    assert isinstance(get_tool("tests.sample_tools.delete_note_tool"), Tool)
    for unknown in ("nope", "tests.sample_tools.nope", "tests.sample_tools.cancelled_waits"):
        with pytest.raises(UnknownTool):
            get_tool(unknown)


def test_variadic_parameters_cannot_be_described():
    with pytest.raises(TypeError, match="kwargs"):

        @copilotedge.tool
        def anything(**kwargs: object) -> str:
            return ""
