"""The legacy GraphQL face of CopilotKit (<= 1.10): ``generateCopilotResponse``.

- ``incremental``: Incremental delivery (``@defer``/``@stream``) on the wire, as urql's
  fetch exchange reads it.
- ``limits``: What an operation may cost (length, tokens, fields, aliases, one turn),
  parsed and validated off the event loop.
- ``input``: The GraphQL face's input: ``generateCopilotResponse``'s ``data`` as the turn's
  ``ChatRequest``.
- ``resolve``: The legacy CopilotKit face: ``generateCopilotResponse`` over GraphQL,
  resolved over a Turn.
- ``run``: The turn behind one ``generateCopilotResponse``, pumped into the feeds GraphQL
  streams.
- ``schema``: The GraphQL schema of CopilotKit's legacy runtime
  (``generateCopilotResponse``), as SDL.
"""
