"""Saving growing answers: the saves due together go as one statement."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from copilotedge.conversations import live, transcript
from copilotedge.models import Conversation, Message

pytestmark = pytest.mark.django_db(transaction=True)


async def test_growing_answers_saved_together_go_in_one_statement(user, monkeypatch):
    conversation = await Conversation.objects.acreate(user=user, model="m")
    rows = [
        await Message.objects.acreate(
            conversation=conversation, sequence=n, role="assistant", status="streaming"
        )
        for n in range(3)
    ]
    await Message.objects.filter(pk=rows[1].pk).aupdate(status="cancelled")  # stopped elsewhere
    await live.request_watch(rows[2].pk)  # a resumer in another process asks for deltas

    def one_by_one(*args: Any) -> Any:
        raise AssertionError("saved one by one")

    monkeypatch.setattr(transcript, "_save", one_by_one)
    results = await asyncio.gather(
        *(
            transcript._submit_save(row.pk, streaming_only=True, check_watch=True, content=f"t{n}")
            for n, row in enumerate(rows)
        )
    )
    assert results == [(1, False), (0, False), (1, True)]
    again = [
        transcript._submit_save(row.pk, streaming_only=True, content="more")
        for row in (rows[0], rows[2])
    ]
    assert await asyncio.gather(*again) == [(1, False), (1, False)]  # every row still streams
    saved = {m.pk: (m.status, m.content) async for m in Message.objects.all()}
    assert saved == {
        rows[0].pk: ("streaming", "more"),
        rows[1].pk: ("cancelled", ""),  # a stopped answer takes no more text
        rows[2].pk: ("streaming", "more"),
    }


@pytest.mark.django_db(transaction=False)
@pytest.mark.parametrize("now", [0.0, 3.1, 7.99, 1000.37, 123456.789])
def test_flushes_come_due_on_a_shared_grid_within_their_interval(now: float) -> None:
    class Clock:
        def time(self) -> float:
            return now

    interval = 0.5
    deadline = transcript._flush_deadline(Clock(), interval)  # type: ignore[arg-type]
    assert now + 0.75 * interval < deadline <= now + interval + 1e-9
    steps = deadline / (interval / 4)
    assert math.isclose(steps, round(steps))
