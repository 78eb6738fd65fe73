"""One attempt's time limits: the overall limit holds for a consumer that stops reading."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import respx

from copilotedge import exceptions
from copilotedge.chat.types import Answer, ChatRequest
from copilotedge.upstream import resilience
from tests.helpers import (
    OPENAI_URL,
    UpstreamBody,
    openai_chunk,
    reset_circuits,
    respond_with,
    sse_chunks,
)

MODEL = "@cf/meta/llama-3.1-8b-instruct"


@pytest.fixture(autouse=True)
def circuits() -> Any:
    reset_circuits()
    yield
    reset_circuits()


async def test_the_overall_limit_hangs_up_on_upstream_while_nobody_reads(
    upstream: respx.MockRouter, settings: Any
) -> None:
    settings.COPILOTEDGE_TOTAL_TIMEOUT = 0.5
    body = UpstreamBody(*sse_chunks(*[openai_chunk("t")] * 100), delay=0.05)
    upstream.post(OPENAI_URL).mock(side_effect=respond_with(body))
    request = ChatRequest(model=MODEL, messages=[{"role": "user", "content": "Hi"}])
    served = resilience.Served(MODEL)
    started = time.monotonic()
    stream = await resilience.open_stream(request, Answer(), served, started=started)
    batches = stream.batches()
    await anext(batches)
    # The consumer stops reading (its client does not read): upstream is let go anyway.
    async with asyncio.timeout(2):
        await body.hung_up.wait()
    assert time.monotonic() - started >= 0.45
    assert body.sent < 20
    with pytest.raises(exceptions.UpstreamTimeout, match="longer than allowed"):
        await anext(batches)
