"""What the emulator answers: deterministic words, tool calls, and token counts.

A "token" is one word plus a trailing space (the last one has none), so a client that
joins the pieces gets readable text and the counts are easy to assert.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from copilotedge.testing.faults import MARKER

GREETING = "Hello from the Workers AI emulator. You said:"
TOOL_RESULT = "Tool result:"
FILLER = (
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipiscing",
    "elit",
    "sed",
    "do",
    "eiusmod",
    "tempor",
    "incididunt",
    "ut",
    "labore",
    "et",
    "dolore",
    "magna",
    "aliqua",
)
# Tool-call arguments are streamed in pieces of about this many characters.
_FRAGMENT = 8


def content_text(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def count_prompt_tokens(messages: Sequence[dict[str, Any]]) -> int:
    return max(1, sum(len(content_text(m.get("content")).split()) for m in messages))


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]

    def fragments(self) -> list[str]:
        """The arguments' JSON in two or more pieces, as a model streams them."""
        text = json.dumps(self.arguments)
        size = math.ceil(len(text) / max(2, math.ceil(len(text) / _FRAGMENT)))
        return [text[i : i + size] for i in range(0, len(text), size)]


@dataclass(frozen=True, slots=True)
class Answer:
    """One answer: text ``tokens`` or a ``tool_call`` (whose pieces are its fragments)."""

    tokens: tuple[str, ...]
    finish_reason: str
    prompt_tokens: int
    tool_call: ToolCall | None = None

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def completion_tokens(self) -> int:
        return len(self.tool_call.fragments()) if self.tool_call else len(self.tokens)

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


def _tool_names(tools: Any) -> list[str]:
    names = []
    for tool in tools if isinstance(tools, list) else []:
        if not isinstance(tool, dict):
            continue
        # OpenAI nests the definition under "function"; native Workers AI does not.
        function = tool["function"] if isinstance(tool.get("function"), dict) else tool
        if isinstance(function.get("name"), str) and function["name"]:
            names.append(function["name"])
    return names


def _json_object(text: str) -> dict[str, Any]:
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
        except ValueError:
            pass
        else:
            if isinstance(value, dict):
                return value
        start = text.find("{", start + 1)
    return {}


def _tokens(lead: str, count: int, limit: int) -> tuple[str, ...]:
    words = lead.split()[:count]
    words += [FILLER[i % len(FILLER)] for i in range(count - len(words))]
    words = words[:limit]
    return tuple(f"{word} " for word in words[:-1]) + tuple(words[-1:])


def compose(
    messages: Sequence[dict[str, Any]],
    *,
    tools: Any = None,
    tokens: int = 20,
    max_tokens: int | None = None,
) -> Answer:
    """The answer to ``messages``: a tool call if the last user message names a tool."""
    prompt_tokens = count_prompt_tokens(messages)
    last = messages[-1] if messages else {}
    last_text = content_text(last.get("content"))
    if last.get("role") == "user":
        # Longest name first, so "get_weather" wins over "get".
        named = sorted((n for n in _tool_names(tools) if n in last_text), key=len, reverse=True)
        if named:
            call = ToolCall(f"call_{uuid.uuid4().hex[:24]}", named[0], _json_object(last_text))
            return Answer((), "tool_calls", prompt_tokens, call)
    if last.get("role") == "tool":
        lead = f"{TOOL_RESULT} {last_text}"
    else:
        said = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), "")
        lead = f"{GREETING} {MARKER.sub('', content_text(said))}"
    limit = tokens if max_tokens is None else min(tokens, max_tokens)
    finish_reason = "length" if limit < tokens else "stop"
    return Answer(_tokens(lead, tokens, limit), finish_reason, prompt_tokens)
