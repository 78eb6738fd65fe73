"""The WebSocket face: the consumer, its frames, and resume.

- ``consumers``: The WebSocket face, ``ws/copilotedge/chat/`` (the protocol is in
  CONTRACT.md).
- ``input``: WebSocket input: a client's frames checked and turned into what the consumer
  acts on.
- ``protocol``: The WebSocket protocol's names (CONTRACT.md), shared by the consumer and
  resume.
- ``resume``: ``resume`` on the WebSocket: the stored text of an answer, then its live
  deltas.
"""
