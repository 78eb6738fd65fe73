"""The AG-UI face of CopilotKit (>= 1.50).

- ``input``: AG-UI input: a ``RunAgentInput`` validated and turned into the turn's
  ``ChatRequest``.
- ``run``: The AG-UI face: a ``RunAgentInput`` in, a :class:`~copilotedge.chat.turn.Turn`
  run, AG-UI events out.
- ``interrupts``: ``confirm=True`` server tool calls as AG-UI interrupts, and the
  ``resume`` entries of the next run as their approvals.
- ``runs``: Running AG-UI runs, so ``agent/stop`` can stop one, in this process or in
  another.
- ``threads``: AG-UI threads as the caller's stored conversations: the id mapping, lookup
  and replay.
"""
