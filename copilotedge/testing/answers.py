"""What the emulator answers: deterministic words, tool calls, and token counts.

A "token" is one word plus a trailing space (the last one has none), so a client that
joins the pieces gets readable text and the counts are easy to assert.

Tool calls, on demand: each line of the last user message holding ``CALL:<tool>{json
args}`` (the arguments optional, several calls on one line allowed) is one step. The
first answer calls the first line's tools, and once their results came back the next
answer calls the next line's; after the last line it answers with text quoting the
results. Without ``CALL:``, a tool offered in ``tools`` and named in the last user message
is called once.
"""

from __future__ import annotations

import json
import math
import re
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
CALL = "CALL:"
_CALL = re.compile(re.escape(CALL) + r"([A-Za-z0-9_.-]+)")


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
    """One answer: text ``tokens`` or ``tool_calls`` (whose pieces are their fragments)."""

    tokens: tuple[str, ...]
    finish_reason: str
    prompt_tokens: int
    tool_calls: tuple[ToolCall, ...] = ()

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def completion_tokens(self) -> int:
        if self.tool_calls:
            return sum(len(call.fragments()) for call in self.tool_calls)
        return len(self.tokens)

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


def _new_call(name: str, arguments: dict[str, Any]) -> ToolCall:
    return ToolCall(f"call_{uuid.uuid4().hex[:24]}", name, arguments)


def _directed_calls(text: str) -> list[list[ToolCall]]:
    """The ``CALL:`` steps of a user message: one list of calls per line that has any."""
    decoder = json.JSONDecoder()
    steps = []
    for line in text.splitlines():
        calls = []
        for match in _CALL.finditer(line):
            arguments: Any = {}
            if line.startswith("{", match.end()):
                try:
                    arguments, _ = decoder.raw_decode(line, match.end())
                except ValueError:
                    arguments = {}
            calls.append(_new_call(match[1], arguments if isinstance(arguments, dict) else {}))
        if calls:
            steps.append(calls)
    return steps


def _tool_turn(messages: Sequence[dict[str, Any]]) -> tuple[str, int, list[str]]:
    """The last user message's text, the tool-call answers since it, and the tool results
    after the last of those."""
    asked, steps = "", 0
    results: list[str] = []
    for message in messages:
        role = message.get("role")
        if role == "user":
            asked, steps, results = content_text(message.get("content")), 0, []
        elif role == "assistant" and message.get("tool_calls"):
            steps, results = steps + 1, []
        elif role == "tool":
            results.append(content_text(message.get("content")))
    return asked, steps, results


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
    """The answer to ``messages``: the tool calls they ask for, or text."""
    prompt_tokens = count_prompt_tokens(messages)
    last = messages[-1] if messages else {}
    last_text = content_text(last.get("content"))
    asked, steps, results = _tool_turn(messages)
    directed = _directed_calls(asked)
    if steps < len(directed) and last.get("role") in ("user", "tool"):
        return Answer((), "tool_calls", prompt_tokens, tuple(directed[steps]))
    if last.get("role") == "user" and not directed:
        # Longest name first, so "get_weather" wins over "get".
        named = sorted((n for n in _tool_names(tools) if n in last_text), key=len, reverse=True)
        if named:
            call = _new_call(named[0], _json_object(last_text))
            return Answer((), "tool_calls", prompt_tokens, (call,))
    if last.get("role") == "tool":
        lead = f"{TOOL_RESULT} {' '.join(results)}"
    else:
        said = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), "")
        lead = f"{GREETING} {MARKER.sub('', content_text(said))}"
    limit = tokens if max_tokens is None else min(tokens, max_tokens)
    finish_reason = "length" if limit < tokens else "stop"
    return Answer(_tokens(lead, tokens, limit), finish_reason, prompt_tokens)
