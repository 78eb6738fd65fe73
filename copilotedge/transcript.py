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
another process it is a short-lived key in the cache (``COPILOTEDGE_CACHE_ALIAS``, Redis
when processes share it), which the generating process reads with its saves, at most every
:data:`WATCH_CHECK_SECONDS`. No process keeps a receiver open on the channel layer for it.

Each live event carries ``offset`` (the characters already saved) and ``text`` (all the
text after it), so a resumer that read the row, then receives an event, can tell exactly
which characters it still lacks: nothing is lost or sent twice.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
import uuid
import weakref
from collections.abc import Callable, Coroutine
from typing import Any

from channels.layers import get_channel_layer
from django.core.cache import caches
from django.utils import timezone

from . import db
from .conf import settings
from .models import Message

logger = logging.getLogger(__name__)

#: Channel-layer event types; a consumer handles them as ``copilotedge_live_delta``/``_end``.
LIVE_DELTA = "copilotedge.live.delta"
LIVE_END = "copilotedge.live.end"
#: How long a watch request waits in the cache for the answer's next save.
WATCH_SECONDS = 600
#: How often a generating answer looks for a watch request from another process.
WATCH_CHECK_SECONDS = 2.0

#: Transcripts of the answers this process is generating, by message id.
active: dict[uuid.UUID, Transcript] = {}
_background: set[asyncio.Task[Any]] = set()


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    """``text`` as every database (and msgpack) takes it: NUL (PostgreSQL refuses it) and
    lone surrogates (UTF-8 cannot hold them; JSON can carry both) become U+FFFD, one
    character for one, so offsets still hold."""
    if text.isascii() and "\x00" not in text:
        return text
    return _UNSTORABLE.sub("\ufffd", text)


def group_name(message_id: uuid.UUID) -> str:
    """The channel-layer group a message's live deltas are published to."""
    return f"copilotedge.live.{message_id.hex}"


def spawn(coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    """Run ``coroutine`` in the background, keeping a reference until it is done.

    Detached from the request's context, so its queries do not hold a connection in the
    request's thread for as long as the answer streams (see :mod:`copilotedge.db`).
    """
    task = asyncio.get_running_loop().create_task(coroutine, context=db.detached())
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


async def adrain() -> None:
    """Wait for every background save and publication of this loop (tests and shutdown)."""
    loop = asyncio.get_running_loop()
    while mine := [task for task in _background if task.get_loop() is loop]:
        await asyncio.gather(*mine, return_exceptions=True)
    await db.adrain()


_PUBLISH_ERROR_LOG_INTERVAL = 30.0
_last_publish_error = -_PUBLISH_ERROR_LOG_INTERVAL


#: Publications under way at once, per event loop. A ``group_send`` holds a Redis
#: connection for several commands, and a thousand answers ending together would ask
#: channels-redis for a thousand; redis-py 8's pool refuses past 100 ("Too many
#: connections"), and those answers' ends would be lost.
PUBLISH_CONCURRENCY = 32
#: Live delivery is best effort, and an answer's end waits for its last publication: a
#: stalled channel layer must not hold every answer back from its ``[DONE]``.
PUBLISH_TIMEOUT = 2.0
_publish_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


def _publish_slot() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    slots = _publish_slots.get(loop)
    if slots is None:
        slots = _publish_slots[loop] = asyncio.Semaphore(PUBLISH_CONCURRENCY)
    return slots


async def publish(message_id: uuid.UUID, event: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async with asyncio.timeout(PUBLISH_TIMEOUT), _publish_slot():
            await layer.group_send(group_name(message_id), event)
    except Exception:
        # Live delivery is best effort: a resumer falls back to the stored text. Logged
        # at most every 30 s, since when the layer is overloaded every answer fails here.
        global _last_publish_error
        now = time.monotonic()
        if now - _last_publish_error > _PUBLISH_ERROR_LOG_INTERVAL:
            _last_publish_error = now
            logger.warning("Could not publish to %s", group_name(message_id), exc_info=True)


def watch_key(message_id: uuid.UUID) -> str:
    return f"copilotedge:live-watch:{message_id.hex}"


async def awatch(message_id: uuid.UUID) -> None:
    """Ask whichever process generates ``message_id`` to publish its live deltas."""
    transcript = active.get(message_id)
    if transcript is not None:
        transcript.watch()
        return
    try:
        await caches[settings.CACHE_ALIAS].aset(watch_key(message_id), 1, WATCH_SECONDS)
    except Exception:
        # The resumer still follows the answer by reading its row (resume.py's watchdog).
        logger.warning("Could not ask for the live deltas of %s", message_id, exc_info=True)


async def _asave(
    message_id: uuid.UUID, *, streaming_only: bool = False, check_watch: bool = False, **fields: Any
) -> tuple[int, bool]:
    """Update the message row through the group-commit writer: the rows updated, and
    whether a resumer in another process asked for live deltas meanwhile.

    The writer runs jobs in order, so this lands after the row's creation if that is
    still queued.
    """
    return await db.writer().submit(
        functools.partial(
            _save, message_id, streaming_only, check_watch, fields | {"updated_at": timezone.now()}
        )
    )


def _save(
    message_id: uuid.UUID, streaming_only: bool, check_watch: bool, fields: dict[str, Any]
) -> tuple[int, bool]:
    rows = Message.objects.filter(pk=message_id)
    if streaming_only:
        rows = rows.filter(status=Message.Status.STREAMING)
    updated = rows.update(**fields)
    if not check_watch:
        return updated, False
    try:
        watched = bool(caches[settings.CACHE_ALIAS].get(watch_key(message_id)))
    except Exception:  # a cache outage must not cost the save
        watched = False
    return updated, watched


class Transcript:
    """Saves and publishes the text of one generating assistant message.

    ``text`` returns the whole answer so far (the turn's :class:`~copilotedge.chat.Answer`);
    call :meth:`grow` with each new piece and :meth:`afinish` once at the end.
    """

    def __init__(
        self,
        message_id: uuid.UUID,
        conversation_id: uuid.UUID,
        text: Callable[[], str],
        *,
        created: asyncio.Future[None] | None = None,
    ) -> None:
        self.message_id = message_id
        self.conversation_id = conversation_id
        #: Saving the row, when the writer was asked to create it (a new conversation).
        self.created = created
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
            self._flush_timer = loop.call_later(self._flush_interval, self._start_flush)
        if self.watched and self._publish_timer is None:
            self._publish_timer = loop.call_later(self._live_interval, self._start_publish)

    def watch(self) -> None:
        """Publish live deltas from now on, starting with what is unsaved."""
        if self.watched or self._finished:
            return
        self.watched = True
        self._start_publish()

    # Saving ---------------------------------------------------------------------------

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
            updated, watched = await _asave(
                self.message_id, content=text, streaming_only=True, check_watch=check
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
            loop = asyncio.get_running_loop()
            self._flush_timer = loop.call_later(self._flush_interval, self._start_flush)

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

    async def afinish(self, fields: dict[str, Any]) -> None:
        """Save the final row (``fields`` besides the text) and tell the resumers."""
        self._finished = True
        for timer in (self._flush_timer, self._publish_timer):
            if timer is not None:
                timer.cancel()
        pending = [t for t in (self._flushing, self._publishing) if t is not None]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        text = self._text()
        try:
            await _asave(self.message_id, content=text, **fields)
        finally:
            active.pop(self.message_id, None)
            await publish(
                self.message_id,
                {"type": LIVE_END, "message": self.message_id.hex, "length": len(text)},
            )
