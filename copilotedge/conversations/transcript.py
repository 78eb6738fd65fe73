"""The growing text of a stored assistant message: saved while it grows, published live.

A :class:`Transcript` follows one generating answer. Off the stream's hot path (timers
and background tasks, never an ``await`` per token) it

- saves the text to the ``Message`` row every ``FLUSH_INTERVAL`` seconds or
  ``FLUSH_BYTES`` of new text, so a crash loses at most that much and a reader in
  another process sees progress;
- once a resumer asked for it (:func:`awatch`, from any server process), publishes the
  text past the last save to the channel-layer group of the message every
  ``LIVE_INTERVAL`` seconds (one coalesced event, never one per token), so the resumer
  gets the live deltas. An answer nobody resumes publishes only its end: at a thousand
  streams, publishing them all would keep the channel layer busy for no one.

In the process generating the answer a watch starts the publishing at once. From
another process it is a request in the cache, which the generating process reads with
its saves, at most every :data:`WATCH_CHECK_SECONDS`. The publication and the request
are :mod:`copilotedge.conversations.live`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from django.db import connections, router
from django.utils import timezone

from copilotedge import lifecycle
from copilotedge.conf import settings
from copilotedge.conversations.live import (
    LIVE_DELTA,
    LIVE_END,
    publish,
    request_watch,
    watch_requested,
    watches_requested,
)
from copilotedge.models import Message

if TYPE_CHECKING:
    from django.db.models import Field

logger = logging.getLogger(__name__)

#: How often a generating answer looks for a watch request from another process.
WATCH_CHECK_SECONDS = 2.0

#: Transcripts of the answers this process is generating, by message id.
active: dict[uuid.UUID, Transcript] = {}


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    """``text`` as every database (and msgpack) takes it: NUL (PostgreSQL refuses it) and
    lone surrogates (UTF-8 cannot hold them; JSON can carry both) become U+FFFD, one
    character for one, so offsets still hold."""
    if text.isascii() and "\x00" not in text:
        return text
    return _UNSTORABLE.sub("\ufffd", text)


def spawn(coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    """Run a save or publication in the background (:func:`copilotedge.lifecycle.spawn`)."""
    return lifecycle.spawn(coroutine)


async def awatch(message_id: uuid.UUID) -> None:
    """Ask whichever process generates ``message_id`` to publish its live deltas."""
    transcript = active.get(message_id)
    if transcript is not None:
        transcript.watch()
        return
    await request_watch(message_id)


def _submit_save(
    message_id: uuid.UUID, *, streaming_only: bool = False, check_watch: bool = False, **fields: Any
) -> asyncio.Future[tuple[int, bool]]:
    """Queue an update of the message row with the group-commit writer: its future gives
    the rows updated, and whether a resumer in another process asked for live deltas.

    The writer runs jobs in order, so this lands after the row's creation if that is
    still queued. The saves of growing text (``streaming_only``, the text alone) of one
    writer batch run as one statement (:class:`_GrowingText`).
    """
    fields = fields | {"updated_at": timezone.now()}
    if streaming_only and set(fields) == set(_GrowingText.fields):
        return lifecycle.writer().submit(_GrowingText(message_id, check_watch, fields))
    return lifecycle.writer().submit(
        functools.partial(_save, message_id, streaming_only, check_watch, fields)
    )


def _save_growing(texts: list[tuple[uuid.UUID, str, datetime]]) -> set[uuid.UUID]:
    """Save the text of answers still ``streaming``; the ids of those saved (a stopped or
    deleted answer takes no more text).

    One ``UPDATE`` run for all the rows (``executemany``), its parameters prepared by the
    fields themselves: an ORM ``update()`` a row builds and compiles its query every time,
    which costs several times the write (and ``bulk_update``'s ``CASE`` more still).
    """
    meta = Message._meta
    connection = connections[router.db_for_write(Message)]
    pk, content, updated_at, status = (
        cast("Field[Any, Any]", meta.get_field(name))
        for name in ("id", "content", "updated_at", "status")
    )

    def column(field: Field[Any, Any]) -> str:
        assert field.column is not None  # a concrete field
        return connection.ops.quote_name(field.column)

    sql = (
        f"UPDATE {connection.ops.quote_name(meta.db_table)} SET {column(content)} = %s, "
        f"{column(updated_at)} = %s WHERE {column(pk)} = %s AND {column(status)} = %s"
    )
    streaming = Message.Status.STREAMING
    params = [
        (
            content.get_db_prep_save(text, connection),
            updated_at.get_db_prep_save(when, connection),
            pk.get_db_prep_save(message_id, connection),
            status.get_db_prep_save(streaming, connection),
        )
        for message_id, text, when in texts
    ]
    with connection.cursor() as cursor:
        cursor.executemany(sql, params)
        updated = cursor.rowcount
    ids = [message_id for message_id, _, _ in texts]
    if updated == len(ids):
        return set(ids)
    # Some were stopped meanwhile (or the driver counts only the last row).
    rows = Message.objects.using(connection.alias).filter(pk__in=ids, status=streaming)
    return set(rows.values_list("pk", flat=True))


class _GrowingText:
    """A save of a growing answer's text, for the group-commit writer: the row is updated
    only while it is still ``streaming`` (a stop or a delete elsewhere ended it).

    The saves of every answer due together (their flush timers share a grid, see
    :func:`_flush_deadline`) go in one batch, and there in one statement run for them all
    (:func:`_save_growing`): their order among the batch's other jobs does not matter,
    since an answer's final save always comes after its own growing saves and only a
    ``streaming`` row takes them.
    """

    combinable = True
    fields = ("content", "updated_at")

    def __init__(self, message_id: uuid.UUID, check_watch: bool, values: dict[str, Any]) -> None:
        self.message_id = message_id
        self.check_watch = check_watch
        self.values = values

    def __call__(self) -> tuple[int, bool]:
        return _save(self.message_id, True, self.check_watch, self.values)

    @classmethod
    def run_together(cls, jobs: list[_GrowingText]) -> list[tuple[int, bool]]:
        saved = _save_growing(
            [(job.message_id, job.values["content"], job.values["updated_at"]) for job in jobs]
        )
        watched = watches_requested([job.message_id for job in jobs if job.check_watch])
        return [(int(job.message_id in saved), job.message_id in watched) for job in jobs]


def _flush_deadline(loop: asyncio.AbstractEventLoop, interval: float) -> float:
    """When a flush due within ``interval`` from now runs: on a grid of a quarter interval
    shared by every answer of the loop, so the answers' flushes come due together and go
    to the writer as one batch (one thread hop, one statement), never later than asked."""
    step = interval / 4
    return math.floor((loop.time() + interval) / step) * step


#: Writes a new conversation's rows, the answer with ``fields``; called once (see
#: :class:`Transcript`).
Create = Callable[[dict[str, Any]], "asyncio.Future[None]"]


async def _created(creating: asyncio.Future[None]) -> tuple[int, bool]:
    await creating
    return 1, False


def _save(
    message_id: uuid.UUID, streaming_only: bool, check_watch: bool, fields: dict[str, Any]
) -> tuple[int, bool]:
    rows = Message.objects.filter(pk=message_id)
    if streaming_only:
        rows = rows.filter(status=Message.Status.STREAMING)
    updated = rows.update(**fields)
    if not check_watch:
        return updated, False
    return updated, watch_requested(message_id)


class Transcript:
    """Saves and publishes the text of one generating assistant message.

    ``text`` returns the whole answer so far (the turn's :class:`~copilotedge.chat.types.Answer`);
    call :meth:`grow` with each new piece and :meth:`finish` once at the end.

    A new conversation's rows are written with the answer's first save (``create``):
    at its end for most answers, else at its first flush, one flush interval after the
    turn began at the latest, or at once when a reader asks (:meth:`write_now`).
    """

    def __init__(
        self,
        message_id: uuid.UUID,
        conversation_id: uuid.UUID,
        text: Callable[[], str],
        *,
        created: asyncio.Future[None] | None = None,
        sequence: int | None = None,
        create: Create | None = None,
    ) -> None:
        self.message_id = message_id
        self.conversation_id = conversation_id
        #: The message's place in its conversation, as last written here.
        self.sequence = sequence
        #: Saving the row, when the writer was asked to create it (a new conversation).
        self.created = created
        #: Writes a new conversation's rows, with the answer's first save (then unset).
        self._create = create
        self._answer_text = text
        #: Characters confirmed saved; live events start there.
        self.saved = 0
        self._unsaved_bytes = 0
        self._flush_timer: asyncio.TimerHandle | None = None
        self._flushing: asyncio.Task[None] | None = None
        self._publish_timer: asyncio.TimerHandle | None = None
        self._publishing: asyncio.Task[None] | None = None
        self._republish = False
        self._finished = False
        #: The task generating the answer; cancelled when the message is stopped elsewhere.
        self.task: asyncio.Task[Any] | None = None
        #: Set when the row disappeared (its conversation was deleted) mid-answer.
        self.deleted = False
        #: Set by :meth:`stop`; the answer ends (cancelled) at its next piece at the latest.
        self.stopped = False
        #: The task :meth:`stop` cancelled, if it cancelled one.
        self.cancelled_task: asyncio.Task[Any] | None = None
        #: The final save, once the turn ended (``history.finish``).
        self.saving: asyncio.Task[Any] | None = None
        #: Set once a resumer asked for live deltas (:func:`awatch`).
        self.watched = False
        self._watch_checked = -WATCH_CHECK_SECONDS
        # Read once per answer: grow() runs for every piece of text.
        self._flush_bytes = settings.FLUSH_BYTES
        self._flush_interval = settings.FLUSH_INTERVAL
        self._live_interval = settings.LIVE_INTERVAL
        active[message_id] = self
        if create is not None:
            # A new conversation's rows go with the answer's first save: its end, for most
            # answers, or one flush interval from now at the latest, text or not.
            self._schedule_flush()

    def write_now(self) -> None:
        """Queue a new conversation's rows now, with the answer so far (a reader waits
        for them, or a write that needs them comes next)."""
        if self._create is None or self._finished:
            return
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        text = self._text()
        self._unsaved_bytes = 0
        spawn(self._saved_up_to(self._write({"content": text}), len(text)))

    async def _saved_up_to(self, written: Awaitable[tuple[int, bool]], length: int) -> None:
        try:
            await written
        except Exception:
            logger.warning("Could not save message %s", self.message_id, exc_info=True)
        else:
            self.saved = max(self.saved, length)

    def _write(
        self, fields: dict[str, Any], *, streaming_only: bool = False, check_watch: bool = False
    ) -> Awaitable[tuple[int, bool]]:
        """Save the answer row with ``fields``, creating a new conversation's rows with it
        if they are still waiting; queued with the writer at once."""
        create, self._create = self._create, None
        if create is not None:
            return _created(create(fields))
        return _submit_save(
            self.message_id, streaming_only=streaming_only, check_watch=check_watch, **fields
        )

    def _text(self) -> str:
        return storable(self._answer_text())

    def grow(self, piece: str) -> None:
        """Note new text; schedules a save and a publication, never waits for them."""
        if self.stopped:
            # Stopped elsewhere between two reads: end the answer as cancelled here.
            raise asyncio.CancelledError
        if not piece or self._finished:
            return
        # The task reading upstream now (a face may read each frame in a new task).
        self.task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        self._unsaved_bytes += len(piece.encode(errors="replace"))
        if self._unsaved_bytes >= self._flush_bytes:
            self._start_flush()
        elif self._flush_timer is None and self._flushing is None:
            self._schedule_flush()
        if self.watched and self._publish_timer is None:
            self._publish_timer = loop.call_later(self._live_interval, self._start_publish)

    def watch(self) -> None:
        """Publish live deltas from now on, starting with what is unsaved."""
        if self.watched or self._finished:
            return
        self.watched = True
        self._start_publish()

    # Saving ---------------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = _flush_deadline(loop, self._flush_interval)
        self._flush_timer = loop.call_at(deadline, self._start_flush)

    def _start_flush(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._flushing is not None or self._finished:
            return  # the running save re-arms itself when it ends
        self._flushing = spawn(self._flush())

    async def _flush(self) -> None:
        text = self._text()
        self._unsaved_bytes = 0
        try:
            # Whether a resumer elsewhere asked for live deltas: a cache read, so not
            # with every save of every answer (the resumer reads the row meanwhile).
            now = time.monotonic()
            check = not self.watched and now - self._watch_checked >= WATCH_CHECK_SECONDS
            if check:
                self._watch_checked = now
            updated, watched = await self._write(
                {"content": text}, streaming_only=True, check_watch=check
            )
            if watched:
                self.watch()
        except Exception:
            logger.warning("Could not save message %s", self.message_id, exc_info=True)
            updated = -1
        self._flushing = None
        if updated == 0 and not self._finished:
            await self._stopped_elsewhere()
            return
        if updated > 0:
            self.saved = max(self.saved, len(text))
        if self._finished:
            return
        if self._unsaved_bytes >= self._flush_bytes:
            self._start_flush()
        elif self._unsaved_bytes and self._flush_timer is None:
            self._schedule_flush()

    async def _stopped_elsewhere(self) -> None:
        """The row is no longer ``streaming``: cancelled by another socket, or deleted."""
        status = (
            await Message.objects.filter(pk=self.message_id)
            .values_list("status", flat=True)
            .afirst()
        )
        self.deleted = status is None
        self.stop()

    def stop(self) -> None:
        """Cancel the generating task (and with it the upstream request), once."""
        if self._finished or self.stopped:
            return
        self.stopped = True
        if self.task is not None and not self.task.done():
            self.task.cancel()
            self.cancelled_task = self.task

    # Publishing -----------------------------------------------------------------------

    def _start_publish(self) -> None:
        self._publish_timer = None
        if self._finished:
            return
        if self._publishing is not None:
            self._republish = True
            return
        self._publishing = spawn(self._publish())

    async def _publish(self) -> None:
        saved = self.saved
        text = self._text()
        event = {
            "type": LIVE_DELTA,
            "message": self.message_id.hex,
            "offset": saved,
            "text": text[saved:],
        }
        await publish(self.message_id, event)
        self._publishing = None
        if self._republish and not self._finished:
            self._republish = False
            self._publishing = spawn(self._publish())

    # The end --------------------------------------------------------------------------

    def finish(self, fields: dict[str, Any]) -> asyncio.Task[None]:
        """Save the final row (``fields`` besides the text) and tell the resumers.

        The save (with a new conversation's rows, if they still wait) is queued with the
        writer now, so what the caller queues next (the ledger row) comes after it, in
        the same transaction when the writer is free. A save still in flight cannot
        overwrite it: those only update a ``streaming`` row.
        """
        self._finished = True
        for timer in (self._flush_timer, self._publish_timer):
            if timer is not None:
                timer.cancel()
        text = self._text()
        written = self._write({"content": text, **fields})
        return spawn(self._ended(written, self._publishing, len(text)))

    async def _ended(
        self,
        written: Awaitable[tuple[int, bool]],
        publishing: asyncio.Task[None] | None,
        length: int,
    ) -> None:
        try:
            await written
        finally:
            active.pop(self.message_id, None)
            if publishing is not None:  # the live text before its end
                await asyncio.gather(publishing, return_exceptions=True)
            await publish(
                self.message_id,
                {"type": LIVE_END, "message": self.message_id.hex, "length": length},
            )
