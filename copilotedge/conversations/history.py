"""Conversations in the turn: preferences, stored history, the budget, and what is saved.

A turn asks, in this order:

- :func:`plan_turn`: apply the caller's :class:`~copilotedge.models.Preference` where the
  request says nothing, load the stored history of ``conversation_id`` (the caller's own
  only) and fit it to the history budget. Nothing is written: the turn is admitted (model
  and limits) after this, on the prompt that goes upstream, so a refused turn stores
  nothing.
- :func:`astore`: store the new messages and an empty ``streaming`` assistant message
  (:mod:`copilotedge.conversations.store`), and give back the
  :class:`~copilotedge.conversations.transcript.Transcript` that saves the answer as it
  grows. A new conversation's rows are saved while the answer streams: its id goes out
  at once, and a reader of it waits for them (:func:`find_new`); the turn checks they
  were saved at its end (:func:`wait_until_stored`).
- :func:`save_steps`, for each server tool step: its messages (an assistant message with
  ``tool_calls``, then the ``role: tool`` results), just before the answer, written while
  the model goes on;
- :func:`finish`: save the final answer from the turn's
  :class:`~copilotedge.chat.types.TurnRecord`; :func:`wait_until_saved` waits for that.
  When a person's approval of some of the answer's own calls was deferred, the results of
  those that ran are stored right after it (:func:`save_steps` with ``after``).

A client may send only the new messages (the usual way with ``conversation_id``) or the
whole conversation again (as AG-UI clients do): when the request's messages start with
the stored ones, only the rest is new.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from django.db import DatabaseError
from django.utils import timezone

from copilotedge import exceptions
from copilotedge.chat.token_estimates import estimate_message_tokens
from copilotedge.chat.types import Answer, ChatRequest, TurnRecord
from copilotedge.conf import settings
from copilotedge.conversations.preferences import apply_preference, load_preference
from copilotedge.conversations.store import (
    may_be_saving,
    new_conversation,
    save_turn,
    storable_json,
    store_steps,
    until_saved,
    waiting_rows,
)
from copilotedge.conversations.transcript import Transcript, active
from copilotedge.models import Conversation, Message
from copilotedge.usage.ledger import count_tokens

if TYPE_CHECKING:
    from copilotedge.auth import Principal

logger = logging.getLogger(__name__)

T = TypeVar("T")

_SYSTEM = Message.Role.SYSTEM
_STATUS_OF_OUTCOME = {
    "ok": Message.Status.COMPLETE,
    "cancelled": Message.Status.CANCELLED,
    "incomplete": Message.Status.INCOMPLETE,
}


def message_tokens(message: dict[str, Any]) -> int:
    return estimate_message_tokens(message)


def fit_history(
    messages: Sequence[dict[str, Any]], *, keep_last: int, max_messages: int, max_tokens: int
) -> list[dict[str, Any]]:
    """The messages to send: the last ``keep_last`` (the new turn) and every system message
    always, then as much of the rest as fits ``max_messages``/``max_tokens``, newest first.

    A tool result whose assistant call was dropped is dropped too (upstream refuses it).
    """
    split = max(0, len(messages) - keep_last)
    head = messages[:split]
    keep = {i for i, m in enumerate(head) if m["role"] == _SYSTEM}
    keep.update(range(split, len(messages)))
    tokens_left = max_tokens - sum(message_tokens(messages[i]) for i in keep)
    messages_left = max_messages
    history = [i for i in range(split) if i not in keep]
    taken: list[int] = []
    for i in reversed(history):
        cost = message_tokens(messages[i])
        if messages_left <= 0 or cost > tokens_left:
            break
        taken.append(i)
        messages_left -= 1
        tokens_left -= cost
    taken.reverse()
    while taken and messages[taken[0]]["role"] == Message.Role.TOOL:
        taken.pop(0)
    keep.update(taken)
    return [messages[i] for i in sorted(keep)]


def _same(message: dict[str, Any]) -> tuple[str, str]:
    return message["role"], str(message.get("content") or "")


def split_new(
    stored: list[dict[str, Any]], incoming: list[dict[str, Any]], *, truncated: bool = False
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(to_send, new)``: the conversation as sent upstream, and the messages to store.

    ``incoming`` repeats the conversation when its non-system messages start with the
    stored ones (or, if ``stored`` is only the latest part, contain them), then go on, or
    end there (a run that resumes the conversation, as an AG-UI resume, adds nothing).
    """
    said = [_same(m) for m in stored if m["role"] != _SYSTEM]
    theirs = [m for m in incoming if m["role"] != _SYSTEM]
    if said:
        starts = range(len(theirs) - len(said) - 1, -1, -1) if truncated else (0,)
        for start in starts:
            end = start + len(said)
            if end <= len(theirs) and [_same(m) for m in theirs[start:end]] == said:
                return incoming, theirs[end:]
    return stored + incoming, incoming


