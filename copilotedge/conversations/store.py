"""The database writes of a turn: its new messages and the empty answer that will grow.

A new conversation needs no reads, so :func:`new_conversation` builds its rows at once
and hands them to the group-commit writer (:func:`copilotedge.lifecycle.writer`): they
are saved while upstream starts answering, and
:func:`copilotedge.conversations.history.wait_until_stored` waits for them. A turn of a stored
conversation (or of one a client-chosen id starts) is saved by
:func:`save_turn` in one transaction that numbers the new messages after the stored
ones, tried again when a concurrent turn took the same numbers.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from copilotedge import exceptions, lifecycle
from copilotedge.conversations.ids import issued_within, new_id
from copilotedge.conversations.transcript import spawn, storable
from copilotedge.models import Conversation, Message

if TYPE_CHECKING:
    from copilotedge.auth import Principal

logger = logging.getLogger(__name__)

TITLE_LENGTH = 80
_STORE_ATTEMPTS = 3


def derive_title(messages: Sequence[dict[str, Any]]) -> str:
    """The first user message, on one line, cut at a word near :data:`TITLE_LENGTH`."""
    for message in messages:
        if message["role"] == Message.Role.USER:
            text = re.sub(r"\s+", " ", str(message.get("content") or "")).strip()
            if len(text) <= TITLE_LENGTH:
                return text
            cut = text[:TITLE_LENGTH].rsplit(" ", 1)[0] or text[:TITLE_LENGTH]
            return cut.rstrip(" ,.;:") + "…"
    return ""


def _store_turn(
    principal: Principal,
    conversation_id: uuid.UUID | None,
    model: str,
    new: list[dict[str, Any]],
    create: bool,
) -> tuple[Conversation, Message]:
    """Save the new messages and an empty streaming answer (one transaction)."""
    for attempt in range(1, _STORE_ATTEMPTS + 1):
        try:
            with transaction.atomic():
                return _store_turn_once(principal, conversation_id, model, new, create)
        except IntegrityError:
            # A concurrent turn took the same sequence number (or created the same
            # conversation): the next attempt sees its rows.
            if attempt == _STORE_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def storable_json(value: Any) -> Any:
    """``value`` with :func:`storable` strings (jsonb refuses ``\\u0000`` too)."""
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, list):
        return [storable_json(item) for item in value]
    if isinstance(value, dict):
        return {storable(str(key)): storable_json(item) for key, item in value.items()}
    return value


def _not_found() -> exceptions.NotFound:
    return exceptions.NotFound(
        "No conversation with this id.", param="conversation_id", code="conversation_not_found"
    )


def _store_turn_once(
    principal: Principal,
    conversation_id: uuid.UUID | None,
    model: str,
    new: list[dict[str, Any]],
    create: bool,
) -> tuple[Conversation, Message]:
    now = timezone.now()
    conversation = None
    if conversation_id is not None:
        conversation = Conversation.objects.select_for_update().filter(pk=conversation_id).first()
        if conversation is None and not create:
            raise _not_found()  # deleted since it was loaded
        if conversation is not None and conversation.user_id != principal.user.pk:
            raise _not_found()
    if conversation is None:
        conversation = Conversation.objects.create(
            id=conversation_id or uuid.uuid4(), user=principal.user, api_key=principal.api_key,
            model=model, title=storable(derive_title(new)), created_at=now, updated_at=now,
        )  # fmt: skip
        sequence = 0
    else:
        last = conversation.messages.aggregate(last=Max("sequence"))["last"]
        sequence = 0 if last is None else last + 1
        conversation.updated_at = now
        conversation.model = model
        conversation.title = conversation.title or storable(derive_title(new))
        conversation.save(update_fields=["updated_at", "model", "title"])
    rows = _message_rows(conversation, sequence, new, now)
    Message.objects.bulk_create(rows)
    return conversation, rows[-1]


def _rows(
    conversation: Conversation, sequence: int, messages: Sequence[dict[str, Any]], now: datetime
) -> list[Message]:
    """OpenAI messages as unsaved rows of ``conversation``, numbered from ``sequence``."""
    return [
        Message(
            conversation=conversation,
            sequence=sequence + i,
            role=m["role"],
            content=storable(str(m.get("content") or "")),
            tool_calls=storable_json(m.get("tool_calls") or None),
            tool_call_id=storable(str(m.get("tool_call_id") or "")),
            created_at=now,
            updated_at=now,
        )
        for i, m in enumerate(messages)
    ]


def _message_rows(
    conversation: Conversation, sequence: int, new: list[dict[str, Any]], now: datetime
) -> list[Message]:
    """The new messages from ``sequence`` on, then the empty ``streaming`` answer."""
    rows = _rows(conversation, sequence, new, now)
    answer = Message(
        conversation=conversation,
        sequence=sequence + len(new),
        role=Message.Role.ASSISTANT,
        status=Message.Status.STREAMING,
        created_at=now,
        updated_at=now,
    )
    return [*rows, answer]


@dataclass(eq=False)
class NewRows:
    """A new conversation's rows, built at once and written later, with the answer's
    first save (:meth:`create`); ``created`` is that write, once it is queued."""

    conversation: Conversation
    rows: list[Message]
    created: asyncio.Future[None]
    #: Asks for the rows to be written now (a reader waits for them).
    hurry: Callable[[], None] | None = None
    _queued: bool = False

    #: Rows to go right after the answer (see :meth:`add`).
    after: list[Message] = field(default_factory=list)

    @property
    def answer(self) -> Message:
        return self.rows[-1]

    @property
    def queued(self) -> bool:
        """Whether the rows went to the writer (they take no more rows then)."""
        return self._queued

    def add(self, before: Sequence[dict[str, Any]], after: Sequence[dict[str, Any]] = ()) -> None:
        """Add ``before`` just before the answer (a server tool step's messages) and
        ``after`` right after it, to be written with the rest."""
        assert not self._queued, "the rows were written"
        now = timezone.now()
        answer = self.answer
        self.rows[-1:] = [*_rows(self.conversation, 0, before, now), answer]
        self.after += _rows(self.conversation, 0, after, now)
        # A new conversation: its rows are numbered in order from 0.
        for sequence, row in enumerate([*self.rows, *self.after]):
            row.sequence = sequence

    def create(self, answer: dict[str, Any]) -> asyncio.Future[None]:
        """Queue writing the rows, the answer with the fields ``answer`` (once)."""
        assert not self._queued, "the rows are written once"
        self._queued = True
        row = self.answer
        for name, value in answer.items():
            setattr(row, name, value)
        row.updated_at = self.conversation.updated_at = timezone.now()
        rows = [self.conversation, *self.rows, *self.after]
        lifecycle.writer().insert(rows).add_done_callback(self._settle)
        return self.created

    def _settle(self, done: asyncio.Future[None]) -> None:
        if self.created.done():
            return
        if done.cancelled():
            self.created.cancel()
        elif (error := done.exception()) is not None:
            self.created.set_exception(error)
        else:
            self.created.set_result(None)


#: New conversations (and their answers) this process is saving, by id.
_saving: dict[uuid.UUID, NewRows] = {}
#: Those whose write ended in the last :data:`SAVE_WINDOW` seconds (saved or failed), by
#: id, with when: a reader missing one of them need not wait for it.
_settled: dict[uuid.UUID, float] = {}

#: How long after a new conversation's id was issued its rows may still be on their way:
#: a reader that finds no row for so young an id, written elsewhere, looks again until
#: then (they are written within a flush interval; this is for a loaded database).
SAVE_WINDOW = 5.0


def new_conversation(principal: Principal, model: str, new: list[dict[str, Any]]) -> NewRows:
    """A conversation that starts with ``new``: its rows built now, written later.

    Nothing can conflict with a fresh id, so nothing needs reading first, and the rows
    go to the writer with the answer's first save (one write, for most answers, with the
    answer whole). Its id and its answer's (time-ordered,
    :mod:`copilotedge.conversations.ids`) may go to the client at once: a reader here
    waits for the write (:func:`until_saved`), one elsewhere sees the id is new.
    """
    now = timezone.now()
    conversation = Conversation(
        id=new_id(), user=principal.user, api_key=principal.api_key, model=model,
        title=storable(derive_title(new)), created_at=now, updated_at=now,
    )  # fmt: skip
    rows = _message_rows(conversation, 0, new, now)
    rows[-1].id = new_id()
    pending = NewRows(conversation, rows, asyncio.get_running_loop().create_future())
    keys = (conversation.id, rows[-1].id)
    for key in keys:
        _saving[key] = pending
    pending.created.add_done_callback(functools.partial(_settle, keys))
    return pending


def _settle(keys: tuple[uuid.UUID, ...], _: asyncio.Future[None]) -> None:
    now = time.monotonic()
    for key in keys:
        _saving.pop(key, None)
        _settled[key] = now
    # Oldest first (insertion order): drop those past the window.
    for key, when in list(_settled.items()):
        if now - when <= SAVE_WINDOW:
            break
        del _settled[key]


def waiting_rows(answer_id: uuid.UUID) -> NewRows | None:
    """The new conversation's rows of the answer ``answer_id``, if they still take rows."""
    pending = _saving.get(answer_id)
    return pending if pending is not None and not pending.queued else None


