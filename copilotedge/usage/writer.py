"""Writing the usage ledger: group-committed batches, retries, then ``usage_recorded``.

:func:`enqueue` hands a built :class:`~copilotedge.models.UsageRecord` (see
:mod:`copilotedge.usage.ledger`) to its event loop's writer, so the response never waits for the
database. The records go into the same group-commit transactions as the conversations'
rows (:func:`copilotedge.lifecycle.writer`): a turn's last answer save and its record usually
share one commit. A failing insert falls back to saving each record on its own with
retries; a record that never lands is logged whole. Either way each record is announced
on :data:`usage_recorded`. :func:`copilotedge.lifecycle.drain` waits for all of it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from typing import Any

from asgiref.sync import sync_to_async
from django.db import IntegrityError, close_old_connections

from copilotedge import lifecycle
from copilotedge.models import UsageRecord
from copilotedge.signals import usage_recorded

logger = logging.getLogger(__name__)

_WRITE_ATTEMPTS = 3
_RETRY_DELAY = 0.05  # seconds, doubled after each failed attempt
_BATCH_SIZE = 500


def describe(record: UsageRecord) -> dict[str, Any]:
    """Every column of ``record``, for a log line that lets an operator re-insert it."""
    return {f.attname: getattr(record, f.attname) for f in UsageRecord._meta.concrete_fields}


async def _asettle(records: list[UsageRecord], error: BaseException | None) -> None:
    """Announce a batch the group commit inserted, or save each record of a failed one.

    If the batch failed, each record is saved on its own, so one bad record (say, of a
    conversation deleted meanwhile) cannot lose the others' spend.
    """
    for record in records:
        saved = True if error is None else await _asave_one(record)
        await _announce(record, saved=saved)


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
    """One event loop's records, inserted as a job of the loop's :class:`db.GroupCommit`.

    At most one insert waits in the group commit at a time: records that arrive
    meanwhile join it, those that arrive once it has begun wait for the next one. The
    job takes its records in the worker thread, hence the lock.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queue: list[UsageRecord] = []
        self.waiting = False  # an insert is queued and has not taken its records yet

    def add(self, record: UsageRecord) -> None:
        with self.lock:
            self.queue.append(record)
            if self.waiting:
                return
            self.waiting = True
        insert = _Insert(self)
        lifecycle.writer().submit(insert).add_done_callback(insert.settle)

    def take(self) -> list[UsageRecord]:
        with self.lock:
            records, self.queue, self.waiting = self.queue, [], False
        return records


class _Insert:
    """The group-commit job: insert what the writer holds when the job runs.

    The group commit runs a job again on its own when the batch it was in fails, so
    the job keeps the records it took for that second try.
    """

    def __init__(self, writer: _Writer) -> None:
        self.writer = writer
        self.records: list[UsageRecord] | None = None

    def __call__(self) -> None:
        if self.records is None:
            self.records = self.writer.take()
        for record in self.records:
            record.pk = None  # a failed batch left the ids of rows it rolled back
        UsageRecord.objects.bulk_create(self.records, batch_size=_BATCH_SIZE)

    def settle(self, inserted: asyncio.Future[None]) -> None:
        """On the event loop, once the job is done: announce or fall back, off the caller."""
        if self.records is None:  # the group commit ended before the job ran
            self.records = self.writer.take()
        error = inserted.exception() if not inserted.cancelled() else asyncio.CancelledError()
        lifecycle.spawn(_asettle(self.records, error))


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
