"""Incremental delivery (``@defer``/``@stream``) on the wire, as urql's fetch exchange reads it.

graphql-core produces payloads in the current proposal's format (``pending`` entries with
ids, ``incremental`` entries pointing at them by ``id``/``subPath``, ``completed``).
``@copilotkit/runtime-client-gql`` uses urql, whose merge addresses streamed items by
``path`` ending in the index of the first item (the format graphql-yoga sends), so
:class:`PathFormat` rewrites each payload into that form. It keeps a merged copy of
the data to know where each stream continues.

:func:`multipart` frames the payloads as ``multipart/mixed; boundary="-"``, each part
closed by the next delimiter at once (as graphql-yoga does), because urql hands a part on
only when it has seen the delimiter after it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator, Iterable
from typing import Any

BOUNDARY = "-"
CONTENT_TYPE = f'multipart/mixed; boundary="{BOUNDARY}"'
_DELIMITER = f"\r\n--{BOUNDARY}".encode()
_PART_HEADERS = b"\r\nContent-Type: application/json; charset=utf-8\r\n"


def _walk(data: Any, path: Iterable[str | int]) -> Any:
    for key in path:
        if isinstance(data, dict) and isinstance(key, str):
            data = data.get(key)
        elif isinstance(data, list) and isinstance(key, int) and 0 <= key < len(data):
            data = data[key]
        else:
            return None
    return data


def _merge(target: Any, patch: Any) -> Any:
    if isinstance(target, dict) and isinstance(patch, dict):
        merged = dict(target)
        for key, value in patch.items():
            merged[key] = _merge(target.get(key), value)
        return merged
    return patch


class PathFormat:
    """Rewrites graphql-core's incremental payloads into path-addressed ones."""

    def __init__(self) -> None:
        self.data: Any = None
        self._paths: dict[str, list[str | int]] = {}

    def _register(self, payload: dict[str, Any]) -> None:
        for pending in payload.get("pending") or []:
            self._paths[pending["id"]] = list(pending["path"])

    def initial(self, payload: dict[str, Any]) -> dict[str, Any]:
        self.data = copy.deepcopy(payload.get("data"))
        self._register(payload)
        result = {key: value for key, value in payload.items() if key != "pending"}
        return result

    def _apply(self, path: list[str | int], *, data: Any = None, items: Any = None) -> None:
        # The merged copy must not share objects with payloads already handed out.
        data, items = copy.deepcopy(data), copy.deepcopy(items)
        parent = _walk(self.data, path[:-1]) if path else None
        key = path[-1] if path else None
        if items is not None and isinstance(parent, list) and isinstance(key, int):
            for offset, item in enumerate(items):
                index = key + offset
                if index < len(parent):
                    parent[index] = _merge(parent[index], item)
                else:
                    parent.append(item)
        elif data is not None:
            if not path:
                self.data = _merge(self.data, data)
            elif isinstance(parent, dict | list):
                parent[key] = _merge(_walk(self.data, path), data)  # type: ignore[index]

    def subsequent(self, payload: dict[str, Any]) -> dict[str, Any] | None:
        """The rewritten payload, or ``None`` when it carries nothing a client needs."""
        entries: list[dict[str, Any]] = []
        for entry in payload.get("incremental") or []:
            base = self._paths.get(entry["id"], [])
            if "items" in entry:
                stream = _walk(self.data, base)
                start = len(stream) if isinstance(stream, list) else 0
                path = [*base, start]
                self._apply(path, items=entry["items"])
                converted: dict[str, Any] = {"items": entry["items"], "path": path}
            else:
                path = [*base, *(entry.get("subPath") or [])]
                self._apply(path, data=entry["data"])
                converted = {"data": entry["data"], "path": path}
            if entry.get("errors"):
                converted["errors"] = entry["errors"]
            entries.append(converted)
        self._register(payload)
        for completed in payload.get("completed") or []:
            path = self._paths.pop(completed["id"], [])
            if completed.get("errors"):
                entries.append({"path": path, "errors": completed["errors"]})
        has_next = bool(payload.get("hasNext"))
        if not entries and has_next:
            return None
        result: dict[str, Any] = {"hasNext": has_next}
        if entries:
            result["incremental"] = entries
        if payload.get("extensions"):
            result["extensions"] = payload["extensions"]
        return result

    def final(self, errors: list[Any]) -> dict[str, Any]:
        """Everything merged into one result, for clients that do not take multipart."""
        result: dict[str, Any] = {"data": self.data}
        if errors:
            result["errors"] = errors
        return result


def part(payload: dict[str, Any]) -> bytes:
    """One part, ending in the delimiter, so a client can read it without waiting for the next."""
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    headers = _PART_HEADERS + f"Content-Length: {len(body)}\r\n\r\n".encode()
    return headers + body + _DELIMITER


async def multipart(payloads: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    """The opening delimiter, each payload as a part, then the closing ``--``."""
    yield _DELIMITER
    async for payload in payloads:
        yield part(payload)
    yield b"--\r\n"
