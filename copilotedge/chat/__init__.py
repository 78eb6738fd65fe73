"""Chat: the request and answer types, the turn (the one orchestrator), validation and wire formats.

- ``types``: The values a turn is made of: :class:`ChatRequest`, :class:`Answer`, the
  :class:`TurnRecord` of a finished turn. Imports nothing above it; every service uses
  these, never the turn.
- ``checks``: The system check that the site serves ASGI (streamed answers need it).
- ``deltas``: Deltas: the normalised pieces of an upstream answer, and the parsing that
  makes them.
- ``sse``: Server-Sent Events: an incremental parser and an encoder. No Django, no httpx.
- ``token_estimates``: Offline token estimates, for when upstream reports no usage.
- ``turn``: One conversation turn: the one orchestrator, shared by every face (OpenAI,
  /ai/run, AG-UI, GraphQL, WebSocket, the Python API).
- ``agents``: Agents (``COPILOTEDGE_AGENTS``): a model, a system prompt, params and the
  server-side tools the model may call; every face that names an agent resolves it here.
- ``faces``: What every face does around a turn: prepare it, let go of what the request
  holds, then open its answer.
- ``validation``: Turn untrusted request bodies into a :class:`ChatRequest`, or a 4xx naming
  the field.
- ``wire``: The wire shapes of the OpenAI and Workers AI faces: answers, chunks and error
  frames.
"""
