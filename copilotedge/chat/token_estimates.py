"""Offline token estimates, for when upstream reports no usage.

No tokenizer is downloaded or loaded: the estimate splits text the way BPE pre-tokenizers
do (words, digit runs, punctuation runs, line breaks) and charges each piece by its kind.
Plain "characters / 4" under-counts Chinese, Japanese and Korean several times over
(about one token per character there) and numbers and code (Llama 3 splits digits into
groups of three, punctuation rarely merges); budgets built on it would not trip. Where
the estimate errs, it errs high on purpose.

A prompt is estimated piece by piece for its first :data:`EXACT_CHARS` characters only:
the rest of it is charged at the densest rate measured so far (or its own first
:data:`SAMPLE_CHARS` characters', if denser), so a megabyte prompt holds the event loop
for milliseconds, not most of a second.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

# Chat templates wrap every message in a few special tokens (Llama 3: start-header, role,
# end-header, blank line, end-of-turn) and prime the answer with an assistant header.
TOKENS_PER_MESSAGE = 4
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3

_PIECES = re.compile(r"[^\W\d_]+|\d+|\n+|[^\w\s]+|_+|[ \t\r\f\v]+")
# Scripts written without spaces, where a tokenizer spends about a token per character.
_CJK = re.compile(
    "[\u1100-\u11ff\u3040-\u30ff\u3100-\u312f\u3130-\u318f\u3400-\u4dbf"
    "\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]"
)


def _piece_tokens(piece: str) -> int:
    first = piece[0]
    if first in " \t\r\f\v":
        # Single spaces merge into the next word; long indentation runs do not.
        return 0 if len(piece) < 4 else math.ceil(len(piece) / 4)
    if first == "\n":
        return 1
    if first.isdigit():
        return math.ceil(len(piece) / 3)
    if first.isalpha():
        if piece.isascii():
            return math.ceil(len(piece) / 6)
        cjk = len(_CJK.findall(piece))
        return cjk + math.ceil((len(piece) - cjk) / 3)
    # Punctuation and symbols: ASCII runs merge in pairs at best; emoji and other
    # non-ASCII symbols cost several byte-level tokens each.
    ascii_count = sum(c.isascii() for c in piece)
    return math.ceil(ascii_count / 2) + 2 * (len(piece) - ascii_count)


def estimate_tokens(text: str) -> int:
    """Tokens ``text`` would take, estimated offline (an upper-leaning guess)."""
    if not text:
        return 0
    return sum(_piece_tokens(piece) for piece in _PIECES.findall(text))


#: Characters of one prompt estimated piece by piece (some milliseconds of regex work).
EXACT_CHARS = 16_384
#: Characters measured of each text past :data:`EXACT_CHARS`, to charge it at least its own rate.
SAMPLE_CHARS = 64


class _Meter:
    """One prompt's estimate: exact up to a character budget, extrapolated past it."""

    def __init__(self) -> None:
        self.left = EXACT_CHARS
        self.density = 0.0

    def tokens(self, text: str) -> int:
        if not text:
            return 0
        head = text if len(text) <= self.left else text[: max(self.left, SAMPLE_CHARS)]
        self.left = max(0, self.left - len(head))
        measured = estimate_tokens(head)
        self.density = max(self.density, measured / len(head))
        return measured + math.ceil(self.density * (len(text) - len(head)))


def content_text(content: Any) -> str:
    """The text of a message's content: a string or a list of OpenAI content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text") or "") for part in content if isinstance(part, Mapping))
    return "" if content is None else str(content)


def _tool_calls_text(tool_calls: Any) -> Iterable[str]:
    for call in tool_calls if isinstance(tool_calls, list) else []:
        if not isinstance(call, Mapping):
            continue
        function = call.get("function")
        if not isinstance(function, Mapping):
            function = call
        yield str(function.get("name") or "")
        arguments = function.get("arguments", "")
        yield arguments if isinstance(arguments, str) else json.dumps(arguments)


def estimate_message_tokens(message: Mapping[str, Any], meter: _Meter | None = None) -> int:
    meter = meter or _Meter()
    tokens = TOKENS_PER_MESSAGE + meter.tokens(content_text(message.get("content")))
    tokens += sum(meter.tokens(text) for text in _tool_calls_text(message.get("tool_calls")))
    if message.get("name"):
        tokens += TOKENS_PER_NAME + meter.tokens(str(message["name"]))
    return tokens


def estimate_prompt_tokens(
    messages: Iterable[Mapping[str, Any]], params: Mapping[str, Any] | None = None
) -> int:
    """The prompt: every message with its framing, plus tool definitions (templates inline
    them into the prompt as JSON) and the assistant header that primes the reply."""
    return PromptEstimate(messages, params).tokens


class PromptEstimate:
    """A prompt's estimate that grows as messages are appended (a server tool step adds
    its calls and results), never made again from the whole prompt; the same figure
    :func:`estimate_prompt_tokens` gives for the prompt as it stands."""

    def __init__(
        self, messages: Iterable[Mapping[str, Any]], params: Mapping[str, Any] | None = None
    ) -> None:
        # One meter for the whole prompt: its exact budget and densest rate are shared.
        self._meter = _Meter()
        self._tokens = REPLY_PRIMING
        self.add(messages)
        tools = (params or {}).get("tools")
        if tools:
            self._tokens += self._meter.tokens(json.dumps(tools, separators=(",", ":")))

    @property
    def tokens(self) -> int:
        return self._tokens

    def add(self, messages: Iterable[Mapping[str, Any]]) -> None:
        self._tokens += sum(estimate_message_tokens(m, self._meter) for m in messages)


def estimate_completion_tokens(text: str, tool_calls: Iterable[tuple[str, str]] = ()) -> int:
    """The answer: its text and each tool call's name and JSON arguments."""
    return estimate_tokens(text) + sum(
        estimate_tokens(name) + estimate_tokens(arguments) for name, arguments in tool_calls
    )
