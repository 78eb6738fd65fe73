"""One upstream request to the emulator: auth, validation, faults, and the answer sent."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from copilotedge.testing import asgi
from copilotedge.testing.answers import compose
from copilotedge.testing.asgi import Receive, Scope, Send
from copilotedge.testing.faults import Effects
from copilotedge.testing.request import BadInput, UpstreamRequest, match_route, parse_request
from copilotedge.testing.shapes import MALFORMED_FRAME, OpenAIShape, RunShape, Shape, error_body

if TYPE_CHECKING:
    from copilotedge.testing.state import EmulatorState

_STREAM_HEADERS = [(b"cache-control", b"no-cache")]


class Exchange:
    """One upstream request and its response."""

    def __init__(self, app: EmulatorState, scope: Scope, receive: Receive, send: Send) -> None:
        self.app = app
        self.scope = scope
        self.receive = receive
        self.send = send
        self.entry = app.log(scope["path"], scope.get("client"))
        self.wake = asyncio.Event()
        self._gone = False
        self._listener: asyncio.Task[None] | None = None
        self._streaming = False

    async def run(self) -> None:
        try:
            self.entry["outcome"] = await self._respond()
        except asyncio.CancelledError:
            self.entry["outcome"] = "cancelled"  # the server is shutting down
            raise
        finally:
            self.entry["ended"] = time.time()
            if self._listener is not None:
                self._listener.cancel()
            if self._streaming:
                self.app.open_streams -= 1

    async def _listen(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass
        self._gone = True
        self.wake.set()

    async def pause(self, seconds: float) -> bool:
        """Sleep, waking at once if the client hangs up or the app closes; true if so."""
        app = self.app
        if self._listener is None:
            # Started on the first pause only: answers without one never need it.
            app.loop = asyncio.get_running_loop()
            self._listener = app.loop.create_task(self._listen())
        if self.wake.is_set() or app.closing:
            return True
        if seconds <= 0:
            return False
        app.wakers.add(self.wake)
        try:
            async with asyncio.timeout(seconds):
                await self.wake.wait()
        except TimeoutError:
            return False
        finally:
            app.wakers.discard(self.wake)
        return True

    async def _interrupted(self) -> str:
        """The outcome once a pause was cut short; ends the response if the app is closing."""
        if self._gone:
            return "client_disconnected"
        if self._streaming:
            await self._body(b"", more=False)
        else:
            await self._fail(503, 0, "The emulator is shutting down.")
        return "cancelled"

    async def _fail(
        self, status: int, code: int, message: str | None = None, retry_after: float | None = None
    ) -> str:
        extra = [] if retry_after is None else [(b"retry-after", f"{retry_after:g}".encode())]
        self.entry["status"] = status
        await asgi.reply(self.send, status, error_body(code, message), extra=extra)
        return "error"

    async def _respond(self) -> str:
        route = match_route(self.scope["path"])
        if route is None:
            return await self._fail(404, 7000)
        if self.scope["method"] != "POST":
            return await self._fail(405, 7001)
        raw = await asgi.read_body(self.receive)
        if raw is None:
            return "client_disconnected"
        authorized = self.app.token_ok(asgi.header(self.scope, b"authorization"))
        self.entry["authorization_ok"] = authorized
        if not authorized:
            return await self._fail(401, 10000)
        try:
            request = parse_request(
                *route,
                self.scope,
                raw,
                tokens=self.app.tokens,
                token_delay=self.app.token_delay,
            )
        except BadInput as error:
            return await self._fail(400, 5006, f"Bad input: {error}")
        faults = [*self.app.faults.take(self.scope["path"]), *request.faults]
        self.entry.update(
            model=request.model,
            stream=request.stream,
            messages=request.messages,
            params=request.params,
            faults=[str(fault) for fault in faults],
        )
        effects = Effects.of(faults)
        if effects.hang and await self.pause(effects.hang):
            return await self._interrupted()
        if effects.error is not None:
            fault = effects.error
            return await self._fail(fault.status, fault.code, retry_after=fault.retry_after)
        if not self.app.model_known(request.model):
            return await self._fail(404, 5007, f"No such model {request.model} or task")
        return await self._answer(request, effects)

    async def _answer(self, request: UpstreamRequest, effects: Effects) -> str:
        answer = compose(
            request.messages,
            tools=request.params.get("tools"),
            tokens=request.tokens,
            max_tokens=request.max_tokens,
        )
        shape: Shape
        if request.route == "openai" or self.app.openai_style(request.model):
            shape = OpenAIShape(request.model, answer, in_envelope=request.route == "run")
        else:
            shape = RunShape(answer)
        delay = request.token_delay if effects.slow is None else effects.slow
        self.entry["status"] = 200
        if not request.stream:
            return await self._whole(shape, answer.completion_tokens, effects, delay)
        # OpenAI sends stream usage only when asked; /ai/run always does.
        usage = not effects.nousage and (request.include_usage or request.route == "run")
        return await self._stream(shape, effects, delay, usage)

    async def _whole(self, shape: Shape, tokens: int, effects: Effects, delay: float) -> str:
        wait = delay * tokens
        if effects.stall is not None and effects.stall.after <= tokens:
            wait += effects.stall.seconds
        if wait > 0 and await self.pause(wait):
            return await self._interrupted()
        body = shape.body(usage=not effects.nousage)
        if effects.malformed is not None:
            body = b"{not json"
        if effects.drop is None:
            self.entry["tokens_sent"] = tokens
            await asgi.reply(self.send, 200, body)
            return "completed"
        # No content-length, so ending early reads as a truncated body, not a hung client.
        self.entry["tokens_sent"] = min(tokens, effects.drop)
        await asgi.start(self.send, 200, asgi.JSON)
        await self._body(body[: len(body) // 2], more=True)
        await self._body(b"", more=False)
        return "dropped"

    async def _body(self, body: bytes, *, more: bool) -> None:
        await self.send({"type": "http.response.body", "body": body, "more_body": more})

    async def _stream(self, shape: Shape, effects: Effects, delay: float, usage: bool) -> str:
        await asgi.start(self.send, 200, asgi.EVENT_STREAM, _STREAM_HEADERS)
        self._streaming = True
        self.app.open_streams += 1
        frames = shape.token_frames()
        stall = effects.stall
        pending = shape.head_frames()
        # Frames go out in as few sends as the pauses allow: all at once without delays.
        for index in range(len(frames) + 1):
            if index == effects.drop:
                await self._body(b"".join(pending), more=False)
                return "dropped"
            if index == effects.malformed:
                pending.append(MALFORMED_FRAME)
            wait = delay if index < len(frames) else 0.0
            if stall is not None and index == stall.after:
                wait += stall.seconds
            if wait > 0:
                if pending:
                    await self._body(b"".join(pending), more=True)
                    pending = []
                if await self.pause(wait):
                    return await self._interrupted()
            if index < len(frames):
                pending.append(frames[index])
                self.entry["tokens_sent"] += 1
        pending += shape.tail_frames(usage)
        await self._body(b"".join(pending), more=False)
        return "completed"