async def until_saved(row_id: uuid.UUID) -> bool:
    """Wait for the write of a new conversation or answer (by id) this process's event
    loop is saving, asking for it now; whether there was one. Never raises: the caller
    reads the row."""
    pending = _saving.get(row_id)
    if pending is None or pending.created.get_loop() is not asyncio.get_running_loop():
        return False
    if pending.hurry is not None:
        pending.hurry()
    await asyncio.wait({pending.created})  # its outcome is the turn's; a waiter's cancel is not
    return True


def may_be_saving(row_id: uuid.UUID) -> bool:
    """Whether a missing new conversation or answer may still be on its way: its id is
    young and its write is not known here to have ended."""
    return row_id not in _settled and issued_within(row_id, SAVE_WINDOW)


async def save_turn(
    principal: Principal,
    conversation_id: uuid.UUID | None,
    model: str,
    new: list[dict[str, Any]],
    create: bool,
) -> tuple[Conversation, Message]:
    """Save a turn of a stored conversation, or of the one ``create`` lets its id start."""
    saving = asyncio.ensure_future(
        sync_to_async(_store_turn)(principal, conversation_id, model, new, create)
    )
    try:
        return await asyncio.shield(saving)
    except asyncio.CancelledError:
        # The rows may still be written: close the answer so it does not stay "streaming".
        saving.add_done_callback(_close_abandoned)
        raise


