"""Database connections and long-lived requests.

Django runs an ASGI request's queries in a thread of the request's own, and that thread
keeps its connection until the response ends. For a streamed answer that is a
connection held for the whole answer, and a few hundred streams use up PostgreSQL's
``max_connections``. So a turn hands its connection back once the queries before the
stream are done, and the writes during and after it run outside the request's thread.
"""

from __future__ import annotations

import contextvars

from asgiref.sync import sync_to_async
from django.db import connections


def _release() -> None:
    for connection in connections.all(initialized_only=True):
        # Never inside a transaction (a test's, or a caller's atomic block).
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()


async def arelease_connections() -> None:
    """Close this request thread's connections (as CONN_MAX_AGE says, as at a request's end)."""
    await sync_to_async(_release)()


def detached() -> contextvars.Context:
    """A context for background work whose queries must not use the request's thread."""
    return contextvars.Context()
