"""Writing the usage ledger: group-committed batches, retries, and ``usage_recorded``.

:func:`enqueue` hands a built :class:`~copilotedge.models.UsageRecord` (see
:mod:`copilotedge.usage`) to its event loop's writer, which inserts the records in batches
from one background task, so the response never waits for the database. A failing batch
falls back to saving each record on its own with retries; a record that never lands is
logged whole. Either way each record is announced on :data:`usage_recorded`.
:func:`adrain` waits for the queue to empty.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

from asgiref.sync import sync_to_async
from django.db import IntegrityError, close_old_connections
from django.dispatch import Signal

from . import db
from .models import UsageRecord

logger = logging.getLogger(__name__)

#: Sent once per turn, after its record is written (``saved=True``) or after every attempt
#: to write it failed (``saved=False``: the record has no primary key, but billing still
#: learns what was spent). Arguments: ``record`` (the :class:`UsageRecord`) and ``saved``.
#: Receivers may be sync or async; one that raises is logged and does not stop the others.
usage_recorded = Signal()

_WRITE_ATTEMPTS = 3
_RETRY_DELAY = 0.05  # seconds, doubled after each failed attempt
_BATCH_SIZE = 500


def describe(record: UsageRecord) -> dict[str, Any]:
    """Every column of ``record``, for a log line that lets an operator re-insert it."""
    return {f.attname: getattr(record, f.attname) for f in UsageRecord._meta.concrete_fields}


async def asave_batch(records: list[UsageRecord]) -> None:
    """Insert records in one statement; never raises.

    If the batch fails, each record is saved on its own, so one bad record (say, of a
    conversation deleted meanwhile) cannot lose the others' spend. Either way each
    record is then announced on ``usage_recorded``.
    """
    try:
        await UsageRecord.objects.abulk_create(records)
    except asyncio.CancelledError:
        raise
    except Exception:
        await sync_to_async(close_old_connections)()
        for record in records:
            await _announce(record, saved=await _asave_one(record))
    else:
        for record in records:
            await _announce(record, saved=True)


async def _asave_one(record: UsageRecord) -> bool:
    """Save with retries and backoff; ``False`` (the record logged whole) if it never lands."""
    for attempt in range(1, _WRITE_ATTEMPTS + 1):
        try:
            record.pk = None
            await record.asave(force_insert=True)
            return True
        except asyncio.CancelledError:
            raise
        except IntegrityError:
            # Its request id is there: an earlier write committed even though it failed
            # (the connection broke on the reply).
            if await UsageRecord.objects.filter(request_id=record.request_id).aexists():
                return True
            # Something it points to is gone: keep the spend, drop the dangling links.
            if not await _adrop_missing_links(record):
                logger.exception("Could not save usage record: %r", describe(record))
                return False
        except Exception:
            # A broken connection must not poison the retry.
            await sync_to_async(close_old_connections)()
            if attempt == _WRITE_ATTEMPTS:
                logger.exception(
                    "Could not save usage record after %d attempts: %r", attempt, describe(record)
                )
                return False
            logger.warning(
                "Saving usage record %s failed (attempt %d); retrying.", record.request_id, attempt
            )
            await asyncio.sleep(_RETRY_DELAY * 2 ** (attempt - 1))
    return False


async def _adrop_missing_links(record: UsageRecord) -> bool:
    """Null the foreign keys whose rows no longer exist; whether any was dropped."""
    dropped = False
    for field in ("user", "api_key", "conversation"):
        attname = f"{field}_id"
        pk = getattr(record, attname)
        model = UsageRecord._meta.get_field(field).related_model
        if pk is not None and not await model._default_manager.filter(pk=pk).aexists():  # type: ignore[union-attr]
            setattr(record, attname, None)
            dropped = True
    return dropped


async def _announce(record: UsageRecord, *, saved: bool) -> None:
    responses = await usage_recorded.asend_robust(sender=UsageRecord, record=record, saved=saved)
    for receiver, response in responses:
        if isinstance(response, Exception):
            logger.error("usage_recorded receiver %r raised", receiver, exc_info=response)


class _Writer:
    """Collects one event loop's records and inserts them in batches from one task.

    Group commit: a record is written at once when the writer is idle, and records that
    arrive while a write is under way go together in the next one. Under load this turns
    a write per request into a write per batch, with no delay added when idle.
    """

    def __init__(self) -> None:
        self.queue: list[UsageRecord] = []
        self.task: asyncio.Task[None] | None = None

    def add(self, record: UsageRecord) -> None:
        self.queue.append(record)
        if self.task is None or self.task.done():
            # A fresh context: the writer outlives the request that started it, so it
            # must not run its queries in that request's thread.
            self.task = asyncio.get_running_loop().create_task(self._run(), context=db.detached())

    async def _run(self) -> None:
        while self.queue:
            batch, self.queue = self.queue[:_BATCH_SIZE], self.queue[_BATCH_SIZE:]
            await asave_batch(batch)


_writers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Writer] = (
    weakref.WeakKeyDictionary()
)


def enqueue(record: UsageRecord) -> None:
    """Queue ``record`` for this event loop's writer; the caller does not wait for it."""
    loop = asyncio.get_running_loop()
    writer = _writers.get(loop)
    if writer is None:
        writer = _writers[loop] = _Writer()
    writer.add(record)


async def adrain() -> None:
    """Wait until every queued record of this event loop is written (tests, shutdown)."""
    # A record may wait for its conversation's rows (chat.Turn.finish): those first.
    await db.adrain()
    await asyncio.sleep(0)
    writer = _writers.get(asyncio.get_running_loop())
    while writer is not None and writer.task is not None and not writer.task.done():
        await asyncio.shield(writer.task)
