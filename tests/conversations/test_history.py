"""Conversations in the turn: the history budget, preferences and what is stored."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import pytest
from django.db import DatabaseError
from django.test import AsyncClient, override_settings

from copilotedge import background, lifecycle
from copilotedge.auth import Principal
from copilotedge.chat.turn import Turn
from copilotedge.chat.types import ChatRequest
from copilotedge.conversations import store
from copilotedge.conversations.history import (
    fit_history,
    message_tokens,
    owned_conversation,
    split_new,
)
from copilotedge.conversations.ids import new_id
from copilotedge.exceptions import NotFound
from copilotedge.models import Conversation, Message, Preference, UsageRecord
from copilotedge.views import CONVERSATION_HEADER
from tests.helpers import OPENAI_URL, WordStream, stream_response

MODEL = "@cf/meta/llama-3.1-8b-instruct"


def msg(role: str, content: str) -> dict[str, Any]:
    return {"role": role, "content": content}


# The budget -------------------------------------------------------------------------------


def test_history_drops_oldest_turns_first_and_keeps_system_messages():
    history = [msg("system", "be brief")] + [
        msg("user" if i % 2 == 0 else "assistant", f"turn {i}") for i in range(10)
    ]
    new = [msg("user", "now")]
    sent = fit_history(history + new, keep_last=1, max_messages=4, max_tokens=10_000)
    assert sent == [msg("system", "be brief"), *history[-4:], msg("user", "now")]


def test_history_token_budget_drops_oldest_and_always_keeps_the_new_turn():
    long = "x" * 400
    history = [msg("user", long), msg("assistant", long), msg("user", long), msg("assistant", "ok")]
    new = [msg("user", long * 3)]
    cost = message_tokens(new[0])
    # The new turn alone is over budget: it is still sent, without any history.
    assert fit_history(history + new, keep_last=1, max_messages=100, max_tokens=cost - 1) == new
    # Room for the new turn, "ok" and one long message, not two.
    budget = cost + message_tokens(history[3]) + message_tokens(history[2]) + 1
    sent = fit_history(history + new, keep_last=1, max_messages=100, max_tokens=budget)
    assert sent == [msg("user", long), msg("assistant", "ok"), *new]


def test_history_does_not_start_with_an_orphan_tool_result():
    call = {"role": "assistant", "content": "", "tool_calls": [{"id": "c1"}]}
    result = {"role": "tool", "content": "42", "tool_call_id": "c1"}
    history = [msg("user", "q"), call, result, msg("assistant", "it is 42")]
    sent = fit_history([*history, msg("user", "and?")], keep_last=1, max_messages=2, max_tokens=999)
    assert sent == [msg("assistant", "it is 42"), msg("user", "and?")]


def test_split_new_appends_new_messages_or_recognises_a_resent_conversation():
    stored = [msg("system", "s"), msg("user", "hi"), msg("assistant", "hello")]
    new = [msg("user", "how are you")]
    assert split_new(stored, new) == (stored + new, new)
    resent = [msg("user", "hi"), msg("assistant", "hello"), *new]
    assert split_new(stored, resent) == (resent, new)
    # Resent with nothing new (an AG-UI run resuming the thread): nothing to store.
    assert split_new(stored, resent[:-1]) == (resent[:-1], [])
    # Only the latest stored messages were loaded: the resent list contains them later on.
    older = [msg("user", "first"), msg("assistant", "reply")]
    assert split_new(stored, older + resent, truncated=True) == (older + resent, new)
    assert split_new(stored, older + resent)[1] == older + resent


# Turns with stored conversations ----------------------------------------------------------


def answer(text: str) -> Any:
    return stream_response(WordStream([text], delay=0))


def sent_messages(route: Any, call: int = -1) -> list[dict[str, Any]]:
    return json.loads(route.calls[call].request.content)["messages"]


async def run_turn(request: ChatRequest, principal: Principal) -> Turn:
    turn = Turn(request, principal, protocol="openai")
    await turn.open()
    async for _ in turn.deltas():
        pass
    await lifecycle.drain()
    return turn


@pytest.mark.django_db(transaction=True)
async def test_a_turn_is_stored_and_continued_with_its_history(user, upstream):
    route = upstream.post(OPENAI_URL).mock(side_effect=[answer("Paris."), answer("Lyon.")])
    principal = Principal(user=user)
    first = await run_turn(ChatRequest(MODEL, [msg("user", "Capital of France?")]), principal)
    conversation = await Conversation.objects.aget()
    assert first.request.conversation_id == conversation.id
    assert conversation.title == "Capital of France?"
    assert conversation.user_id == user.pk

    await run_turn(
        ChatRequest(MODEL, [msg("user", "Second city?")], conversation_id=conversation.id),
        principal,
    )
    assert sent_messages(route) == [
        msg("user", "Capital of France?"),
        msg("assistant", "Paris."),
        msg("user", "Second city?"),
    ]
    rows = [m async for m in Message.objects.filter(conversation=conversation)]
    assert [(m.sequence, m.role, m.content, m.status) for m in rows] == [
        (0, "user", "Capital of France?", "complete"),
        (1, "assistant", "Paris.", "complete"),
        (2, "user", "Second city?", "complete"),
        (3, "assistant", "Lyon.", "complete"),
    ]
    assert rows[3].finish_reason == "stop" and rows[3].completion_tokens > 0
    records = [r async for r in UsageRecord.objects.order_by("created_at")]
    assert [r.conversation_id for r in records] == [conversation.id, conversation.id]


@pytest.mark.django_db(transaction=True)
async def test_history_budget_applies_to_what_goes_upstream(user, upstream):
    route = upstream.post(OPENAI_URL).mock(side_effect=lambda request: answer("ok"))
    principal = Principal(user=user)
    with override_settings(COPILOTEDGE_HISTORY_MAX_MESSAGES=2):
        turn = await run_turn(ChatRequest(MODEL, [msg("user", "one")]), principal)
        cid = turn.request.conversation_id
        for text in ("two", "three"):
            await run_turn(ChatRequest(MODEL, [msg("user", text)], conversation_id=cid), principal)
    assert sent_messages(route) == [
        msg("user", "two"),
        msg("assistant", "ok"),
        msg("user", "three"),
    ]
    assert await Message.objects.filter(conversation_id=cid).acount() == 6


@pytest.mark.django_db(transaction=True)
async def test_another_users_conversation_is_not_found(user, other_user, upstream):
    route = upstream.post(OPENAI_URL).mock(side_effect=lambda request: answer("x"))
    theirs = await Conversation.objects.acreate(user=other_user, title="secret")
    turn = Turn(
        ChatRequest(MODEL, [msg("user", "hi")], conversation_id=theirs.id),
        Principal(user=user),
        protocol="openai",
    )
    with pytest.raises(NotFound) as caught:
        await turn.open()
    assert caught.value.param == "conversation_id"
    assert not route.called
    assert await Message.objects.acount() == 0


@pytest.mark.django_db(transaction=True)
async def test_preferences_fill_in_what_the_request_leaves_out(user, upstream):
    route = upstream.post(OPENAI_URL).mock(side_effect=lambda request: answer("ok"))
    await Preference.objects.acreate(
        user=user,
        model="@cf/meta/llama-3.2-3b-instruct",
        system_prompt="Answer in French.",
        temperature=0.2,
        max_tokens=64,
    )
    principal = Principal(user=user)
    await run_turn(ChatRequest(MODEL, [msg("user", "hi")], model_given=False), principal)
    body = json.loads(route.calls[-1].request.content)
    assert body["model"] == "@cf/meta/llama-3.2-3b-instruct"
    assert body["temperature"] == 0.2 and body["max_tokens"] == 64
    assert body["messages"] == [msg("system", "Answer in French."), msg("user", "hi")]

    explicit = ChatRequest(
        MODEL, [msg("system", "Be terse."), msg("user", "hi")], params={"temperature": 1.0}
    )
    await run_turn(explicit, principal)
    body = json.loads(route.calls[-1].request.content)
    assert body["model"] == MODEL and body["temperature"] == 1.0 and body["max_tokens"] == 64
    assert body["messages"] == [msg("system", "Be terse."), msg("user", "hi")]
    # The preference's system prompt is applied, not stored.
    assert not await Message.objects.filter(content="Answer in French.").aexists()


@pytest.mark.django_db(transaction=True)
async def test_nothing_is_stored_when_the_user_turned_storing_off(user, upstream):
    upstream.post(OPENAI_URL).mock(side_effect=lambda request: answer("ok"))
    await Preference.objects.acreate(user=user, store_conversations=False)
    turn = await run_turn(ChatRequest(MODEL, [msg("user", "hi")]), Principal(user=user))
    assert turn.transcript is None
    assert await Conversation.objects.acount() == 0
    assert await Message.objects.acount() == 0


@pytest.mark.django_db(transaction=True)
async def test_anonymous_callers_store_nothing(upstream):
    upstream.post(OPENAI_URL).mock(side_effect=lambda request: answer("ok"))
    await run_turn(ChatRequest(MODEL, [msg("user", "hi")]), Principal(ip="10.0.0.1"))
    assert await Conversation.objects.acount() == 0


@pytest.mark.django_db(transaction=True)
@override_settings(COPILOTEDGE_FLUSH_INTERVAL=0.05, COPILOTEDGE_FLUSH_BYTES=10_000)
async def test_a_growing_answer_is_saved_as_streaming_while_it_grows(user, upstream):
    stream = WordStream([f"w{i} " for i in range(20)], delay=0.02)
    upstream.post(OPENAI_URL).mock(return_value=stream_response(stream))
    turn = Turn(ChatRequest(MODEL, [msg("user", "count")]), Principal(user=user), "openai")
    await turn.open()
    seen = []
    async for _ in turn.deltas():
        await asyncio.sleep(0)
        # A new conversation's rows come with the answer's first save (a flush here).
        row = await Message.objects.filter(role="assistant").afirst()
        if row is not None:
            seen.append((row.status, row.content))
    await lifecycle.drain()
    final = await Message.objects.aget(role="assistant")
    assert final.status == "complete" and final.content == turn.answer.text
    partial = [c for s, c in seen if s == "streaming" and 0 < len(c) < len(final.content)]
    assert partial, "no save happened while the answer grew"
    assert all(final.content.startswith(c) for c in partial)
    await lifecycle.drain()


@pytest.mark.django_db(transaction=True)
@override_settings(COPILOTEDGE_FLUSH_INTERVAL=60, COPILOTEDGE_FLUSH_BYTES=64)
async def test_a_growing_answer_is_saved_every_flush_bytes(user, upstream):
    stream = WordStream(["x" * 40] * 6, delay=0.02)
    upstream.post(OPENAI_URL).mock(return_value=stream_response(stream))
    turn = Turn(ChatRequest(MODEL, [msg("user", "go")]), Principal(user=user), "openai")
    await turn.open()
    lengths = []
    async for _ in turn.deltas():
        await asyncio.sleep(0.01)
        row = await Message.objects.filter(role="assistant").afirst()
        lengths.append(len(row.content) if row is not None else 0)
    await lifecycle.drain()
    assert any(0 < n < 240 for n in lengths)  # saved mid-answer although the interval is 60 s


@pytest.mark.django_db(transaction=True)
async def test_an_upstream_failure_is_stored_with_its_status(user, upstream):
    upstream.post(OPENAI_URL).mock(
        return_value=stream_response(WordStream(["partial "], delay=0, done=False))
    )
    turn = Turn(ChatRequest(MODEL, [msg("user", "hi")]), Principal(user=user), "openai")
    await turn.open()
    with pytest.raises(Exception, match="ended the answer early"):
        async for _ in turn.deltas():
            pass
    await lifecycle.drain()
    row = await Message.objects.aget(role="assistant")
    assert (row.status, row.content) == ("incomplete", "partial ")


@pytest.mark.django_db(transaction=True)
async def test_an_upstream_refusal_before_any_token_is_stored_as_error(user, upstream):
    upstream.post(OPENAI_URL).respond(429, json={"errors": [{"code": 3040}]})
    turn = Turn(ChatRequest(MODEL, [msg("user", "hi")]), Principal(user=user), "openai")
    with pytest.raises(Exception, match="capacity"):
        await turn.open()
    await lifecycle.drain()
    statuses = [(m.role, m.status) async for m in Message.objects.all()]
    assert statuses == [("user", "complete"), ("assistant", "error")]


@pytest.mark.django_db(transaction=True)
@override_settings(COPILOTEDGE_STORE_CONVERSATIONS=False)
async def test_a_site_can_turn_storing_off_for_everyone(user, upstream):
    upstream.post(OPENAI_URL).mock(side_effect=lambda request: answer("ok"))
    turn = await run_turn(ChatRequest(MODEL, [msg("user", "hi")]), Principal(user=user))
    assert turn.transcript is None
    assert await Conversation.objects.acount() == 0


@pytest.mark.django_db(transaction=True)
async def test_a_client_chosen_id_can_start_a_conversation(user, other_user, upstream):
    route = upstream.post(OPENAI_URL).mock(side_effect=lambda request: answer("ok"))
    principal = Principal(user=user)
    thread = uuid.uuid4()
    for text in ("first", "second"):
        request = ChatRequest(
            MODEL, [msg("user", text)], conversation_id=thread, create_conversation=True
        )
        await run_turn(request, principal)
    conversation = await Conversation.objects.aget()
    assert conversation.pk == thread and conversation.user_id == user.pk
    assert [m["content"] for m in sent_messages(route)] == ["first", "ok", "second"]
    # Never someone else's: their id stays a 404 even when creating is allowed.
    theirs = await Conversation.objects.acreate(user=other_user)
    request = ChatRequest(
        MODEL, [msg("user", "x")], conversation_id=theirs.pk, create_conversation=True
    )
    with pytest.raises(NotFound):
        await Turn(request, principal, "agui").open()
    # Without the flag an unknown id is a 404 too.
    unknown = ChatRequest(MODEL, [msg("user", "x")], conversation_id=uuid.uuid4())
    with pytest.raises(NotFound):
        await Turn(unknown, principal, "openai").open()


@pytest.mark.django_db(transaction=True)
async def test_nul_and_lone_surrogates_are_stored_as_replacement_characters(user, upstream):
    upstream.post(OPENAI_URL).mock(side_effect=lambda request: answer("b\ud83dc\x00"))
    call = {"role": "assistant", "content": "", "tool_calls": [{"id": "\x00", "f": ["\ud800"]}]}
    result = {"role": "tool", "content": "r", "tool_call_id": "\x00"}
    messages = [msg("user", "a\ud83d\x00"), call, result]
    turn = await run_turn(ChatRequest(MODEL, messages), Principal(user=user))
    assert turn.answer.text == "b\ud83dc\x00"  # the client still gets what upstream sent
    rows = [m async for m in Message.objects.order_by("sequence")]
    assert [(m.role, m.content) for m in rows] == [
        ("user", "a\ufffd\ufffd"),
        ("assistant", ""),
        ("tool", "r"),
        ("assistant", "b\ufffdc\ufffd"),
    ]
    assert rows[1].tool_calls == [{"id": "\ufffd", "f": ["\ufffd"]}]
    assert rows[2].tool_call_id == "\ufffd"
    assert (await Conversation.objects.aget()).title == "a\ufffd\ufffd"


# A new conversation's id goes out before its rows are written ----------------------------


class LateWriter:
    """The group-commit writer, each job handed to it ``delay`` seconds late, in order (a
    loaded database, without holding the thread the request's sync code may need)."""

    def __init__(self, writer: Any, delay: float) -> None:
        self.writer = writer
        self.delay = delay

    def submit(self, job: Any) -> asyncio.Future[Any]:
        return self._late(lambda writer: writer.submit(job))

    def insert(self, rows: Any) -> asyncio.Future[Any]:
        return self._late(lambda writer: writer.insert(rows))

    def _late(self, handing: Any) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        late = loop.create_future()

        def settle(done: asyncio.Future[Any]) -> None:
            if done.exception() is not None:
                late.set_exception(done.exception())  # type: ignore[arg-type]
            else:
                late.set_result(done.result())

        loop.call_later(self.delay, lambda: handing(self.writer()).add_done_callback(settle))
        return late


def slow_writes(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Make every write of the group-commit writer start ``seconds`` late."""
    writer = lifecycle.writer
    monkeypatch.setattr(lifecycle, "writer", lambda: LateWriter(writer, seconds))


@pytest.mark.django_db(transaction=True)
async def test_the_first_byte_does_not_wait_for_the_rows_and_readers_of_the_id_do(
    user, auth, upstream, monkeypatch
):
    slow_writes(monkeypatch, 0.5)
    upstream.post(OPENAI_URL).mock(side_effect=lambda request: answer("Paris."))
    client = AsyncClient()
    body = {"model": MODEL, "messages": [msg("user", "Capital?")], "stream": True}
    started = time.monotonic()
    response = await client.post(
        "/copilotedge/v1/chat/completions", body, content_type="application/json", headers=auth
    )
    first = await anext(aiter(response.streaming_content))
    assert time.monotonic() - started < 0.4 and b"Paris" in first
    conversation_id = response[CONVERSATION_HEADER]
    assert not await Conversation.objects.filter(pk=conversation_id).aexists()
    # Fetched (and continued, resumed: all through owned_conversation) at once, it is there.
    fetched = await client.get(f"/copilotedge/conversations/{conversation_id}/", headers=auth)
    assert fetched.status_code == 200
    assert [m["role"] for m in fetched.json()["messages"]] == ["user", "assistant"]
    assert b"[DONE]" in b"".join([chunk async for chunk in response.streaming_content])
    await lifecycle.drain()
    row = await UsageRecord.objects.aget()
    assert str(row.conversation_id) == conversation_id


@pytest.mark.django_db(transaction=True)
async def test_a_new_conversation_another_process_is_saving_is_waited_for(user):
    principal = Principal(user=user)
    conversation_id = new_id()  # issued elsewhere: nothing here knows of its write

    async def saved_elsewhere() -> None:
        await asyncio.sleep(0.2)
        await Conversation.objects.acreate(id=conversation_id, user=user, model=MODEL)

    saving = asyncio.create_task(saved_elsewhere())
    found = await owned_conversation(principal, conversation_id)
    assert found.pk == conversation_id
    await saving


@pytest.mark.django_db(transaction=True)
async def test_an_id_that_cannot_be_on_its_way_is_not_waited_for(user, monkeypatch):
    principal = Principal(user=user)
    for missing in (uuid.uuid4(), uuid.UUID(int=new_id().int & ~(0xFFFFFFFFFFFF << 80) | 1)):
        started = time.monotonic()
        with pytest.raises(NotFound):
            await owned_conversation(principal, missing)  # not time-ordered, or long issued
        assert time.monotonic() - started < 0.1
    monkeypatch.setattr(store, "SAVE_WINDOW", 0.3)
    started = time.monotonic()
    with pytest.raises(NotFound):
        await owned_conversation(principal, new_id())  # young, but never saved
    assert 0.2 < time.monotonic() - started < 1.0


@pytest.mark.django_db(transaction=True)
async def test_rows_that_could_not_be_saved_end_the_answer_in_band(
    user, auth, upstream, monkeypatch
):
    def broken(*args: Any) -> None:
        raise DatabaseError("disk full")

    monkeypatch.setattr(Conversation.objects, "bulk_create", broken)
    upstream.post(OPENAI_URL).mock(side_effect=lambda request: answer("Paris."))
    body = {"model": MODEL, "messages": [msg("user", "Capital?")], "stream": True}
    response = await AsyncClient().post(
        "/copilotedge/v1/chat/completions", body, content_type="application/json", headers=auth
    )
    text = b"".join([chunk async for chunk in response.streaming_content]).decode()
    assert "Paris" in text and '"code":"database_unavailable"' in text, text
    await lifecycle.drain()
    row = await UsageRecord.objects.aget()  # the tokens spent are billed all the same
    assert row.conversation_id is None and row.completion_tokens > 0
    assert not await Conversation.objects.aexists()


@pytest.mark.django_db(transaction=True)
async def test_a_short_answer_is_written_once_with_its_conversation_and_its_ledger_row(
    user, upstream, monkeypatch
):
    upstream.post(OPENAI_URL).mock(side_effect=lambda request: answer("Paris."))
    batches: list[int] = []
    real = background._run_batch

    def counted(jobs: list[Any]) -> Any:
        batches.append(len(jobs))
        return real(jobs)

    monkeypatch.setattr(background, "_run_batch", counted)
    await run_turn(ChatRequest(MODEL, [msg("user", "Capital?")]), Principal(user=user))
    # The conversation, its messages (the answer whole) and the ledger row: one batch.
    assert batches == [2]
    row = await Message.objects.aget(role="assistant")
    assert (row.status, row.content) == ("complete", "Paris.")
    record = await UsageRecord.objects.aget()
    assert record.conversation_id == row.conversation_id


@pytest.mark.django_db(transaction=True)
@override_settings(COPILOTEDGE_FLUSH_INTERVAL=0.1)
async def test_a_slow_answers_rows_are_written_within_a_flush_interval(user, upstream):
    upstream.post(OPENAI_URL).mock(
        return_value=stream_response(WordStream(["slow "] * 3, delay=0.3))
    )
    turn = Turn(ChatRequest(MODEL, [msg("user", "hi")]), Principal(user=user), "openai")
    opening = asyncio.ensure_future(turn.open())  # upstream's first word takes 0.3 s
    await asyncio.sleep(0.2)  # no text yet: the rows are there all the same
    await lifecycle.writer().drain()
    row = await Message.objects.aget(role="assistant")
    assert (row.status, row.content) == ("streaming", "")
    await opening
    async for _ in turn.deltas():
        pass
    await lifecycle.drain()
    row = await Message.objects.aget(role="assistant")
    assert (row.status, row.content) == ("complete", "slow slow slow ")
