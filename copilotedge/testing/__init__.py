"""A Cloudflare Workers AI emulator for tests, the demo and benchmarks.

with EmulatorServer(EmulatorApp(token_delay=0.01)) as server:
    settings.COPILOTEDGE_API_BASE_URL = server.api_base_url
    server.app.add_fault("error:429:3040")
    ...
    assert server.app.requests[-1]["outcome"] == "completed"
"""

from __future__ import annotations

from copilotedge.testing.emulator import EmulatorApp
from copilotedge.testing.faults import Fault
from copilotedge.testing.server import EmulatorServer

__all__ = ["EmulatorApp", "EmulatorServer", "Fault"]
