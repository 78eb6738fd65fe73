"""The event-stream parser and encoder against the WHATWG rules, plus property tests."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from copilotedge.chat import sse
from copilotedge.chat.sse import Event, SSEParser


def parse(*chunks: bytes) -> list[Event]:
    parser = SSEParser()
    events = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    events.extend(parser.close())
    return events


def datas(*chunks: bytes) -> list[str]:
    return [event.data for event in parse(*chunks)]


# -- the WHATWG rules -------------------------------------------------------------------


def test_data_with_and_without_the_space() -> None:
    assert datas(b"data: a\n\ndata:b\n\n") == ["a", "b"]


def test_only_one_leading_space_is_removed() -> None:
    assert datas(b"data:  two spaces\n\ndata:\tx\n\n") == [" two spaces", "\tx"]


def test_multi_line_data_is_joined_by_newline() -> None:
    assert datas(b"data: one\ndata:\ndata: three\n\n") == ["one\n\nthree"]


def test_a_field_without_colon_is_the_field_with_an_empty_value() -> None:
    assert datas(b"data\ndata\n\n") == ["\n"]


def test_an_empty_data_line_still_dispatches() -> None:
    assert parse(b"data:\n\n") == [Event(data="")]


def test_a_block_without_data_dispatches_nothing() -> None:
    assert parse(b"event: ping\n\nid: 3\n\n: note\n\n") == []


def test_event_type_defaults_to_message_and_resets_after_dispatch() -> None:
    events = parse(b"event: delta\ndata: x\n\ndata: y\n\n")
    assert [(e.event, e.data) for e in events] == [("delta", "x"), ("message", "y")]


def test_event_type_of_a_block_without_data_does_not_leak() -> None:
    assert [e.event for e in parse(b"event: lost\n\ndata: y\n\n")] == ["message"]


def test_last_event_id_persists_until_changed() -> None:
    events = parse(b"id: 1\ndata: a\n\ndata: b\n\nid: 2\ndata: c\n\nid\ndata: d\n\n")
    assert [e.id for e in events] == ["1", "1", "2", ""]


def test_id_set_in_a_block_without_data_still_counts() -> None:
    assert [e.id for e in parse(b"id: 7\n\ndata: a\n\n")] == ["7"]


def test_id_containing_null_is_ignored() -> None:
    assert [e.id for e in parse(b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n")] == ["1", "1"]


def test_no_id_means_none() -> None:
    assert parse(b"data: a\n\n")[0].id is None


def test_retry_digits_only() -> None:
    events = parse(b"retry: 1500\ndata: a\n\nretry: 1.5\ndata: b\n\nretry: x\ndata: c\n\n")
    assert [e.retry for e in events] == [1500, None, None]


@pytest.mark.parametrize("value", ["\u00b2", "\u0663", "\uff11"])
def test_retry_with_non_ascii_digits_is_ignored(value: str) -> None:
    # str.isdigit() accepts these; the standard says ASCII digits only (and int("²") fails).
    events = parse(f"retry: {value}\ndata: a\n\n".encode())
    assert events == [Event(data="a")]


def test_retry_applies_only_to_its_event() -> None:
    assert [e.retry for e in parse(b"retry: 10\ndata: a\n\ndata: b\n\n")] == [10, None]


def test_comments_are_ignored() -> None:
    assert datas(b": keep-alive\n\n:\ndata: a\n: mid-event comment\ndata: b\n\n") == ["a\nb"]


def test_unknown_fields_are_ignored() -> None:
    assert datas(b"foo: bar\ndata: a\n\n") == ["a"]


def test_field_names_are_case_sensitive() -> None:
    assert datas(b"Data: no\ndata: yes\n\n") == ["yes"]


def test_value_keeps_later_colons() -> None:
    assert datas(b'data: {"a": "b:c"}\n\n') == ['{"a": "b:c"}']


@pytest.mark.parametrize("newline", [b"\n", b"\r", b"\r\n"])
def test_line_endings(newline: bytes) -> None:
    stream = newline.join([b"data: a", b"data: b", b"", b"data: c", b"", b""])
    assert datas(stream) == ["a\nb", "c"]


def test_mixed_line_endings() -> None:
    assert datas(b"data: a\r\ndata: b\rdata: c\n\r\n") == ["a\nb\nc"]


def test_bom_at_start_is_skipped() -> None:
    assert datas(b"\xef\xbb\xbfdata: a\n\n") == ["a"]


def test_bom_split_across_chunks_is_skipped() -> None:
    assert datas(b"\xef", b"\xbb", b"\xbfdata: a\n\n") == ["a"]


def test_only_the_first_bom_is_skipped() -> None:
    # A BOM later on is just a character (here it makes an unknown field name).
    assert datas(b"\xef\xbb\xbfdata: a\n\n\xef\xbb\xbfdata: b\n\n") == ["a"]


def test_bom_inside_data_is_kept() -> None:
    assert datas(b"data: \xef\xbb\xbfx\n\n") == ["\ufeffx"]


def test_cr_at_chunk_end_followed_by_lf_is_one_line_ending() -> None:
    # Were the CR and LF two endings, the LF would end an empty line and dispatch "a" early.
    assert datas(b"data: a\r", b"\ndata: b\r\n\r\n") == ["a\nb"]


def test_cr_at_chunk_end_followed_by_other_text() -> None:
    assert datas(b"data: a\r", b"data: b\r\r") == ["a\nb"]


def test_cr_at_chunk_end_then_empty_chunks() -> None:
    assert datas(b"data: a\r", b"", b"\n", b"\r", b"\n") == ["a"]


def test_trailing_cr_at_end_of_stream_ends_the_line() -> None:
    assert datas(b"data: a\n\r") == ["a"]


def test_feed_returns_events_as_soon_as_they_complete() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\n") == []
    assert parser.feed(b"\ndata: b") == [Event(data="a")]
    assert parser.feed(b"\n\n") == [Event(data="b")]
    assert parser.close() == []


def test_split_inside_a_multi_byte_character() -> None:
    text = "é€😀"
    raw = f"data: {text}\n\n".encode()
    for cut in range(1, len(raw)):
        assert datas(raw[:cut], raw[cut:]) == [text], cut


def test_byte_by_byte() -> None:
    raw = "\ufeffevent: e\r\nid: 9\r\ndata: 😀 ok\r\n\r\n".encode()
    events = parse(*(raw[i : i + 1] for i in range(len(raw))))
    assert events == [Event(data="😀 ok", event="e", id="9")]


def test_invalid_utf8_becomes_replacement_characters() -> None:
    assert datas(b"data: a\xffb\n\n") == ["a\ufffdb"]


def test_truncated_character_at_end_of_stream() -> None:
    assert datas(b"data: a\n\ndata: \xe2\x82") == ["a"]


def test_unterminated_final_event_is_dropped() -> None:
    assert datas(b"data: a\n\ndata: b\n") == ["a"]
    assert datas(b"data: a\n\ndata: b") == ["a"]


def test_empty_stream() -> None:
    assert parse() == []
    assert parse(b"") == []


# -- the encoder ------------------------------------------------------------------------


def test_encode_single_line() -> None:
    assert sse.encode("hello") == b"data: hello\n\n"


def test_encode_event_and_id() -> None:
    frame = sse.encode("x", event="delta", id="42")
    assert frame == b"event: delta\nid: 42\ndata: x\n\n"
    assert parse(frame) == [Event(data="x", event="delta", id="42")]


@pytest.mark.parametrize("newline", ["\n", "\r", "\r\n"])
def test_encode_splits_on_every_line_ending(newline: str) -> None:
    assert sse.encode(f"a{newline}b") == b"data: a\ndata: b\n\n"


def test_encode_does_not_split_on_unicode_line_separators() -> None:
    text = "a\u2028b\u2029c\x85d\x0be\x0cf"
    assert sse.encode(text) == f"data: {text}\n\n".encode()
    assert datas(sse.encode(text)) == [text]


def test_encode_keeps_leading_spaces() -> None:
    assert datas(sse.encode("  indented\n x")) == ["  indented\n x"]


def test_encode_json_is_compact_and_utf8() -> None:
    frame = sse.encode_json({"response": "héllo\nworld"}, event="e")
    assert frame == 'event: e\ndata: {"response":"héllo\\nworld"}\n\n'.encode()
    assert json.loads(parse(frame)[0].data) == {"response": "héllo\nworld"}


def test_encode_json_with_a_lone_surrogate_does_not_raise() -> None:
    # Upstream JSON may carry half a surrogate pair ("\ud83d"); UTF-8 cannot hold it.
    frame = sse.encode_json({"response": "a\ud83db"})
    assert json.loads(parse(frame)[0].data)["response"] == "a\ud83db"


def test_done_frame() -> None:
    assert sse.DONE_FRAME == b"data: [DONE]\n\n"
    assert datas(sse.DONE_FRAME) == [sse.DONE]


def test_comment() -> None:
    assert sse.comment() == b": keep-alive\n\n"
    assert sse.comment("hi") == b": hi\n\n"
    assert parse(sse.comment(), sse.encode("a")) == [Event(data="a")]


def test_headers() -> None:
    assert sse.CONTENT_TYPE == "text/event-stream"
    assert sse.HEADERS == {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


# -- properties -------------------------------------------------------------------------

_field_text = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n"), max_size=12
)
_line = st.one_of(
    st.builds(lambda v: f"data:{v}", _field_text),
    st.builds(lambda v: f"data: {v}", _field_text),
    st.builds(lambda v: f"event: {v}", _field_text),
    st.builds(lambda v: f"id: {v}", _field_text),
    st.builds(lambda v: f"retry: {v}", st.integers(0, 10**6)),
    st.builds(lambda v: f": {v}", _field_text),
    st.just("data"),
    st.just(""),
)
_streams = st.builds(
    lambda bom, lines, endings: (
        ("\ufeff" if bom else "")
        + "".join(line + ending for line, ending in zip(lines, endings, strict=False))
    ).encode(),
    st.booleans(),
    st.lists(_line, max_size=30),
    st.lists(st.sampled_from(["\n", "\r", "\r\n"]), min_size=30, max_size=30),
)


def _rechunk(raw: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(raw)) for c in cuts})
    bounds = [0, *points, len(raw)]
    return [raw[a:b] for a, b in itertools.pairwise(bounds)]


@given(raw=_streams, cuts=st.lists(st.integers(0, 2000), max_size=40))
def test_any_rechunking_of_a_well_formed_stream_yields_the_same_events(
    raw: bytes, cuts: list[int]
) -> None:
    assert parse(*_rechunk(raw, cuts)) == parse(raw)


@given(raw=st.binary(max_size=300), cuts=st.lists(st.integers(0, 300), max_size=40))
def test_any_rechunking_of_arbitrary_bytes_yields_the_same_events(
    raw: bytes, cuts: list[int]
) -> None:
    assert parse(*_rechunk(raw, cuts)) == parse(raw)


@given(raw=_streams)
def test_byte_at_a_time_equals_all_at_once(raw: bytes) -> None:
    assert parse(*(raw[i : i + 1] for i in range(len(raw)))) == parse(raw)


def _normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


_any_text = st.text(
    alphabet=st.one_of(
        st.characters(blacklist_categories=["Cs"]),
        st.sampled_from(["\r", "\n", "\u2028", "\u2029", "\x85", "\ufeff", " ", ":"]),
    )
)


@given(text=_any_text, event=st.none() | st.sampled_from(["delta", "RUN_STARTED"]))
def test_encode_then_parse_round_trips_text(text: str, event: str | None) -> None:
    # An event stream has no escape for CR: a CR or CRLF inside data arrives as LF,
    # and every other character (U+2028 included) arrives unchanged.
    [parsed] = parse(sse.encode(text, event=event))
    assert parsed.data == _normalise_newlines(text)
    assert parsed.event == (event or "message")


@given(text=_any_text, cuts=st.lists(st.integers(0, 500), max_size=10))
def test_encode_json_round_trips_text_exactly_in_any_chunking(text: str, cuts: list[int]) -> None:
    raw = sse.encode_json({"content": text}) + sse.DONE_FRAME
    events = parse(*_rechunk(raw, cuts))
    assert [json.loads(events[0].data)["content"], events[1].data] == [text, sse.DONE]


@given(texts=st.lists(_any_text, max_size=5))
def test_a_sequence_of_frames_round_trips(texts: list[str]) -> None:
    raw = b"".join(sse.encode(t) for t in texts)
    assert datas(raw) == [_normalise_newlines(t) for t in texts]


@pytest.mark.parametrize(
    "payload",
    [
        {"text": "two\nlines\r\nand\rmore", "sep": "\u2028"},
        {"text": "half a pair: \ud83d", "emoji": "\U0001f600"},
        ["plain", 1, None],
    ],
)
def test_a_json_frame_is_one_data_line_that_parses_back(payload) -> None:
    frame = sse.encode_json(payload, event="message")
    assert frame.endswith(b"\n\n") and frame.count(b"\n") == 3  # event, data, blank
    (event,) = parse(frame)
    assert event.event == "message"
    assert json.loads(event.data) == payload
