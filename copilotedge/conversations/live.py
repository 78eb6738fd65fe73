"""Live deltas of generating answers: published to the channel layer, asked for by resumers.

A :class:`~copilotedge.conversations.transcript.Transcript` publishes, through
:func:`publish`, to the
channel-layer group of its message (:func:`group_name`), where a resumer in any server
process listens. Each live event carries ``offset`` (the characters already saved) and
``text`` (all the text after it), so a resumer that read the row, then receives an event,
can tell exactly which characters it still lacks: nothing is lost or sent twice.

A resumer in another process than the one generating the answer asks for the deltas with
a short-lived key in the cache (``COPILOTEDGE_CACHE_ALIAS``, Redis when processes share
it), which the generating process reads with its saves (:func:`watch_requested`). No
process keeps a receiver open on the channel layer for it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import weakref
from collections.abc import Sequence
from typing import Any

from channels.layers import get_channel_layer
from django.core.cache import caches

from copilotedge.conf import settings
from copilotedge.log_limits import Throttle

# Named as before the split, so logging configured for transcripts still applies.
logger = logging.getLogger("copilotedge.conversations.transcript")

#: Channel-layer event types; a consumer handles them as ``copilotedge_live_delta``/``_end``.
LIVE_DELTA = "copilotedge.live.delta"
LIVE_END = "copilotedge.live.end"
#: How long a watch request waits in the cache for the answer's next save.
WATCH_SECONDS = 600


def group_name(message_id: uuid.UUID) -> str:
    """The channel-layer group a message's live deltas are published to."""
    return f"copilotedge.live.{message_id.hex}"


_publish_errors = Throttle()


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
        if _publish_errors.ready():
            logger.warning("Could not publish to %s", group_name(message_id), exc_info=True)


def watch_key(message_id: uuid.UUID) -> str:
    return f"copilotedge:live-watch:{message_id.hex}"


async def request_watch(message_id: uuid.UUID) -> None:
    """Ask the other process that generates ``message_id`` to publish its live deltas."""
    try:
        await caches[settings.CACHE_ALIAS].aset(watch_key(message_id), 1, WATCH_SECONDS)
    except Exception:
        # The resumer still follows the answer by reading its row (resume.py's watchdog).
        logger.warning("Could not ask for the live deltas of %s", message_id, exc_info=True)


def watch_requested(message_id: uuid.UUID) -> bool:
    """Whether a resumer in another process asked for ``message_id``'s live deltas."""
    return message_id in watches_requested([message_id])


def watches_requested(message_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """Those of ``message_ids`` whose live deltas a resumer in another process asked for
    (one cache read for them all)."""
    keys = {watch_key(message_id): message_id for message_id in message_ids}
    try:
        found = caches[settings.CACHE_ALIAS].get_many(list(keys))
    except Exception:  # a cache outage must not cost the save
        return set()
    return {keys[key] for key, value in found.items() if value}
