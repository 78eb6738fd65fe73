"""``resume`` on the WebSocket: the stored text of an answer, then its live deltas.

From the start (``after`` 0), the answer's stored server tool steps come first, as the
``tool_call`` and ``tool_result`` frames that showed them.

A resumer first joins the answer's channel-layer group, then reads the row: every live
event published after the join reaches it, and each event says from which character
(``offset``, always saved already) its ``text`` runs. So the resumer sends exactly the
characters past what it has sent (``sent``): none twice, none lost. If an event starts
past ``sent`` (the row was saved again between the read and the event), it reads the row
again, which then holds at least up to ``offset``. Offsets count Unicode code points.

A watchdog re-reads the row when no event came for a while: it ends the resume when the
answer ended without an event reaching us, and marks an answer ``incomplete`` when the
process generating it died (the row stopped changing for longer than any live answer
can be silent).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.utils import timezone

from copilotedge import exceptions
from copilotedge.conf import settings
from copilotedge.conversations import history
from copilotedge.conversations.live import group_name
from copilotedge.conversations.transcript import awatch
from copilotedge.models import Message
from copilotedge.websocket.input import ChatId, require_id
from copilotedge.websocket.protocol import (
    CANCELLED,
    DELTA,
    DONE,
    ERROR,
    START,
    TOOL_CALL,
    TOOL_RESULT,
)

#: Silence (besides ``READ_TIMEOUT``) after which a ``streaming`` row is taken for dead.
STALE_MARGIN = 10.0


@dataclass
class Resume:
    """One resumed answer on one socket."""

    id: ChatId
    message_id: uuid.UUID
    sent: int
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    heard: float = field(default_factory=time.monotonic)
    watchdog: asyncio.Task[None] | None = None


def _error(code: str, message: str) -> dict[str, Any]:
    return {"message": message, "code": code}


_ENDINGS = {
    Message.Status.INCOMPLETE: _error(
        "upstream_incomplete", "The answer broke off before it was complete."
    ),
    Message.Status.ERROR: _error("upstream_error", "The model provider failed to answer."),
}


async def _tool_frames(chat_id: ChatId, answer: Message) -> list[dict[str, Any]]:
    """The stored server tool steps of ``answer``'s turn, as the frames that showed them."""
    steps: list[Message] = []
    earlier = Message.objects.filter(
        conversation_id=answer.conversation_id, sequence__lt=answer.sequence
    ).order_by("-sequence")
    async for message in earlier:
        if not (message.role == Message.Role.TOOL or message.tool_calls):
            break
        steps.append(message)
    frames: list[dict[str, Any]] = []
    for message in reversed(steps):
        if message.role == Message.Role.TOOL:
            result = {"tool_call_id": message.tool_call_id, "content": message.content}
            frames.append({"type": TOOL_RESULT, "id": chat_id, **result})
            continue
        for call in message.tool_calls or []:
            function = call.get("function") or {}
            shown = {"tool_call_id": call.get("id"), "name": function.get("name"),
                     "arguments": function.get("arguments")}  # fmt: skip
            frames.append({"type": TOOL_CALL, "id": chat_id, **shown})
    return frames


