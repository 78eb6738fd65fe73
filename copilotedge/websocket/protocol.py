"""The WebSocket protocol's names (CONTRACT.md), shared by the consumer and resume."""

from __future__ import annotations

#: Close code for a socket that did not authenticate (in time, or correctly).
CLOSE_UNAUTHENTICATED = 4401

# Client -> server message types.
AUTH = "auth"
CHAT = "chat"
CANCEL = "cancel"
RESUME = "resume"
PING = "ping"
#: Also server -> client: a server tool waits for the client's approval.
CONFIRM = "confirm"

# Server -> client message types.
READY = "ready"
START = "start"
DELTA = "delta"
DONE = "done"
CANCELLED = "cancelled"
ERROR = "error"
PONG = "pong"
TOOL_CALL = "tool_call"
TOOL_RESULT = "tool_result"
