"""Real JavaScript clients against a real server: ``node --test`` in tests/e2e/node/js.

``@ag-ui/client``'s HttpAgent (which verifies AG-UI event order),
``@copilotkit/core`` (what CopilotKit React runs: runtime discovery, then the agent; both
run an agent's server-side tools as two different users) and
``@copilotkit/runtime-client-gql`` (urql, multipart incremental delivery) talk to the
app under daphne, whose upstream is the Workers AI emulator on a loopback port.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission

from copilotedge.models import ApiKey, UsageRecord
from copilotedge.testing import EmulatorApp, EmulatorServer
from tests.servers import DaphneServer

pytestmark = [pytest.mark.node, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer(EmulatorApp(token_delay=0.02)) as server:
        yield server


@pytest.fixture
def site(emulator: EmulatorServer, db: None) -> Iterator[DaphneServer]:
    overrides = {
        "COPILOTEDGE_API_BASE_URL": emulator.api_base_url,
        "COPILOTEDGE_ACCOUNT_ID": "emulator",
        "COPILOTEDGE_API_TOKEN": "emulator",
        # The files' failure tests must not open the circuit for the others' runs.
        "COPILOTEDGE_CIRCUIT_FAILURE_THRESHOLD": 100,
        "COPILOTEDGE_AGENTS": {
            "default": {"name": "default"},
            # The demo's whoami, a tool only users with the usage permission may run,
            # and one a person approves first (an AG-UI interrupt).
            "helper": {
                "name": "helper",
                "tools": [
                    "project.tools.whoami",
                    "tests.sample_tools.staff_secret",
                    "tests.sample_tools.archive_note",
                ],
            },
        },
    }
    with DaphneServer(overrides) as server:
        yield server


def test_javascript_clients(
    node: str, js_clients: Path, site: DaphneServer, user, other_user, emulator: EmulatorServer
) -> None:
    _, token = ApiKey.create_key(user, name="node")
    other_user.user_permissions.add(Permission.objects.get(codename="view_usagerecord"))
    _, other_token = ApiKey.create_key(other_user, name="node")
    env = {
        **os.environ,
        "COPILOTEDGE_URL": f"{site.url}/copilotedge",
        "COPILOTEDGE_API_KEY": token,
        "COPILOTEDGE_OTHER_API_KEY": other_token,
        "SUPPRESS_TRANSFORMATION_WARNINGS": "true",
    }
    completed = subprocess.run(
        [node, "--test", "--test-reporter=spec"],
        cwd=js_clients,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = completed.stdout + completed.stderr
    server_log = site.stop()
    assert completed.returncode == 0, output + "\n--- server stderr ---\n" + server_log
    assert "Traceback" not in server_log, server_log
    # Every run went through the shared turn and was recorded with its face's protocol.
    protocols = set(UsageRecord.objects.values_list("protocol", flat=True))
    assert protocols == {"agui", "graphql"}
    assert UsageRecord.objects.filter(protocol="agui", outcome="error").count() == 1
    assert UsageRecord.objects.filter(protocol="graphql", outcome="ok").exists()
    assert any(r["outcome"] == "completed" for r in emulator.app.requests)
    # The server tool runs (four from HttpAgent, four from CopilotKit core): one step
    # each, recorded with their tool calls.
    tool_rows = UsageRecord.objects.filter(protocol="agui", tool_calls=1, steps=2)
    assert [r.outcome for r in tool_rows] == ["ok"] * 8
    # The confirm tool: each interrupted run made one upstream call and ran nothing; each
    # answering run ran (or denied) the call, then made one upstream call.
    interrupted = UsageRecord.objects.filter(protocol="agui", tool_calls=0, steps=1)
    answered = UsageRecord.objects.filter(protocol="agui", tool_calls=1, steps=1)
    assert interrupted.filter(outcome="ok").count() >= 2
    assert [r.outcome for r in answered] == ["ok"] * 2
