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
import functools
import logging
from typing import Any

from asgiref.sync import sync_to_async
from django.db import IntegrityError, close_old_connections

from copilotedge import lifecycle
from copilotedge.models import UsageRecord
from copilotedge.signals import usage_recorded

logger = logging.getLogger(__name__)

_WRITE_ATTEMPTS = 3
_RETRY_DELAY = 0.05  # seconds, doubled after each failed attempt


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


def enqueue(record: UsageRecord) -> None:
    """Queue ``record`` for this event loop's writer; the caller does not wait for it.

    It is inserted with the other rows of its batch (one statement for all the batch's
    records), after the conversation it points to when that is new too.
    """
    lifecycle.writer().insert([record]).add_done_callback(functools.partial(_inserted, record))


def _inserted(record: UsageRecord, inserted: asyncio.Future[None]) -> None:
    """On the event loop, once the insert is done: announce it or save it on its own."""
    error = inserted.exception() if not inserted.cancelled() else asyncio.CancelledError()
    if error is None and not usage_recorded.has_listeners(UsageRecord):
        return  # nobody to tell
    lifecycle.spawn(_asettle([record], error))
