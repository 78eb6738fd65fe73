"""Shared fixtures: users and keys, a respx-mocked upstream, the emulator, clean state."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import respx
from asgiref.sync import SyncToAsync
from django.contrib.auth import get_user_model
from django.db import connections
from django.test import Client
from django.utils import timezone

from copilotedge import lifecycle
from copilotedge.models import ApiKey, UsageRecord
from copilotedge.testing import EmulatorApp, EmulatorServer
from tests.helpers import (
    SampleLedger,
    UsageRowCheck,
    assert_columns,
    check_usage_invariants,
    reset_circuits,
    reset_limits,
)


@pytest.fixture
def user(db: None) -> Any:
    return get_user_model().objects.create_user("alice", password="pw")


@pytest.fixture
def other_user(db: None) -> Any:
    return get_user_model().objects.create_user("bob", password="pw")


@pytest.fixture
def api_key(user: Any) -> tuple[ApiKey, str]:
    return ApiKey.create_key(user, name="test")


@pytest.fixture
def auth(api_key: tuple[ApiKey, str]) -> dict[str, str]:
    """Headers for Django's (Async)Client carrying the test user's API key."""
    return {"Authorization": f"Bearer {api_key[1]}"}


@pytest.fixture
def upstream() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as router:
        yield router


@pytest.fixture
async def drain_usage() -> AsyncIterator[None]:
    yield
    await lifecycle.drain()


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorServer]:
    """The Workers AI emulator on a loopback port (its request log is ``emulator.app.requests``)."""
    with EmulatorServer(EmulatorApp()) as server:
        yield server


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None) -> Iterator[None]:
    """pytest-django's, plus: close the async ORM's connections before the test database
    is dropped.

    Async tests run their queries in asgiref's one sync thread; its connection stays
    open, and PostgreSQL refuses to drop a database "being accessed by other users",
    leaving a ``test_copilotedge_<pid>`` behind on the shared server after every run.
    """
    yield
    SyncToAsync.single_thread_executor.submit(connections.close_all).result()


@pytest.fixture(autouse=True)
async def _fresh_limits() -> AsyncIterator[None]:
    from copilotedge.ratelimit.stores import RedisStore

    reset_limits()
    yield
    # Background saves (answers, conversations, the ledger) must land before the test's
    # database is flushed: a write still under way would deadlock the flush.
    await lifecycle.drain()
    await RedisStore.aclose()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Any]:
    """A private redis-server for the whole run (needs the ``redis-server`` binary)."""
    import shutil

    from tests.servers import RedisServer

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    with RedisServer() as server:
        yield server


@pytest.fixture
def session_cookie(user: Any) -> bytes:
    """A ``cookie`` header value carrying a signed-in session of ``user``."""
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


@pytest.fixture
async def drain_chats() -> AsyncIterator[None]:
    """Let detached chats and background saves finish before the test's database goes."""
    yield
    await lifecycle.drain()


@pytest.fixture(autouse=True)
def closed_circuits() -> Iterator[None]:
    """Every test starts with closed circuits: failures of one test must not open another's."""
    reset_circuits()
    yield


@pytest.fixture
def usage_row() -> UsageRowCheck:
    """Wait for ledger writes, require exactly one usage row, check it (see above)."""

    async def check(**expected: Any) -> UsageRecord:
        await lifecycle.drain()
        rows = [row async for row in UsageRecord.objects.all()]
        assert len(rows) == 1, f"expected one usage row, found {len(rows)}: {rows}"
        check_usage_invariants(rows[0])
        assert_columns(rows[0], expected)
        return rows[0]

    return check


@pytest.fixture
def sample_ledger(user: Any, other_user: Any, api_key: tuple[ApiKey, str]) -> SampleLedger:
    """Alice (with her key) and Bob's usage over the last three days, saved."""
    ledger = SampleLedger(user, other_user, api_key[0], timezone.now())
    UsageRecord.objects.bulk_create(ledger.rows())
    return ledger


@pytest.fixture
async def agui_drain() -> AsyncIterator[None]:
    """After a test that ran AG-UI runs in-process: stop this loop's stop listener
    (channels-redis refuses receives from two event loops at once)."""
    from copilotedge.copilotkit.agui import runs as agui_runs

    yield
    await agui_runs.aclose()
