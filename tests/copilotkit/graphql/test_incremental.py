"""Rewriting graphql-core's incremental payloads into path-addressed patches, and their framing."""

from __future__ import annotations

import json

from copilotedge.copilotkit.graphql.incremental import CONTENT_TYPE, PathFormat, multipart, part

ROOT = "generateCopilotResponse"

# graphql-core 3.3's payloads for `messages @stream { ... content @stream }` + a deferred status.
INITIAL = {
    "data": {ROOT: {"threadId": "t", "messages": []}},
    "pending": [{"id": "0", "path": [ROOT]}, {"id": "1", "path": [ROOT, "messages"]}],
    "hasNext": True,
}
SUBSEQUENT = [
    {
        "hasNext": True,
        "pending": [{"id": "2", "path": [ROOT, "messages", 0, "content"]}],
        "incremental": [{"items": [{"id": "m1", "content": []}], "id": "1"}],
    },
    {"hasNext": True, "incremental": [{"items": ["Hel"], "id": "2"}]},
    {
        "hasNext": True,
        "incremental": [{"items": ["lo", "!"], "id": "2"}],
        "completed": [{"id": "2"}],
    },
    {"hasNext": True, "completed": [{"id": "1"}]},
    {
        "hasNext": False,
        "incremental": [{"data": {"status": {"code": "Success"}}, "id": "0"}],
        "completed": [{"id": "0"}],
    },
]


def test_items_are_addressed_by_the_index_they_start_at():
    rewrite = PathFormat()
    assert rewrite.initial(INITIAL) == {"data": INITIAL["data"], "hasNext": True}
    out = [rewrite.subsequent(p) for p in SUBSEQUENT]
    assert out[0] == {
        "hasNext": True,
        "incremental": [{"items": [{"id": "m1", "content": []}], "path": [ROOT, "messages", 0]}],
    }
    assert out[1] == {
        "hasNext": True,
        "incremental": [{"items": ["Hel"], "path": [ROOT, "messages", 0, "content", 0]}],
    }
    assert out[2] == {
        "hasNext": True,
        "incremental": [{"items": ["lo", "!"], "path": [ROOT, "messages", 0, "content", 1]}],
    }
    assert out[3] is None  # nothing for the client
    assert out[4] == {
        "hasNext": False,
        "incremental": [{"data": {"status": {"code": "Success"}}, "path": [ROOT]}],
    }
    assert rewrite.final([]) == {
        "data": {
            ROOT: {
                "threadId": "t",
                "messages": [{"id": "m1", "content": ["Hel", "lo", "!"]}],
                "status": {"code": "Success"},
            }
        }
    }


def test_errors_of_a_completed_stream_are_kept():
    rewrite = PathFormat()
    rewrite.initial(INITIAL)
    error = {"message": "boom", "path": [ROOT, "messages"]}
    out = rewrite.subsequent({"hasNext": True, "completed": [{"id": "1", "errors": [error]}]})
    assert out == {
        "hasNext": True,
        "incremental": [{"path": [ROOT, "messages"], "errors": [error]}],
    }


async def test_multipart_framing_as_urql_splits_it():
    async def payloads():
        yield {"data": {"a": 1}, "hasNext": True}
        yield {"hasNext": False, "incremental": [{"data": {"b": 2}, "path": []}]}

    body = b"".join([chunk async for chunk in multipart(payloads())]).decode()
    assert CONTENT_TYPE == 'multipart/mixed; boundary="-"'
    # urql: split on CRLF + "--" + boundary; the part before the first one is a preamble;
    # JSON starts after the blank line; the closing "--" part is not JSON.
    chunks = body.split("\r\n---")
    assert chunks[0] == "" and chunks[-1] == "--\r\n"
    parsed = [json.loads(c[c.index("\r\n\r\n") + 4 :]) for c in chunks[1:-1]]
    assert parsed == [
        {"data": {"a": 1}, "hasNext": True},
        {"hasNext": False, "incremental": [{"data": {"b": 2}, "path": []}]},
    ]


def test_each_part_ends_with_the_next_delimiter_and_states_its_length():
    encoded = part({"x": "é"})
    assert encoded.endswith(b"\r\n---")
    headers, _, body = encoded[: -len(b"\r\n---")].partition(b"\r\n\r\n")
    assert f"Content-Length: {len(body)}".encode() in headers
    assert json.loads(body) == {"x": "é"}
