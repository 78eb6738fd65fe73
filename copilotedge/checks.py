"""Every misconfiguration as a system check with a stable id, so ``manage.py check`` tells."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.cache import InvalidCacheBackendError, caches
from django.core.cache.backends.dummy import DummyCache
from django.core.checks import CheckMessage, Error, Warning

from .agents import AGENT_KEYS, AGENT_PARAMS, DEFAULT_AGENT
from .conf import DEFAULT_BASE_URL, settings
from .exceptions import InvalidRequest
from .validation import parse_params


def _positive_numbers() -> Iterable[CheckMessage]:
    for name in (
        "CONNECT_TIMEOUT",
        "READ_TIMEOUT",
        "TOTAL_TIMEOUT",
        "KEEPALIVE_SECONDS",
        "MAX_BODY_BYTES",
        "MAX_MESSAGES",
        "MAX_CONNECTIONS",
    ):
        try:
            value = getattr(settings, name)
        except (TypeError, ValueError):
            value = None
        if value is None or value <= 0:
            yield Error(f"COPILOTEDGE_{name} must be a positive number.", id="copilotedge.E004")


def _rate_limits() -> Iterable[CheckMessage]:
    from .ratelimit_gcra import parse_rate
    from .ratelimit_stores import is_redis

    for name in ("RATE_LIMIT", "TOKEN_RATE_LIMIT"):
        try:
            parse_rate(getattr(settings, name))
        except ValueError as error:
            yield Error(
                f"COPILOTEDGE_{name} is not a rate: {error}.",
                hint='Write a count per unit: "60/m", "1000/h", "10/s" or "5000/d".',
                id="copilotedge.E010",
            )
    try:
        budget = settings.MONTHLY_BUDGET
    except (InvalidOperation, TypeError, ValueError):
        budget = Decimal(-1)
    if budget is not None and not budget >= 0:
        yield Error(
            "COPILOTEDGE_MONTHLY_BUDGET must be a number of USD (or None for no budget).",
            id="copilotedge.E012",
        )
    alias = settings.CACHE_ALIAS
    try:
        cache = caches[alias]
    except InvalidCacheBackendError:
        yield Error(
            f"COPILOTEDGE_CACHE_ALIAS names {alias!r}, which is not in CACHES.",
            id="copilotedge.E011",
        )
        return
    backend = type(cache).__name__
    if isinstance(cache, DummyCache):
        yield Warning(
            f"The cache {alias!r} is a DummyCache: it stores nothing, so rate limits "
            "are never reached.",
            hint="Set REDIS_URL (django-redis) or use another cache.",
            id="copilotedge.W011",
        )
    elif not is_redis(cache):
        yield Warning(
            f"The cache {alias!r} ({backend}) is not django-redis: rate limits are exact "
            "within one process only, so N server processes allow up to N times each limit.",
            hint="Set REDIS_URL to share the limits (django-redis) between processes.",
            id="copilotedge.W010",
        )


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    if DEFAULT_BASE_URL.rstrip("/") == settings.API_BASE_URL:
        if not settings.ACCOUNT_ID:
            errors.append(
                Warning(
                    "COPILOTEDGE_ACCOUNT_ID is not set: requests to Workers AI will fail.",
                    hint="Set it to your Cloudflare account id (or point "
                    "COPILOTEDGE_API_BASE_URL at the emulator or another upstream).",
                    id="copilotedge.W001",
                )
            )
        if not settings.API_TOKEN:
            errors.append(
                Warning(
                    "COPILOTEDGE_API_TOKEN is not set: requests to Workers AI will fail.",
                    hint="Create a Workers AI API token in the Cloudflare dashboard.",
                    id="copilotedge.W002",
                )
            )
    try:
        routes = settings.ROUTES
    except (TypeError, ValueError):  # not a mapping: reading it must not crash the check
        errors.append(
            Error(
                "COPILOTEDGE_ROUTES must be a dict of model globs to routes.",
                hint='For example {"@cf/meta/*": "openai", "*": "run"}.',
                id="copilotedge.E003",
            )
        )
        routes = {}
    bad_routes = sorted(
        repr(glob) if not isinstance(glob, str) else glob
        for glob, route in routes.items()
        if not isinstance(glob, str) or route not in ("openai", "run")
    )
    if bad_routes:
        errors.append(
            Error(
                f"COPILOTEDGE_ROUTES maps {', '.join(bad_routes)} to an unknown route.",
                hint='Each key must be a glob string and each value "openai" or "run".',
                id="copilotedge.E003",
            )
        )
    errors.extend(_positive_numbers())
    try:
        on_chunk = settings.ON_CHUNK  # importing the dotted path is the check
    except ImportError as error:
        errors.append(
            Error(f"COPILOTEDGE_ON_CHUNK cannot be imported: {error}", id="copilotedge.E005")
        )
    else:
        if on_chunk is not None and not callable(on_chunk):
            errors.append(Error("COPILOTEDGE_ON_CHUNK is not callable.", id="copilotedge.E005"))
    try:
        settings.PRICES  # noqa: B018
    except (AttributeError, InvalidOperation, TypeError, ValueError):
        errors.append(
            Error(
                "COPILOTEDGE_PRICES must map model ids to (input, output) USD per million tokens.",
                id="copilotedge.E006",
            )
        )
    errors.extend(_rate_limits())
    errors.extend(_agents())
    errors.extend(check_reliability())
    errors.extend(check_conversation_settings())
    errors.extend(_usage_settings())
    return errors


# -- Reliability settings (retries, breakers, fallbacks, response cache): E050-E059, W050-W059.

_RELIABILITY_NUMBERS: dict[str, float] = {
    # name: the smallest allowed value
    "FIRST_TOKEN_TIMEOUT": 1e-9,
    "RETRY_ATTEMPTS": 1,
    "RETRY_BASE_DELAY": 0,
    "RETRY_MAX_DELAY": 0,
    "RETRY_DEADLINE": 1e-9,
    "CIRCUIT_FAILURE_THRESHOLD": 1,
    "CIRCUIT_FAILURE_RATIO": 0,
    "CIRCUIT_FAILURE_WINDOW": 1e-9,
    "CIRCUIT_COOLDOWN": 1e-9,
    "RESPONSE_CACHE_TTL": 1,
}
_FALLBACK_FIELDS = frozenset({"model", "base_url", "api_token", "account_id", "name"})


def _fallback_problem(fallbacks: Any) -> str | None:
    if not isinstance(fallbacks, dict):
        return "it must be a dict of model id -> list of fallbacks"
    for model, entries in fallbacks.items():
        if not isinstance(entries, list | tuple):
            return f"the fallbacks of {model!r} must be a list"
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("model"), str):
                return f"each fallback of {model!r} must be a dict with a 'model' string"
            unknown = set(entry) - _FALLBACK_FIELDS
            if unknown:
                return f"a fallback of {model!r} has unknown keys {sorted(unknown)}"
            if not all(isinstance(value, str) for value in entry.values()):
                return f"the values of a fallback of {model!r} must be strings"
    return None


def check_reliability() -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    for name, smallest in _RELIABILITY_NUMBERS.items():
        try:
            value = getattr(settings, name)
        except (TypeError, ValueError):
            value = None
        if value is None or value < smallest:
            at_least = "a positive number" if smallest else "a number >= 0"
            errors.append(Error(f"COPILOTEDGE_{name} must be {at_least}.", id="copilotedge.E050"))
    try:
        problem = _fallback_problem(settings.FALLBACKS)
    except (TypeError, ValueError):
        problem = "it must be a dict of model id -> list of fallbacks"
    if problem:
        errors.append(
            Error(
                f"COPILOTEDGE_FALLBACKS is invalid: {problem}.",
                hint='e.g. {"@cf/meta/llama-3.1-8b-instruct": [{"model": "@cf/meta/llama-3.2-3b-'
                'instruct"}, {"model": "gpt-4o-mini", "base_url": "https://gateway.example/v1", '
                '"api_token": "..."}]}',
                id="copilotedge.E051",
            )
        )
    if not errors and settings.FIRST_TOKEN_TIMEOUT >= settings.RETRY_DEADLINE:
        errors.append(
            Warning(
                "COPILOTEDGE_FIRST_TOKEN_TIMEOUT is not shorter than COPILOTEDGE_RETRY_DEADLINE: "
                "an upstream that hangs before its first token is never retried.",
                id="copilotedge.W050",
            )
        )
    return errors


# Conversations and the WebSocket consumer: ids copilotedge.E030-E039 / W030-W039.
_CONVERSATION_NUMBERS = (
    "HISTORY_MAX_MESSAGES",
    "HISTORY_MAX_TOKENS",
    "RETENTION_DAYS",
    "FLUSH_INTERVAL",
    "FLUSH_BYTES",
    "LIVE_INTERVAL",
    "CONVERSATIONS_PAGE_SIZE",
    "WS_AUTH_TIMEOUT",
    "WS_MAX_CHATS",
    "WS_MAX_MESSAGE_BYTES",
    "WS_DETACHED_TIMEOUT",
)


def check_conversation_settings() -> list[CheckMessage]:
    from django.conf import settings as django_settings

    errors: list[CheckMessage] = []
    for name in _CONVERSATION_NUMBERS:
        try:
            value = getattr(settings, name)
        except (TypeError, ValueError):
            value = None
        if value is None or value <= 0:
            errors.append(
                Error(f"COPILOTEDGE_{name} must be a positive number.", id="copilotedge.E030")
            )
    layers = getattr(django_settings, "CHANNEL_LAYERS", None) or {}
    if "default" not in layers:
        errors.append(
            Warning(
                "CHANNEL_LAYERS has no 'default' layer: WebSocket clients cannot resume "
                "an answer that is still being generated.",
                hint="Use channels_redis.core.RedisChannelLayer (or InMemoryChannelLayer "
                "for a single process).",
                id="copilotedge.W030",
            )
        )
    return errors


# --- Usage ledger, metrics and health (copilotedge.E020-E029, W020-W029) -----------------

_MIN_METRICS_TOKEN = 16


def _valid(read: Callable[[], bool]) -> bool | None:
    """``read()``; ``None`` when the setting cannot even be parsed."""
    try:
        return read()
    except (AttributeError, InvalidOperation, TypeError, ValueError):
        return None


def _default_price_ok() -> bool:
    default = settings.DEFAULT_PRICE
    return default is None or all(price >= 0 for price in default)


def _usage_settings() -> Iterable[CheckMessage]:
    prices_ok = _valid(
        lambda: all(price >= 0 for pair in settings.PRICES.values() for price in pair)
    )
    if prices_ok is False:  # None is E006
        yield Error("COPILOTEDGE_PRICES has a negative price.", id="copilotedge.E022")
    if not _valid(_default_price_ok):
        yield Error(
            "COPILOTEDGE_DEFAULT_PRICE must be None or (input, output) non-negative USD "
            "per million tokens.",
            id="copilotedge.E020",
        )
    if not _valid(lambda: settings.NEURON_PRICE >= 0):
        yield Error(
            "COPILOTEDGE_NEURON_PRICE must be a non-negative number (USD per 1,000 neurons).",
            id="copilotedge.E021",
        )
    if not _valid(lambda: settings.HEALTH_TIMEOUT > 0):
        yield Error("COPILOTEDGE_HEALTH_TIMEOUT must be a positive number.", id="copilotedge.E023")
    token = settings.METRICS_TOKEN
    if token and len(token) < _MIN_METRICS_TOKEN:
        yield Warning(
            f"COPILOTEDGE_METRICS_TOKEN is shorter than {_MIN_METRICS_TOKEN} characters.",
            hint="Use a long random value: python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'.",
            id="copilotedge.W021",
        )
    if prices_ok is not None:
        from .usage import has_price

        missing = [model for model in settings.MODELS if not has_price(model)]
        if missing:
            yield Warning(
                f"No price in COPILOTEDGE_PRICES for {', '.join(missing)}.",
                hint="Their usage is charged COPILOTEDGE_DEFAULT_PRICE, or the highest prices "
                "in the table when that is not set. Add them to COPILOTEDGE_PRICES (glob "
                "patterns such as '@cf/meta/*' are allowed).",
                id="copilotedge.W020",
            )


_AGENT_ID = re.compile(r"^[A-Za-z0-9_.-]+$")
# Channel-layer group names: these characters, under 100 of them (we append 33).
_GROUP = re.compile(r"^[A-Za-z0-9_.-]{1,66}$")


def _agent(agent_id: str, entry: dict[str, Any]) -> Iterable[CheckMessage]:
    where = f"COPILOTEDGE_AGENTS[{agent_id!r}]"
    unknown = sorted(set(entry) - AGENT_KEYS)
    if unknown:
        yield Warning(
            f"{where} has unknown keys: {', '.join(unknown)}.",
            hint=f"Known keys: {', '.join(sorted(AGENT_KEYS))}.",
            id="copilotedge.W040",
        )
    texts = [
        k for k in ("name", "description", "system_prompt") if not isinstance(entry.get(k, ""), str)
    ]
    if texts:
        yield Error(f"{where}: {', '.join(texts)} must be strings.", id="copilotedge.E042")
    model = entry.get("model")
    if model is not None and model not in settings.MODELS:
        yield Error(
            f"{where} uses the model {model!r}, which is not in COPILOTEDGE_MODELS.",
            id="copilotedge.E043",
        )
    params = entry.get("params", {})
    if not isinstance(params, dict) or set(params) - AGENT_PARAMS:
        yield Error(
            f"{where}['params'] must be a dict of {', '.join(sorted(AGENT_PARAMS))}.",
            id="copilotedge.E044",
        )
        return
    try:
        parse_params(params)
    except InvalidRequest as error:
        yield Error(f"{where}['params']: {error.message}", id="copilotedge.E044")


def _agents() -> Iterable[CheckMessage]:
    """CopilotKit's agents (``/info`` lists them, ``agent/<id>/run`` runs them)."""
    try:
        agents = settings.AGENTS
    except (TypeError, ValueError):
        agents = None
    if not isinstance(agents, dict) or not all(isinstance(e, dict) for e in agents.values()):
        yield Error("COPILOTEDGE_AGENTS must be a dict of agent id -> dict.", id="copilotedge.E040")
        return
    bad_ids = sorted(str(i) for i in agents if not isinstance(i, str) or not _AGENT_ID.match(i))
    if bad_ids:
        yield Error(
            "COPILOTEDGE_AGENTS ids must be letters, digits, '_', '.' or '-': "
            f"{', '.join(bad_ids)}.",
            hint="An agent id is a URL segment (copilotkit/agent/<id>/run).",
            id="copilotedge.E041",
        )
    if DEFAULT_AGENT not in agents:
        yield Warning(
            f"COPILOTEDGE_AGENTS has no {DEFAULT_AGENT!r} agent.",
            hint="CopilotKit talks to the 'default' agent unless told otherwise (agent=...).",
            id="copilotedge.W041",
        )
    for agent_id, entry in agents.items():
        yield from _agent(str(agent_id), entry)
    if not _GROUP.match(settings.AGUI_STOP_GROUP):
        yield Error(
            "COPILOTEDGE_AGUI_STOP_GROUP must be 1-66 letters, digits, '_', '.' or '-'.",
            id="copilotedge.E045",
        )
