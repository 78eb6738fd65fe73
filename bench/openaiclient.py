"""The load generator's client as the official ``openai`` SDK: ``--client openai``.

This is the client most users point at copilotedge, and the heaviest of the three: it
parses every frame into a pydantic model. On two cores its CPU is taken from the
servers it measures, so it slows the direct path most of all.
"""

from __future__ import annotations

import time

import openai

SUFFIX = "/chat/completions"


class OpenAIConnection:
    """One ``AsyncOpenAI`` client, used by one worker at a time (so one connection)."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        api_key = headers.get("Authorization", "Bearer none").removeprefix("Bearer ")
        self.client = openai.AsyncOpenAI(
            base_url=url.removesuffix(SUFFIX), api_key=api_key, max_retries=0, timeout=300
        )

    async def close(self) -> None:
        await self.client.close()

    async def post_stream(
        self, body: dict[str, object], *, hang_up_early: bool = False
    ) -> tuple[float, bool]:
        started = time.perf_counter()
        ttft, finished = 0.0, False
        try:
            stream = await self.client.chat.completions.create(**body)  # type: ignore[call-overload]
            async for chunk in stream:
                if hang_up_early:
                    await stream.close()
                    return 0.0, False
                if not chunk.choices:
                    continue
                choice = chunk.choices[0]
                if not ttft and choice.delta.content:
                    ttft = time.perf_counter() - started
                finished = finished or choice.finish_reason is not None
        except openai.APIError:
            return 0.0, False
        # The SDK swallows [DONE]; an answer with text and a finish reason is complete.
        return ttft, bool(ttft) and finished
