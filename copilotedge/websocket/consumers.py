"""The WebSocket face, ``ws/copilotedge/chat/`` (the protocol is in CONTRACT.md).

Every ``chat`` runs as its own task over a :class:`~copilotedge.chat.turn.Turn` and sends its
tokens with ``self.send`` (the channel layer carries no per-token traffic). A dropped
socket leaves its chats running detached, bounded by ``WS_DETACHED_TIMEOUT``, so they
finish and are stored; ``resume`` (see :mod:`copilotedge.websocket.resume`) picks an answer up again
from any server process. What a client sends is checked in :mod:`copilotedge.websocket.input`.
Every frame counts as one request against the caller's limit (its address's before ``auth``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from copilotedge import exceptions, lifecycle, ratelimit
from copilotedge.auth import Principal, client_ip, key_for_token, refresh_principal
from copilotedge.chat import faces, wire
from copilotedge.chat.agents import DEFAULT_AGENT, get_agent, named_agent, with_agent
from copilotedge.chat.deltas import TOOL_CALL as STEP_CALL
from copilotedge.chat.deltas import TOOL_CONFIRM as STEP_CONFIRM
from copilotedge.chat.deltas import TOOL_RESULT as STEP_RESULT
from copilotedge.chat.deltas import ToolStep
from copilotedge.chat.turn import Turn
from copilotedge.conf import settings
from copilotedge.conversations import history
from copilotedge.tools import ToolCallRequest
from copilotedge.websocket import confirm
from copilotedge.websocket.input import (
    ChatId,
    client_id,
    parse_chat_message,
    parse_frame,
    require_id,
)
from copilotedge.websocket.layer import OutageTolerantLayer
from copilotedge.websocket.protocol import (
    AUTH,
    CANCEL,
    CANCELLED,
    CHAT,
    CLOSE_UNAUTHENTICATED,
    CONFIRM,
    DELTA,
    DONE,
    ERROR,
    PING,
    PONG,
    READY,
    RESUME,
    START,
    TOOL_CALL,
    TOOL_RESULT,
)
from copilotedge.websocket.resume import ResumeMixin

logger = logging.getLogger(__name__)


def _cancel_timer(timer: asyncio.TimerHandle, task: asyncio.Task[None]) -> None:
    timer.cancel()


def tool_frame(chat_id: ChatId, step: ToolStep) -> dict[str, Any]:
    """A server tool step as the client sees it: ``tool_call``, ``confirm`` or ``tool_result``."""
    if step.kind == STEP_RESULT:
        return {
            "type": TOOL_RESULT,
            "id": chat_id,
            "tool_call_id": step.tool_call_id,
            "content": step.content,
        }
    kind = {STEP_CALL: TOOL_CALL, STEP_CONFIRM: CONFIRM}[step.kind]
    return {
        "type": kind,
        "id": chat_id,
        "tool_call_id": step.tool_call_id,
        "name": step.name,
        "arguments": step.arguments,
    }


def error_body(error: exceptions.CopilotEdgeError) -> dict[str, Any]:
    message = error.message
    if error.param and error.param not in message:
        message = f"{message} ({error.param})"
    return {"message": message, "code": error.code}


class ChatConsumer(ResumeMixin, AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    """One socket: authentication, concurrent chats, cancel, resume and heartbeat."""

    @property
    def channel_layer(self) -> OutageTolerantLayer | None:
        return self._channel_layer

    @channel_layer.setter
    def channel_layer(self, layer: Any) -> None:
        # channels assigns the configured layer here; a Redis outage must not end the socket.
        self._channel_layer = None if layer is None else OutageTolerantLayer(layer)

    async def connect(self) -> None:
        self.principal: Principal | None = None
        self.attached = True
        self.chats: dict[ChatId, asyncio.Task[None]] = {}
        self.resumes = {}
        self._auth_deadline: asyncio.Task[None] | None = None
        await self.accept()
        user = self.scope.get("user")
        if user is not None and user.is_authenticated:
            await self._authenticated(Principal(user=user, ip=self._ip()))
        else:
            self._auth_deadline = asyncio.create_task(self._expire_unauthenticated())

    def _ip(self) -> str:
        return client_ip(self.scope)

    async def _authenticated(self, principal: Principal) -> None:
        self.principal = principal
        if self._auth_deadline is not None:
            self._auth_deadline.cancel()
            self._auth_deadline = None
        await self.reply({"type": READY, "user": principal.user.get_username()})

    async def _expire_unauthenticated(self) -> None:
        await asyncio.sleep(settings.WS_AUTH_TIMEOUT)
        if self.principal is None:
            await self.close(code=CLOSE_UNAUTHENTICATED)

    async def reply(self, content: dict[str, Any]) -> None:
        """Send to the client unless it is gone (a detached chat runs on silently)."""
        if not self.attached:
            return
        try:
            await self.send_json(content)
        except Exception:
            # The socket closed before its disconnect reached us (daphne raises then):
            # the chats go on detached, as after the disconnect itself.
            logger.debug("WebSocket send failed; the client is gone", exc_info=True)
            self.attached = False

    async def reply_error(self, chat_id: ChatId | None, error: exceptions.CopilotEdgeError) -> None:
        body: dict[str, Any] = {"type": ERROR}
        if chat_id is not None:
            body["id"] = chat_id
        body["error"] = error_body(error)
        await self.reply(body)

    # Incoming -------------------------------------------------------------------------

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any
    ) -> None:
        content: dict[str, Any] = {}
        invalid: exceptions.CopilotEdgeError | None = None
        try:
            content = parse_frame(text_data, bytes_data)
        except exceptions.CopilotEdgeError as error:
            invalid = error
        # Every frame counts against the caller's request limit, as an HTTP request would;
        # before ``auth``, against the client's address (so guessing keys is limited too).
        decision = await ratelimit.acheck_request(self.principal or Principal(ip=self._ip()))
        refused = decision.error or invalid
        if refused is not None:
            await self.reply_error(client_id(content), refused)
            return
        await self.handle(content)

    async def handle(self, content: dict[str, Any]) -> None:
        kind = content.get("type")
        handlers = {
            AUTH: self.on_auth,
            CHAT: self.on_chat,
            CANCEL: self.on_cancel,
            RESUME: self.on_resume,
            PING: self.on_ping,
            CONFIRM: self.on_confirm,
        }
        handler = handlers.get(kind) if isinstance(kind, str) else None
        try:
            if handler is None:
                raise exceptions.InvalidRequest(
                    f"Unknown message type {kind!r}.", param="type", code="unknown_type"
                )
            if self.principal is None and kind not in (AUTH, PING):
                raise exceptions.AuthenticationFailed(
                    'Send {"type": "auth", "token": "ce_…"} first.', code="authentication_required"
                )
            if kind in (CHAT, RESUME) and not await self._still_authenticated(content):
                return
            await handler(content)
        except exceptions.CopilotEdgeError as error:
            await self.reply_error(client_id(content), error)
        except Exception:
            logger.exception("WebSocket message %r failed", kind)
            await self.reply_error(client_id(content), exceptions.CopilotEdgeError())

    async def _still_authenticated(self, content: dict[str, Any]) -> bool:
        """Re-check the caller before work; gone credentials end the socket (4401)."""
        assert self.principal is not None
        try:
            self.principal = await refresh_principal(self.principal, self.scope.get("session"))
        except exceptions.AuthenticationFailed as error:
            self.principal = None
            for task in self.chats.values():
                task.cancel()
            await self.reply_error(client_id(content), error)
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return False
        return True

    async def on_ping(self, content: dict[str, Any]) -> None:
        await self.reply({"type": PONG})

    async def on_auth(self, content: dict[str, Any]) -> None:
        if self.principal is not None:
            raise exceptions.InvalidRequest("Already authenticated.", code="already_authenticated")
        token = content.get("token")
        try:
            if not isinstance(token, str):
                raise exceptions.AuthenticationFailed("'token' must be an API key.")
            key = await key_for_token(token)
        except exceptions.AuthenticationFailed as error:
            await self.reply_error(None, error)
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        await self._authenticated(Principal(user=key.user, api_key=key, ip=self._ip()))

    async def on_chat(self, content: dict[str, Any]) -> None:
        assert self.principal is not None
        chat_id = require_id(content)
        if chat_id in self.chats:
            raise exceptions.InvalidRequest("A chat with this id is running.", code="duplicate_id")
        if len(self.chats) >= settings.WS_MAX_CHATS:
            raise exceptions.RateLimited(
                f"At most {settings.WS_MAX_CHATS} chats may run at once on one socket.",
                code="too_many_chats",
            )
        # ``model: "agent:<id>"`` chats with that agent; no model, with the default
        # agent's tools (if it has any) and the model the caller prefers.
        agent = named_agent(content.get("model"))
        request = parse_chat_message({**content, "model": None} if agent else content)
        if agent is not None:
            request = with_agent(request, agent)
        elif not request.model_given and DEFAULT_AGENT in settings.AGENTS:
            agent = get_agent(DEFAULT_AGENT)
        owner = self.principal.identity

        async def approve(call: ToolCallRequest) -> bool:
            return await confirm.await_answer(owner, call)

        # The frame was counted as a request; the Turn reserves and settles tokens itself.
        turn = Turn(
            request,
            self.principal,
            protocol="websocket",
            server_tools=agent.server_tools() if agent is not None else (),
            approve=approve,
        )
        task = asyncio.get_running_loop().create_task(self._run_chat(chat_id, turn))
        # Attached or detached, it is in flight until it ends: a stop waits for it.
        lifecycle.track_chat(task)
        self.chats[chat_id] = task

        def ended(task: asyncio.Task[None]) -> None:
            if self.chats.get(chat_id) is task:
                del self.chats[chat_id]

        task.add_done_callback(ended)

    async def _run_chat(self, chat_id: ChatId, turn: Turn) -> None:
        try:
            await turn.astart()  # the ids announced next name stored rows
            transcript = turn.transcript
            await self.reply(
                {
                    "type": START,
                    "id": chat_id,
                    "conversation_id": str(transcript.conversation_id) if transcript else None,
                    "message_id": str(transcript.message_id) if transcript else None,
                }
            )
            await faces.aopen(turn)
            async for batch in turn.batches():
                # One message per upstream read, not per token.
                text = "".join(delta.text for delta in batch)
                if text:
                    await self.reply({"type": DELTA, "id": chat_id, "content": text})
                for delta in batch:
                    if delta.tool_step is not None:
                        await self.reply(tool_frame(chat_id, delta.tool_step))
            # Saved before the client hears the end, so what it fetches next is final.
            await turn.wait_until_saved()
            await self.reply(
                {
                    "type": DONE,
                    "id": chat_id,
                    "finish_reason": turn.answer.final_finish_reason(),
                    "usage": wire.usage_of(turn),
                }
            )
        except exceptions.CopilotEdgeError as error:
            await turn.wait_until_saved()
            await self.reply_error(chat_id, error)
        except asyncio.CancelledError:
            await turn.wait_until_saved()
            await self.reply({"type": CANCELLED, "id": chat_id})
            raise
        except Exception:
            logger.exception("WebSocket chat %r failed", chat_id)
            await self.reply_error(chat_id, exceptions.CopilotEdgeError())

    async def on_cancel(self, content: dict[str, Any]) -> None:
        chat_id = require_id(content)
        task = self.chats.get(chat_id)
        if task is not None:
            task.cancel()
            return
        resumed = self.resumed(chat_id)
        if resumed is not None:
            # Generated by another socket (maybe another process): stop it where it runs.
            await history.acancel(resumed)
            return
        raise exceptions.NotFound("No chat with this id is running.", param="id")

    async def on_confirm(self, content: dict[str, Any]) -> None:
        assert self.principal is not None
        require_id(content)
        tool_call_id = content.get("tool_call_id")
        approve = content.get("approve")
        if not isinstance(tool_call_id, str) or not tool_call_id:
            raise exceptions.InvalidRequest(
                "'tool_call_id' must be a string.", param="tool_call_id"
            )
        if not isinstance(approve, bool):
            raise exceptions.InvalidRequest("'approve' must be true or false.", param="approve")
        await confirm.answer(self.principal.identity, tool_call_id, approve)

    # The end --------------------------------------------------------------------------

    async def disconnect(self, code: int) -> None:
        self.attached = False
        if self._auth_deadline is not None:
            self._auth_deadline.cancel()
        await self.stop_resumes()
        loop = asyncio.get_running_loop()
        for task in self.chats.values():
            if settings.WS_CANCEL_ON_DISCONNECT:
                task.cancel()
            else:
                limit = loop.call_later(settings.WS_DETACHED_TIMEOUT, task.cancel)
                task.add_done_callback(functools.partial(_cancel_timer, limit))
