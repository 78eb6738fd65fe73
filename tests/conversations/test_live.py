"""Live publication of growing answers: bounded, so a burst cannot exhaust Redis."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import pytest
from channels.layers import get_channel_layer

from copilotedge.conversations import live as transcript_live


class CountingLayer:
    """A channel layer that notes how many group sends run at once."""

    def __init__(self) -> None:
        self.running = self.most = self.sent = 0

    async def group_send(self, group: str, event: dict[str, Any]) -> None:
        self.running += 1
        self.most = max(self.most, self.running)
        await asyncio.sleep(0.01)
        self.running -= 1
        self.sent += 1


async def test_a_burst_of_answer_ends_is_published_a_few_at_a_time(monkeypatch):
    layer = CountingLayer()
    monkeypatch.setattr(transcript_live, "get_channel_layer", lambda: layer)
    ends = [
        transcript_live.publish(uuid.uuid4(), {"type": transcript_live.LIVE_END})
        for _ in range(200)
    ]
    await asyncio.gather(*ends)
    assert layer.sent == 200
    assert layer.most == transcript_live.PUBLISH_CONCURRENCY


@pytest.mark.skipif(
    "channels_redis" not in type(get_channel_layer()).__module__,
    reason="only a Redis channel layer has a connection pool to exhaust",
)
async def test_a_thousand_answer_ends_fit_the_redis_pool(caplog):
    # redis-py 8 refuses a 101st connection; these all land without a warning.
    caplog.set_level(logging.WARNING, logger="copilotedge.conversations.transcript")
    transcript_live._publish_errors.reset()
    ends = [
        transcript_live.publish(uuid.uuid4(), {"type": transcript_live.LIVE_END})
        for _ in range(1000)
    ]
    await asyncio.gather(*ends)
    assert not [r for r in caplog.records if "Could not publish" in r.getMessage()]


class StalledLayer:
    async def group_send(self, group: str, event: dict[str, Any]) -> None:
        await asyncio.sleep(3600)


async def test_a_stalled_channel_layer_holds_a_publication_back_only_briefly(monkeypatch):
    monkeypatch.setattr(transcript_live, "get_channel_layer", StalledLayer)
    monkeypatch.setattr(transcript_live, "PUBLISH_TIMEOUT", 0.05)
    async with asyncio.timeout(1):
        await transcript_live.publish(uuid.uuid4(), {"type": transcript_live.LIVE_END})
