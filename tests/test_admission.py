"""AdmissionLimit: HTTP requests set up a few at a time, first come first served."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from django.test import override_settings

from copilotedge import admission
from copilotedge.admission import AdmissionLimit


class App:
    """An ASGI app that notes who is inside and answers when told to."""

    def __init__(self, *, release_early: bool = False) -> None:
        self.inside: set[int] = set()
        self.most_inside = 0
        self.entered: list[int] = []
        self.go: dict[int, asyncio.Event] = {}
        self.release_early = release_early

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        number = scope["number"]
        self.entered.append(number)
        self.inside.add(number)
        self.most_inside = max(self.most_inside, len(self.inside))
        if self.release_early:
            admission.release()  # as a turn does before it waits for upstream
            self.inside.discard(number)
        await self.go.setdefault(number, asyncio.Event()).wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        self.inside.discard(number)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def request(app: AdmissionLimit, number: int, sent: list[Any]) -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    await app({"type": "http", "number": number}, receive, send)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@override_settings(COPILOTEDGE_ADMISSION_LIMIT=2)
async def test_at_most_the_limit_are_set_up_at_once_in_arrival_order() -> None:
    app = App()
    sent: list[Any] = []
    limited = AdmissionLimit(app)
    tasks = [asyncio.create_task(request(limited, n, sent)) for n in range(5)]
    await settle()
    assert app.entered == [0, 1]
    for number in range(5):
        app.go.setdefault(number, asyncio.Event()).set()
        await settle()
    await asyncio.gather(*tasks)
    assert app.entered == [0, 1, 2, 3, 4]
    assert app.most_inside == 2
    assert [m["type"] for m in sent].count("http.response.start") == 5


@override_settings(COPILOTEDGE_ADMISSION_LIMIT=1)
async def test_a_request_that_waits_gives_its_place_up() -> None:
    app = App(release_early=True)
    limited = AdmissionLimit(app)
    tasks = [asyncio.create_task(request(limited, n, [])) for n in range(3)]
    await settle()
    assert app.entered == [0, 1, 2]  # all set up while the first still waits
    for event in app.go.values():
        event.set()
    await asyncio.gather(*tasks)


@override_settings(COPILOTEDGE_ADMISSION_LIMIT=1)
async def test_a_failing_request_gives_its_place_up() -> None:
    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    limited = AdmissionLimit(broken)
    for _ in range(2):
        with pytest.raises(RuntimeError):
            await request(limited, 0, [])
    app = App()
    limited.app = app
    task = asyncio.create_task(request(limited, 7, []))
    await settle()
    assert app.entered == [7]
    app.go[7].set()
    await task


@override_settings(COPILOTEDGE_ADMISSION_LIMIT=0)
async def test_zero_turns_it_off_and_other_scopes_pass() -> None:
    app = App()
    limited = AdmissionLimit(app)
    tasks = [asyncio.create_task(request(limited, n, [])) for n in range(4)]
    await settle()
    assert app.entered == [0, 1, 2, 3]
    for event in app.go.values():
        event.set()
    await asyncio.gather(*tasks)
    seen: list[str] = []

    async def lifespan(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    with override_settings(COPILOTEDGE_ADMISSION_LIMIT=1):
        await AdmissionLimit(lifespan)({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    assert seen == ["lifespan"]
