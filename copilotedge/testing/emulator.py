"""The Workers AI emulator as a pure ASGI app: each request dispatched to an exchange or to
the control endpoints, over the emulator's state (:mod:`copilotedge.testing.state`)."""

from __future__ import annotations

from copilotedge.testing import asgi, control
from copilotedge.testing.asgi import Receive, Scope, Send
from copilotedge.testing.exchange import Exchange
from copilotedge.testing.state import EmulatorState


class EmulatorApp(EmulatorState):
    """An ASGI app that answers like Cloudflare Workers AI, deterministically and fast.

    ``tokens`` is the answer length and ``token_delay`` the pause before each token (both
    overridable per request with ``X-Emulator-Tokens`` / ``X-Emulator-Token-Delay``).
    ``api_token`` set: only that bearer token is accepted; unset: any non-empty one.
    ``models`` set: other models are unknown (404, code 5007); unset: every model exists.
    Models containing one of ``openai_style_models`` stream OpenAI frames on ``/ai/run``.
    ``requests`` is the request log (newest last, at most ``max_log`` entries) and
    ``open_streams`` the number of event streams being sent right now.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if control.PREFIX in scope["path"]:
                await control.handle(self, scope, receive, send)
            else:
                await Exchange(self, scope, receive, send).run()
        elif scope["type"] == "lifespan":
            await asgi.lifespan(receive, send)
