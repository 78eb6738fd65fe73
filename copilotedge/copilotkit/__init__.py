"""CopilotKit's runtime: agents, the AG-UI face and the legacy GraphQL face.

- ``agents``: The agents CopilotKit clients can talk to: an id mapped to a model, a system
  prompt and params.
- ``checks``: Checks of CopilotKit's agents (``COPILOTEDGE_AGENTS``): copilotedge.E040-E045,
  W040-W041.
- ``views``: CopilotKit's runtime endpoints: AG-UI (``info``, ``agent/run|connect|stop``)
  and legacy GraphQL.
- ``agui/``: The AG-UI face of CopilotKit (>= 1.50).
- ``graphql/``: The legacy GraphQL face of CopilotKit (<= 1.10):
  ``generateCopilotResponse``.
"""
