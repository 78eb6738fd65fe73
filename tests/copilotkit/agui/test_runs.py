"""The registry of running AG-UI runs and stops published across processes."""

from __future__ import annotations

import asyncio

import pytest
from channels.layers import get_channel_layer

from copilotedge.copilotkit.agui import runs as agui_runs

pytestmark = pytest.mark.usefixtures("agui_drain")


async def test_a_stop_reaches_only_the_owners_runs_of_that_thread():
    async with (
        agui_runs.running("t1", "r1", "key:1") as mine,
        agui_runs.running("t1", "r2", "key:2") as theirs,
        agui_runs.running("t2", "r3", "key:1") as other_thread,
    ):
        assert agui_runs.stop_local("t1", "key:1") == 1
        assert mine.stopped.is_set()
        assert not theirs.stopped.is_set() and not other_thread.stopped.is_set()
        assert agui_runs.stop_local("t1", "key:2", run_id="nope") == 0
        assert agui_runs.stop_local("t1", "key:2", run_id="r2") == 1
    assert agui_runs.stop_local("t1", "key:1") == 0  # unregistered once it ended
    assert "t1" not in agui_runs._running


async def test_a_stop_published_by_another_process_stops_the_run():
    layer = get_channel_layer()
    async with agui_runs.running("thread/with spaces", "r1", "user:7") as run:
        await asyncio.sleep(0.05)  # the listener subscribes in the background
        # What agent/stop in another process publishes (it has no local run to set).
        message = {
            "type": agui_runs.STOP_MESSAGE,
            "thread_id": "thread/with spaces",
            "owner": "user:8",
            "run_id": None,
        }
        await layer.group_send(agui_runs.stop_group("thread/with spaces"), message)
        await asyncio.sleep(0.1)
        assert not run.stopped.is_set()  # someone else's stop
        await layer.group_send(
            agui_runs.stop_group("thread/with spaces"), {**message, "owner": "user:7"}
        )
        await asyncio.wait_for(run.stopped.wait(), timeout=5)


async def test_astop_publishes_and_counts_local_runs():
    async with agui_runs.running("t9", "r9", "key:9") as run:
        assert await agui_runs.astop("t9", "key:9") == 1
        assert run.stopped.is_set()
    assert await agui_runs.astop("t9", "key:9") == 0


def test_group_names_are_valid_for_channel_layers():
    name = agui_runs.stop_group("ü" * 500)
    assert len(name) < 100
    assert all(c.isalnum() or c in "._-" for c in name)


@pytest.mark.django_db(transaction=True)
def test_a_stop_sent_to_one_process_stops_a_run_streaming_from_another(user):
    """Two daphne processes on the Redis channel layer: run on A, stop through B."""
    import json
    import os
    import time

    import httpx

    from copilotedge.models import ApiKey, UsageRecord
    from copilotedge.testing import EmulatorApp, EmulatorServer
    from tests.servers import DaphneServer

    if not os.environ.get("REDIS_URL"):
        pytest.skip("needs REDIS_URL: processes share stops only through a Redis channel layer")
    _, token = ApiKey.create_key(user)
    headers = {"Authorization": f"Bearer {token}"}
    body = {
        "threadId": "shared-thread",
        "runId": "run-a",
        "messages": [{"id": "1", "role": "user", "content": "hi"}],
    }
    with EmulatorServer(EmulatorApp(token_delay=0.25)) as emulator:
        # Both processes on one layer (the test settings' prefix is per process).
        layer = {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [os.environ["REDIS_URL"]], "prefix": f"agui-stop-{os.getpid()}"},
        }
        overrides = {
            "COPILOTEDGE_API_BASE_URL": emulator.api_base_url,
            "COPILOTEDGE_ACCOUNT_ID": "e",
            "COPILOTEDGE_API_TOKEN": "e",
            "CHANNEL_LAYERS": {"default": layer},
        }
        with (
            DaphneServer(overrides) as a,
            DaphneServer(overrides) as b,
            httpx.Client(timeout=30) as client,
        ):
            path = "/copilotedge/copilotkit/agent/default"
            with client.stream("POST", f"{a.url}{path}/run", headers=headers, json=body) as stream:
                lines = stream.iter_lines()
                events = []
                for line in lines:
                    if line.startswith("data: "):
                        events.append(json.loads(line[6:]))
                        if events[-1]["type"] == "TEXT_MESSAGE_CONTENT":
                            break
                started = time.monotonic()
                stopped = client.post(f"{b.url}{path}/stop/shared-thread", headers=headers, json={})
                assert stopped.json() == {"threadId": "shared-thread", "stopped": False}  # not B's
                events += [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
                elapsed = time.monotonic() - started
    assert [e["type"] for e in events][-2:] == ["TEXT_MESSAGE_END", "RUN_FINISHED"]
    assert events[-1]["result"]["stopped"] is True
    assert elapsed < 2.5, f"the stop took {elapsed:.2f} s; the whole answer takes 5 s"
    time.sleep(0.5)
    assert UsageRecord.objects.get(protocol="agui").outcome == "cancelled"
