"""Fixtures for the daphne tests: the app under real daphne, its upstream the emulator."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from copilotedge.testing import EmulatorServer
from tests.servers import DaphneServer


@pytest.fixture(scope="module")
def e2e_server(emulator: EmulatorServer, django_db_setup: None) -> Iterator[DaphneServer]:
    """``tests.asgi`` under real daphne, pointed at the ``emulator`` fixture, on the test database.

    Fails at teardown if the server wrote a traceback.
    """
    server = DaphneServer(
        {
            "COPILOTEDGE_API_BASE_URL": emulator.api_base_url,
            "COPILOTEDGE_ACCOUNT_ID": "e2e",
            "COPILOTEDGE_API_TOKEN": "e2e",
        }
    ).start()
    try:
        yield server
    finally:
        stderr = server.stop()
    assert "Traceback" not in stderr, stderr
