"""The database writes of a turn: the title a new conversation gets, and where a server
tool step's messages go."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import async_to_sync

from copilotedge import lifecycle
from copilotedge.auth import Principal
from copilotedge.conversations.store import NewRows, derive_title, new_conversation, store_steps
from copilotedge.models import Conversation, Message


def msg(role: str, content: str) -> dict[str, Any]:
    return {"role": role, "content": content}


def test_title_is_the_first_user_message_on_one_line_cut_at_a_word():
    assert derive_title([msg("system", "x"), msg("user", "  Hello\n  world ")]) == "Hello world"
    title = derive_title([msg("user", "word " * 40)])
    assert title.endswith("…") and len(title) <= 81 and "  " not in title
    assert derive_title([msg("assistant", "x")]) == ""


# A server tool step's messages, stored before the answer --------------------------------

STEP = [
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "done"},
]  # fmt: skip


def _turn(user: Any) -> tuple[Conversation, Message]:
    conversation = Conversation.objects.create(user=user, model="m")
    Message.objects.create(conversation=conversation, sequence=0, role="user", content="hi")
    answer = Message.objects.create(
        conversation=conversation, sequence=1, role="assistant", status="streaming"
    )
    return conversation, answer


def _stored(conversation: Conversation) -> list[tuple[int, str, str]]:
    return list(
        conversation.messages.order_by("sequence").values_list("sequence", "role", "content")
    )


async def _store(conversation: Conversation, answer: Message, sequence: int | None) -> None:
    store_steps(conversation.pk, answer.pk, sequence, STEP)
    await lifecycle.drain()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("known", [True, False], ids=["where-the-answer-was", "looked-up"])
def test_the_steps_take_the_answers_place_and_the_answer_moves_after_them(user, known):
    conversation, answer = _turn(user)
    async_to_sync(_store)(conversation, answer, 1 if known else None)
    assert _stored(conversation) == [
        (0, "user", "hi"), (1, "assistant", ""), (2, "tool", "done"), (3, "assistant", "")
    ]  # fmt: skip
    assert Message.objects.get(pk=answer.pk).sequence == 3


@pytest.mark.django_db(transaction=True)
def test_the_steps_go_after_a_concurrent_turns_messages(user):
    conversation, answer = _turn(user)
    # Another turn of the same conversation began meanwhile, after this answer.
    Message.objects.create(conversation=conversation, sequence=2, role="user", content="again")
    Message.objects.create(conversation=conversation, sequence=3, role="assistant", content="x")
    async_to_sync(_store)(conversation, answer, 1)
    assert _stored(conversation) == [
        (0, "user", "hi"), (2, "user", "again"), (3, "assistant", "x"),
        (4, "assistant", ""), (5, "tool", "done"), (6, "assistant", ""),
    ]  # fmt: skip
    assert Message.objects.get(pk=answer.pk).sequence == 6


@pytest.mark.django_db(transaction=True)
def test_the_steps_of_a_deleted_conversation_are_dropped(user):
    conversation, answer = _turn(user)
    conversation_id, answer_id = conversation.pk, answer.pk
    conversation.delete()
    async_to_sync(_store)(Conversation(pk=conversation_id), Message(pk=answer_id), 1)
    assert not Message.objects.filter(conversation_id=conversation_id).exists()


@pytest.mark.django_db(transaction=True)
def test_a_step_of_an_answer_whose_conversation_waits_is_written_with_it(user):
    async def turn() -> NewRows:
        pending = new_conversation(Principal(user=user), "m", [{"role": "user", "content": "hi"}])
        pending.add(STEP[:1], STEP[1:])  # a call before the answer, its result after it
        pending.add(STEP[1:])  # a step's result before it
        pending.create({"content": "the answer", "status": "complete"})
        await pending.created
        return pending

    pending = async_to_sync(turn)()
    assert _stored(pending.conversation) == [
        (0, "user", "hi"), (1, "assistant", ""), (2, "tool", "done"),
        (3, "assistant", "the answer"), (4, "tool", "done"),
    ]  # fmt: skip
    assert pending.answer.sequence == 3
