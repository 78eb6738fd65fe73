"""Server-Sent Events: an incremental parser and an encoder. No Django, no httpx.

The parser follows the WHATWG event-stream rules, fed bytes in chunks of any size:
a chunk may end inside a line, inside a CRLF pair or inside a UTF-8 character.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

DONE = "[DONE]"
_NEWLINE = re.compile(r"\r\n|\r|\n")
CONTENT_TYPE = "text/event-stream"
# Headers every event-stream response carries; X-Accel-Buffering stops nginx buffering it.
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass(frozen=True, slots=True)
class Event:
    """One dispatched event: ``data`` lines joined with ``\\n``."""

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SSEParser:
    """Turns a byte stream into :class:`Event` objects.

    ``feed`` returns the events completed by a chunk; call ``close`` at the end of the
    stream (an unterminated final event is dropped, as the standard says).
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._started = False
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._last_id: str | None = None
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[Event]:
        text = self._decoder.decode(chunk)
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        return list(self._lines(text, final=False))

    def close(self) -> list[Event]:
        return list(self._lines(self._decoder.decode(b"", final=True), final=True))

    def _lines(self, text: str, *, final: bool) -> Iterator[Event]:
        buffer = self._buffer + text
        start = 0
        length = len(buffer)
        while True:
            cr = buffer.find("\r", start)
            lf = buffer.find("\n", start)
            if cr == -1 and lf == -1:
                break
            if cr == -1 or (lf != -1 and lf < cr):
                end, next_start = lf, lf + 1
            elif cr + 1 < length:
                end = cr
                next_start = cr + 2 if buffer[cr + 1] == "\n" else cr + 1
            elif final:
                end, next_start = cr, cr + 1
            else:
                # A trailing CR may be the first half of CRLF: wait for the next chunk.
                break
            event = self._line(buffer[start:end])
            if event is not None:
                yield event
            start = next_start
        self._buffer = buffer[start:]

    def _line(self, line: str) -> Event | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            # ASCII only: str.isdigit() also accepts "²" and "٣", which the standard does not.
            self._retry = int(value)
        return None

    def _dispatch(self) -> Event | None:
        retry, self._retry = self._retry, None
        if not self._data:
            self._event = ""
            return None
        event = Event(
            data="\n".join(self._data),
            event=self._event or "message",
            id=self._last_id,
            retry=retry,
        )
        self._data = []
        self._event = ""
        return event


def encode(data: str, *, event: str | None = None, id: str | None = None) -> bytes:
    """One event frame; multi-line data becomes several ``data:`` lines."""
    lines = []
    if event is not None:
        lines.append(f"event: {event}")
    if id is not None:
        lines.append(f"id: {id}")
    # Only CR/LF end a line in an event stream; str.splitlines would also split on U+2028.
    lines.extend(f"data: {line}" for line in _NEWLINE.split(data))
    return ("\n".join(lines) + "\n\n").encode()


def json_bytes(payload: Any) -> bytes:
    """``payload`` as compact JSON in UTF-8."""
    try:
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        # Half a surrogate pair (upstream JSON can carry "\ud83d") has no UTF-8 form;
        # escaped as JSON it survives, exactly as it came.
        return json.dumps(payload, separators=(",", ":")).encode()


def encode_json(payload: Any, *, event: str | None = None) -> bytes:
    """One event frame of JSON data (JSON text escapes CR and LF: always one line)."""
    head = b"data: " if event is None else f"event: {event}\ndata: ".encode()
    return head + json_bytes(payload) + b"\n\n"


def comment(text: str = "keep-alive") -> bytes:
    """A comment line: ignored by clients, keeps proxies from closing an idle stream."""
    return f": {text}\n\n".encode()


DONE_FRAME = encode(DONE)
