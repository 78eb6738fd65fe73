"""The database writes of a turn: the title a new conversation gets."""

from __future__ import annotations

from typing import Any

from copilotedge.conversations.store import derive_title


def msg(role: str, content: str) -> dict[str, Any]:
    return {"role": role, "content": content}


def test_title_is_the_first_user_message_on_one_line_cut_at_a_word():
    assert derive_title([msg("system", "x"), msg("user", "  Hello\n  world ")]) == "Hello world"
    title = derive_title([msg("user", "word " * 40)])
    assert title.endswith("…") and len(title) <= 81 and "  " not in title
    assert derive_title([msg("assistant", "x")]) == ""
