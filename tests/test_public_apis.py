"""The app and the demo use their dependencies through public APIs only.

These are the private attributes they once reached into: asgiref's executor registry,
httpx's connection pool, django-redis' server list and Django's message storage.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.servers import ROOT

PRIVATE = {
    "asgiref's SyncToAsync.context_to_thread_executor": re.compile(r"context_to_thread_executor"),
    "httpx's transport._pool / django-redis' client._server": re.compile(
        r"\b(?!self\b|cls\b)\w+\s*\.\s*_(?:pool|server)\b"
        r"|(?:getattr|setattr|hasattr)\([^)]*['\"]_(?:pool|server)['\"]"
    ),
    "Django's request._messages": re.compile(
        r"request\s*\.\s*_messages\b|(?:getattr|setattr|hasattr)\([^)]*['\"]_messages['\"]"
    ),
}


def private_uses(root: Path) -> list[str]:
    """``path:line: what`` for each use of a :data:`PRIVATE` attribute under ``root``."""
    found = []
    for package in ("copilotedge", "project"):
        for path in sorted((root / package).rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                for what, pattern in PRIVATE.items():
                    if pattern.search(line):
                        found.append(f"{path.relative_to(root)}:{number}: {what}")
    return found


def test_no_private_attribute_of_a_dependency_is_used() -> None:
    assert private_uses(ROOT) == []


@pytest.mark.parametrize(
    "line",
    [
        "registry = SyncToAsync.context_to_thread_executor",
        "transport._pool = httpcore.AsyncConnectionPool()",
        "url = str(client._server[0])",
        'messages = getattr(request, "_messages", None)',
        "if request._messages.used:",
    ],
)
def test_each_pattern_is_caught(tmp_path: Path, line: str) -> None:
    module = tmp_path / "copilotedge" / "module.py"
    module.parent.mkdir()
    module.write_text(f"self._server = None\n{line}\n")
    (tmp_path / "project").mkdir()
    [found] = private_uses(tmp_path)  # the line above it, an own attribute, is fine
    assert found.startswith("copilotedge/module.py:2: ")