#: How often a reader looks again for a new conversation another process is saving.
_LOOK_AGAIN = 0.02


async def find_new(lookup: Callable[[], Awaitable[T | None]], row_id: uuid.UUID) -> T | None:
    """``lookup()`` of a row that may be a new conversation or answer still being saved.

    Its id reaches the client before its rows are written (:func:`astore`): here, this
    waits for that write first; for one another process is writing, it looks again
    while the id is young enough for the rows to be on their way.
    """
    await until_saved(row_id)
    found = await lookup()
    while found is None and may_be_saving(row_id):
        await asyncio.sleep(_LOOK_AGAIN)
        found = await lookup()
    return found


async def owned_conversation(principal: Principal, conversation_id: uuid.UUID) -> Conversation:
    """The caller's conversation, or :class:`NotFound` (also for another's: no leak).

    A conversation still being saved is waited for (:func:`find_new`).
    """
    conversation = None
    if principal.user is not None:
        rows = Conversation.objects.filter(pk=conversation_id, user=principal.user)
        conversation = await find_new(rows.afirst, conversation_id)
    if conversation is None:
        raise exceptions.NotFound(
            "No conversation with this id.", param="conversation_id", code="conversation_not_found"
        )
    return conversation


async def stored_history(conversation: Conversation) -> tuple[list[dict[str, Any]], bool]:
    """The stored history as OpenAI messages (every system message and the latest
    others), and whether older messages were left out."""
    usable = conversation.messages.exclude(status=Message.Status.STREAMING).exclude(
        role=Message.Role.ASSISTANT, content="", tool_calls__isnull=True
    )
    system = [m async for m in usable.filter(role=_SYSTEM).order_by("sequence")]
    recent = [
        m
        async for m in usable.exclude(role=_SYSTEM).order_by("-sequence")[
            : settings.HISTORY_MAX_MESSAGES
        ]
    ]
    ordered = sorted(system + recent, key=lambda m: m.sequence)
    truncated = len(recent) == settings.HISTORY_MAX_MESSAGES
    return [m.as_openai() for m in ordered], truncated


@dataclasses.dataclass(frozen=True, slots=True)
class HistoryPlan:
    """What a turn sends upstream and what it would store, before it is admitted."""

    #: The request as it goes upstream: preferences applied, stored history fitted in.
    request: ChatRequest
    #: The turn's own messages (the ones to store).
    new: list[dict[str, Any]]
    #: The request's ``conversation_id`` names a conversation this turn starts.
    create: bool = False
    #: Whether the turn is stored at all (setting, caller, preference).
    store: bool = False


async def plan_turn(principal: Principal, request: ChatRequest) -> HistoryPlan:
    """Apply preferences and the stored conversation to ``request``, and scope it to
    ``principal``; nothing is written."""
    preference = await load_preference(principal)
    request = apply_preference(request, preference)
    stored: list[dict[str, Any]] = []
    truncated = creating = False
    if request.conversation_id is not None:
        try:
            conversation = await owned_conversation(principal, request.conversation_id)
        except exceptions.NotFound:
            # A client-chosen id (an AG-UI threadId) may name a conversation to start.
            taken = await Conversation.objects.filter(pk=request.conversation_id).aexists()
            if not request.create_conversation or taken or principal.user is None:
                raise
            creating = True
        else:
            stored, truncated = await stored_history(conversation)
    to_send, new = split_new(stored, request.messages, truncated=truncated)
    has_system = any(m["role"] == _SYSTEM for m in to_send)
    if preference is not None and preference.system_prompt and not has_system:
        to_send = [{"role": "system", "content": preference.system_prompt}, *to_send]
    fitted = fit_history(
        to_send,
        keep_last=len(new),
        max_messages=settings.HISTORY_MAX_MESSAGES,
        max_tokens=settings.HISTORY_MAX_TOKENS,
    )
    store = (
        settings.STORE_CONVERSATIONS
        and principal.user is not None
        and (preference is None or preference.store_conversations)
    )
    planned = dataclasses.replace(request, messages=fitted, scope=principal.scope)
    return HistoryPlan(planned, new, creating, store)


