"""Conversations: stored history, what a turn saves, live transcripts, preferences and their views.

- ``checks``: Checks of the conversation and WebSocket consumer settings:
  copilotedge.E030-E039, W030-W039.
- ``history``: Conversations in the turn: preferences, stored history, the budget, and what
  is saved.
- ``live``: Live deltas of generating answers: published to the channel layer, asked for by
  resumers.
- ``preferences``: A user's :class:`~copilotedge.models.Preference`, applied where a request
  says nothing.
- ``store``: The database writes of a turn: its new messages and the empty answer that will
  grow.
- ``transcript``: The growing text of a stored assistant message: saved while it grows,
  published live.
- ``views``: HTTP faces of stored conversations and of the caller's preferences.
"""
