"""The upstream, the only user of httpx: client, retries, breakers, fallbacks, response cache.

- ``attempts``: One attempt at one candidate, under the time limits: a stream or a whole
  answer.
- ``breaker_stores``: Where circuit state lives: a shared Django cache (Redis), or this
  process's memory.
- ``breakers``: Circuit breakers, one per upstream, shared by every process through a Redis
  cache.
- ``checks``: Checks of the upstream settings, and of retries, breakers, fallbacks and the
  response cache.
- ``client``: The upstream client: Workers AI (or any OpenAI-compatible server) over httpx.
- ``fallbacks``: Fallbacks: the ordered ways to answer a request for a model
  (``COPILOTEDGE_FALLBACKS``).
- ``requests``: What a request to an upstream says, before any I/O: where it goes and its
  body.
- ``resilience``: Getting an answer despite a failing upstream: retries, breakers,
  fallbacks, timeouts.
- ``response_cache``: The response cache: complete answers on the Django cache, and single
  flight.
"""