async def astore(principal: Principal, plan: HistoryPlan, answer: Answer) -> Transcript | None:
    """Save the planned turn (its new messages and an empty answer), if it is stored.

    The transcript saves ``answer``'s text as the caller folds deltas into it. A new
    conversation's rows are written with the answer's first save (for most answers, its
    end); readers of its id wait for them (:func:`find_new`).
    """
    if not plan.store:
        return None
    request = plan.request
    if request.conversation_id is None:
        pending = new_conversation(principal, request.model, plan.new)
        transcript = Transcript(
            pending.answer.id, pending.conversation.id, lambda: answer.text,
            created=pending.created, sequence=pending.answer.sequence, create=pending.create,
        )  # fmt: skip
        pending.hurry = transcript.write_now
        return transcript
    conversation, message = await save_turn(
        principal, request.conversation_id, request.model, plan.new, plan.create
    )
    return Transcript(message.id, conversation.id, lambda: answer.text, sequence=message.sequence)


async def wait_until_stored(transcript: Transcript | None) -> None:
    """Wait until a new conversation's rows are saved; :class:`DatabaseUnavailable` if not.

    A turn's first byte does not wait for them (readers of the new id do, see
    :func:`find_new`); the turn checks once it has queued its final save (with them,
    usually), and ends in-band with the error if they could not be saved.
    """
    if transcript is None or transcript.created is None:
        return
    transcript.write_now()  # if they still wait for the answer's first save
    try:
        await asyncio.shield(transcript.created)
    except DatabaseError as error:
        logger.warning("Could not save conversation %s: %s", transcript.conversation_id, error)
        transcript.deleted = True  # nothing may point at it
        raise exceptions.DatabaseUnavailable() from error


def save_steps(
    transcript: Transcript | None,
    messages: Sequence[dict[str, Any]],
    *,
    after: Sequence[dict[str, Any]] = (),
) -> None:
    """Queue a server tool step's messages (the model's calls, then their results), to
    be stored just before the answer while the model goes on (the caller does not wait),
    and ``after`` it the results of the answer's own calls.

    They go through the group-commit writer, in order with the answer's own saves: a
    reader sees the steps of a turn as they happen, and the answer after them.
    """
    if transcript is None or transcript.deleted or not (messages or after):
        return
    sequence = transcript.sequence
    waiting = waiting_rows(transcript.message_id)
    if waiting is not None:
        # A new conversation's rows still wait for the answer's first save: with them.
        waiting.add(messages, after)
        transcript.sequence = waiting.answer.sequence
        return
    if sequence is not None:
        transcript.sequence = sequence + len(messages)  # where the answer moves
    store_steps(
        transcript.conversation_id, transcript.message_id, sequence, list(messages), list(after)
    )


def finish(transcript: Transcript | None, turn: TurnRecord) -> None:
    """Queue saving the finished ``turn``'s answer now (with a new conversation's rows,
    if they wait), so the ledger row queued next shares its transaction; the caller
    does not wait (:func:`wait_until_saved` does)."""
    if transcript is None:
        return
    status = _STATUS_OF_OUTCOME.get(turn.outcome, Message.Status.ERROR)
    counted = count_tokens(turn)  # the ledger's own counts, upstream's or estimated
    tool_calls = storable_json([call.as_openai() for call in turn.tool_calls] or None)
    finish_reason = turn.final_finish_reason() if status == Message.Status.COMPLETE else ""
    saving = transcript.finish(
        {
            "status": status,
            "finish_reason": finish_reason or turn.finish_reason or "",
            "tool_calls": tool_calls,
            "prompt_tokens": counted.prompt,
            "completion_tokens": counted.completion,
        }
    )
    saving.add_done_callback(functools.partial(_log_unsaved, transcript.message_id))
    transcript.saving = saving


def _log_unsaved(message_id: uuid.UUID, saving: asyncio.Task[None]) -> None:
    if not saving.cancelled() and (error := saving.exception()) is not None:
        logger.error("Could not save the answer of message %s", message_id, exc_info=error)


async def wait_until_saved(transcript: Transcript | None) -> None:
    """Wait until the final answer is saved (a face may say "done" after it)."""
    saving = transcript.saving if transcript is not None else None
    if saving is not None:
        # A waiter being cancelled must not cancel the save; its failure is logged there.
        await asyncio.wait({saving})


async def acancel(message_id: uuid.UUID) -> bool:
    """Stop a generating answer from anywhere: here at once, elsewhere at its next save."""
    local = transcript_of(message_id)
    if local is not None:
        local.stop()
        return True
    rows = Message.objects.filter(pk=message_id)
    if await find_new(rows.values_list("status", flat=True).afirst, message_id) is None:
        return False
    local = transcript_of(message_id)  # it may have started here meanwhile
    if local is not None:
        local.stop()
        return True
    updated = await rows.filter(status=Message.Status.STREAMING).aupdate(
        status=Message.Status.CANCELLED, updated_at=timezone.now()
    )
    return updated > 0


def transcript_of(message_id: uuid.UUID) -> Transcript | None:
    """The transcript of an answer this process is generating, if it is."""
    return active.get(message_id)
