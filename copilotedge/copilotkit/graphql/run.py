"""The turn behind one ``generateCopilotResponse``, pumped into the feeds GraphQL streams.

One task reads the turn's deltas and writes them into async feeds: the response's
``messages`` (one output per text message or action execution) and each output's
``content`` or ``arguments``; the statuses resolve when the turn ends, as the
``Success``/``Failed`` objects CopilotKit's runtime client expects. A server tool's call
is an action execution (scope ``server``, its arguments whole) and its result a
``ResultMessageOutput``; approval is not asked here, so a ``confirm=True`` call is denied.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from copilotedge.chat.deltas import TOOL_CALL, TOOL_RESULT, ToolStep
from copilotedge.chat.turn import Turn
from copilotedge.exceptions import CopilotEdgeError

# Named as before the split, so logging configured for the GraphQL face still applies.
logger = logging.getLogger("copilotedge.copilotkit.graphql.resolve")
_END = object()


class Feed:
    """An async stream one task writes and the executor reads (``messages``, ``content``)."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self.closed = False

    def put(self, item: Any) -> None:
        self._queue.put_nowait(item)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._queue.put_nowait(_END)

    async def __aiter__(self) -> AsyncIterator[Any]:
        while (item := await self._queue.get()) is not _END:
            yield item


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def message_status(error: CopilotEdgeError | None) -> dict[str, Any]:
    if error is None:
        return {"__typename": "SuccessMessageStatus", "code": "Success"}
    return {"__typename": "FailedMessageStatus", "code": "Failed", "reason": error.message}


def response_status(error: CopilotEdgeError | None, *, interrupted: bool) -> dict[str, Any]:
    if error is None:
        return {"__typename": "SuccessResponseStatus", "code": "Success"}
    return {
        "__typename": "FailedResponseStatus",
        "code": "Failed",
        "reason": "MESSAGE_STREAM_INTERRUPTED" if interrupted else "UNKNOWN_ERROR",
        "details": {"code": error.code, "type": error.type, "message": error.message},
    }


class _Output:
    """One message being streamed out: its output object, its feed and its status."""

    def __init__(self, typename: str, message_id: str, stream_field: str, **fields: Any) -> None:
        self.feed = Feed()
        self.status: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        async def status(info: Any) -> dict[str, Any]:
            return await self.status

        self.output = {
            "__typename": typename,
            "id": message_id,
            "createdAt": _now(),
            "status": status,
            stream_field: aiter(self.feed),
            **fields,
        }

    def close(self, error: CopilotEdgeError | None) -> None:
        self.feed.close()
        if not self.status.done():
            self.status.set_result(message_status(error))


class CopilotRun:
    """The turn behind one ``generateCopilotResponse``, pumped into message feeds."""

    def __init__(self, turn: Turn) -> None:
        self.turn = turn
        self.messages = Feed()
        self.done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._task: asyncio.Task[None] | None = None
        self._outputs: list[_Output] = []

    async def status(self, info: Any) -> dict[str, Any]:
        return await self.done

    def fail_early(self, error: CopilotEdgeError) -> None:
        self.messages.close()
        self.done.set_result(response_status(error, interrupted=False))

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._pump())

    async def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _open(self, output: _Output) -> _Output:
        self._outputs.append(output)
        self.messages.put(output.output)
        return output

    def _tool_step(self, step: ToolStep, parent_id: str) -> None:
        """A server tool's call (whole: it ran here) or its result, as messages."""
        if step.kind == TOOL_CALL:
            call = self._open(
                _Output(
                    "ActionExecutionMessageOutput",
                    step.tool_call_id,
                    "arguments",
                    name=step.name,
                    scope="server",
                    parentMessageId=parent_id,
                )
            )
            call.feed.put(step.arguments or "{}")
            call.close(None)
        elif step.kind == TOOL_RESULT:
            self.messages.put(
                {
                    "__typename": "ResultMessageOutput",
                    "id": str(uuid.uuid4()),
                    "createdAt": _now(),
                    "status": message_status(None),
                    "actionExecutionId": step.tool_call_id,
                    "actionName": step.name,
                    "result": step.content,
                }
            )

    async def _pump(self) -> None:
        text: _Output | None = None
        parent_id = str(uuid.uuid4())
        calls: dict[int, _Output] = {}
        error: CopilotEdgeError | None = None
        try:
            async for delta in self.turn.deltas():
                if delta.tool_step is not None:
                    if text is not None:
                        text.close(None)
                        text = None  # what the model says next is a new message
                    self._tool_step(delta.tool_step, parent_id)
                if delta.text:
                    if text is None:
                        parent_id = str(uuid.uuid4())
                        text = self._open(
                            _Output(
                                "TextMessageOutput",
                                parent_id,
                                "content",
                                role="assistant",
                                parentMessageId=None,
                            )
                        )
                    text.feed.put(delta.text)
                for piece in delta.tool_calls:
                    if text is not None:
                        text.close(None)
                        text = None
                    call = self.turn.answer.tool_calls[piece.index]
                    if piece.index not in calls:
                        calls[piece.index] = self._open(
                            _Output(
                                "ActionExecutionMessageOutput",
                                call.id,
                                "arguments",
                                name=call.name,
                                parentMessageId=parent_id,
                            )
                        )
                    if piece.arguments:
                        calls[piece.index].feed.put(piece.arguments)
            await self.turn.wait_until_saved()  # the thread is whole before the client hears "done"
        except CopilotEdgeError as failure:
            error = failure
        except Exception:
            logger.exception("generateCopilotResponse failed")
            error = CopilotEdgeError()
        except asyncio.CancelledError:
            error = CopilotEdgeError("The request was cancelled.", code="cancelled")
            raise
        finally:
            for output in self._outputs:
                output.close(error)
            self.messages.close()
            if not self.done.done():
                interrupted = bool(self.turn.answer.text or self.turn.answer.tool_calls)
                self.done.set_result(response_status(error, interrupted=interrupted))