class ResumeMixin:
    """The ``resume`` half of :class:`~copilotedge.websocket.consumers.ChatConsumer`."""

    resumes: dict[str, Resume]
    principal: Any
    channel_layer: Any
    channel_name: str

    async def reply(self, content: dict[str, Any]) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def resumed(self, chat_id: ChatId) -> uuid.UUID | None:
        """The message a resume of this socket with client id ``chat_id`` follows."""
        for state in self.resumes.values():
            if state.id == chat_id:
                return state.message_id
        return None

    async def on_resume(self, content: dict[str, Any]) -> None:
        from copilotedge.chat.validation import parse_conversation_id

        conversation_id = parse_conversation_id(content.get("conversation_id"))
        if conversation_id is None:
            raise exceptions.InvalidRequest(
                "'conversation_id' is required.", param="conversation_id"
            )
        # Without an id of its own, a resume's messages carry the conversation id.
        chat_id = require_id(content) if "id" in content else str(conversation_id)
        after = content.get("after", 0)
        if not isinstance(after, int) or isinstance(after, bool) or after < 0:
            raise exceptions.InvalidRequest("'after' must be an integer >= 0.", param="after")
        if self.resumed(chat_id) is not None:
            raise exceptions.InvalidRequest(
                "A resume with this id is running.", code="duplicate_id"
            )
        conversation = await history.owned_conversation(self.principal, conversation_id)
        message = (
            await conversation.messages.filter(role=Message.Role.ASSISTANT)
            .order_by("-sequence")
            .afirst()
        )
        if message is None:
            raise exceptions.NotFound(
                "This conversation has no answer to resume.", param="conversation_id"
            )
        key = message.id.hex
        if key in self.resumes:
            raise exceptions.InvalidRequest(
                "This answer is already being resumed on this socket.", code="duplicate_resume"
            )
        state = Resume(chat_id, message.id, after)
        self.resumes[key] = state
        # Join before reading the row: no event published after the read can be missed.
        if self.channel_layer is not None:
            await self.channel_layer.group_add(group_name(message.id), self.channel_name)
            await awatch(message.id)
        await self.reply(
            {
                "type": START,
                "id": chat_id,
                "conversation_id": str(conversation_id),
                "message_id": str(message.id),
            }
        )
        if after == 0:
            for frame in await _tool_frames(chat_id, message):
                await self.reply(frame)
        async with state.lock:
            await self._catch_up(state)
        if key in self.resumes:
            state.watchdog = asyncio.create_task(self._watch(state))

    async def _catch_up(self, state: Resume) -> bool:
        """Send the row's text past ``sent``; end the resume if the answer ended.

        Returns whether the resume is still open.
        """
        row = await Message.objects.filter(pk=state.message_id).afirst()
        if row is None:
            await self._end(state, {"type": ERROR, "id": state.id, "error": _error(
                "not_found", "The conversation was deleted.")})  # fmt: skip
            return False
        await self._send_from(state, 0, row.content)
        if row.status == Message.Status.STREAMING and self._is_dead(row):
            await Message.objects.filter(pk=row.pk, status=Message.Status.STREAMING).aupdate(
                status=Message.Status.INCOMPLETE, updated_at=timezone.now()
            )
            row.status = Message.Status.INCOMPLETE
        if row.status == Message.Status.STREAMING:
            return True
        await self._end(state, self._ending(state, row))
        return False

    def _is_dead(self, row: Message) -> bool:
        if history.transcript_of(row.pk) is not None:
            return False  # generated by this very process, so alive
        silent = timedelta(seconds=settings.READ_TIMEOUT + settings.FLUSH_INTERVAL + STALE_MARGIN)
        return row.updated_at < timezone.now() - silent

    @staticmethod
    def _ending(state: Resume, row: Message) -> dict[str, Any]:
        if row.status == Message.Status.COMPLETE:
            return {
                "type": DONE,
                "id": state.id,
                "finish_reason": row.finish_reason or "stop",
                "usage": {
                    "prompt_tokens": row.prompt_tokens,
                    "completion_tokens": row.completion_tokens,
                    "total_tokens": row.prompt_tokens + row.completion_tokens,
                },
            }
        if row.status == Message.Status.CANCELLED:
            return {"type": CANCELLED, "id": state.id}
        return {"type": ERROR, "id": state.id, "error": _ENDINGS[Message.Status(row.status)]}

    async def _send_from(self, state: Resume, offset: int, text: str) -> None:
        """Send what of ``text`` (which starts at character ``offset``) is past ``sent``."""
        end = offset + len(text)
        if offset <= state.sent < end:
            await self.reply(
                {"type": DELTA, "id": state.id, "content": text[state.sent - offset :]}
            )
            state.sent = end

    async def _end(self, state: Resume, last: dict[str, Any]) -> None:
        await self.reply(last)
        await self._leave(state)

    async def _leave(self, state: Resume) -> None:
        self.resumes.pop(state.message_id.hex, None)
        if state.watchdog is not None and state.watchdog is not asyncio.current_task():
            state.watchdog.cancel()
        if self.channel_layer is not None:
            await self.channel_layer.group_discard(group_name(state.message_id), self.channel_name)

    async def _watch(self, state: Resume) -> None:
        # Without a channel layer this polling is the only source of progress.
        interval = settings.FLUSH_INTERVAL if self.channel_layer is None else 1.0
        while state.message_id.hex in self.resumes:
            await asyncio.sleep(interval)
            if time.monotonic() - state.heard < interval:
                continue
            async with state.lock:
                if state.message_id.hex in self.resumes:
                    await self._catch_up(state)

    async def stop_resumes(self) -> None:
        for state in list(self.resumes.values()):
            await self._leave(state)

    # Channel-layer events (published by copilotedge.conversations.live) -------------------

    async def copilotedge_live_delta(self, event: dict[str, Any]) -> None:
        state = self.resumes.get(event["message"])
        if state is None:
            return
        state.heard = time.monotonic()
        async with state.lock:
            if event["message"] not in self.resumes:
                return
            offset, text = int(event["offset"]), str(event["text"])
            if offset > state.sent and not await self._catch_up(state):
                return
            await self._send_from(state, offset, text)

    async def copilotedge_live_end(self, event: dict[str, Any]) -> None:
        state = self.resumes.get(event["message"])
        if state is None:
            return
        async with state.lock:
            if event["message"] in self.resumes:
                await self._catch_up(state)