def _store_around_answer(
    conversation_id: uuid.UUID,
    answer_id: uuid.UUID,
    answer_sequence: int | None,
    before: Sequence[dict[str, Any]],
    after: Sequence[dict[str, Any]] = (),
) -> None:
    """Store ``before`` (a server tool step: the model's calls, then their results) just
    before the answer ``answer_id``, which moves after them, and ``after`` (the results
    of the answer's own calls, when approving some of them was deferred) right after
    it: a reloaded conversation reads in order.

    Usually nothing came after the answer (stored at ``answer_sequence``): the answer
    moves up and the rows take their places, two statements. If a concurrent turn's
    messages follow it, the sequence constraint refuses that and the rows go after
    them, under the conversation's lock.
    """
    now = timezone.now()
    if answer_sequence is not None:
        try:
            with transaction.atomic():
                moved = Message.objects.filter(pk=answer_id, sequence=answer_sequence).update(
                    sequence=answer_sequence + len(before)
                )
                if moved:
                    conversation = Conversation(pk=conversation_id)
                    rows = _rows_around(conversation, answer_sequence, before, after, now)
                    Message.objects.bulk_create(rows)
                    return
        except IntegrityError:
            pass
    with transaction.atomic():
        locked = Conversation.objects.select_for_update().filter(pk=conversation_id).first()
        answer = Message.objects.filter(pk=answer_id, conversation_id=conversation_id).first()
        if locked is None or answer is None:
            return  # deleted meanwhile (maybe by one of these very tools)
        last = locked.messages.aggregate(last=Max("sequence"))["last"]
        # Right before the answer, or after a concurrent turn's messages if there are any.
        start = answer.sequence if answer.sequence == last else last + 1
        Message.objects.filter(pk=answer_id).update(sequence=start + len(before))
        Message.objects.bulk_create(_rows_around(locked, start, before, after, now))


def _rows_around(
    conversation: Conversation,
    start: int,
    before: Sequence[dict[str, Any]],
    after: Sequence[dict[str, Any]],
    now: datetime,
) -> list[Message]:
    """``before`` from ``start`` on, then (past the answer's place) ``after``."""
    rows = _rows(conversation, start, before, now)
    return rows + _rows(conversation, start + len(before) + 1, after, now)


def store_steps(
    conversation_id: uuid.UUID,
    answer_id: uuid.UUID,
    answer_sequence: int | None,
    before: Sequence[dict[str, Any]],
    after: Sequence[dict[str, Any]] = (),
) -> None:
    """Queue :func:`_store_around_answer` with the group-commit writer (not waited for;
    the writer runs it before the answer's later saves and drains it at a stop)."""
    job = functools.partial(
        _store_around_answer, conversation_id, answer_id, answer_sequence, before, after
    )
    lifecycle.writer().submit(job).add_done_callback(functools.partial(_log_failure, answer_id))


def _log_failure(answer_id: uuid.UUID, stored: asyncio.Future[None]) -> None:
    if not stored.cancelled() and stored.exception() is not None:
        logger.error(
            "Could not save the tool steps of message %s", answer_id, exc_info=stored.exception()
        )


def _close_abandoned(saving: asyncio.Future[tuple[Conversation, Message]]) -> None:
    if saving.cancelled() or saving.exception() is not None:
        return
    answer = saving.result()[1]
    spawn(
        Message.objects.filter(pk=answer.pk).aupdate(
            status=Message.Status.CANCELLED, updated_at=timezone.now()
        )
    )
