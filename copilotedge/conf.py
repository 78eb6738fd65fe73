"""The app's settings, each with a default, read from ``django.conf.settings`` at call time.

Reading at call time (never at import) keeps ``override_settings`` working and lets a
site change a value without touching this module. Nothing here writes to settings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from django.conf import settings as django_settings
from django.utils.module_loading import import_string

from copilotedge.defaults import (
    DEFAULT_AGENTS,
    DEFAULT_BASE_URL,
    DEFAULT_MODEL,
    DEFAULT_PRICES,
    DEFAULT_ROUTES,
)


def _get(name: str, default: Any) -> Any:
    return getattr(django_settings, name, default)


class Settings:
    """Typed accessors for every ``COPILOTEDGE_*`` setting."""

    @property
    def ACCOUNT_ID(self) -> str:
        return str(_get("COPILOTEDGE_ACCOUNT_ID", ""))

    @property
    def API_TOKEN(self) -> str:
        return str(_get("COPILOTEDGE_API_TOKEN", ""))

    @property
    def API_BASE_URL(self) -> str:
        return str(_get("COPILOTEDGE_API_BASE_URL", DEFAULT_BASE_URL)).rstrip("/")

    @property
    def MODEL(self) -> str:
        return str(_get("COPILOTEDGE_MODEL", DEFAULT_MODEL))

    @property
    def MODELS(self) -> list[str]:
        """The models clients may ask for; the default model is always allowed."""
        models = list(_get("COPILOTEDGE_MODELS", DEFAULT_PRICES.keys()))
        if self.MODEL not in models:
            models.insert(0, self.MODEL)
        return models

    @property
    def ROUTES(self) -> Mapping[str, str]:
        return dict(_get("COPILOTEDGE_ROUTES", DEFAULT_ROUTES))

    @property
    def CONNECT_TIMEOUT(self) -> float:
        return float(_get("COPILOTEDGE_CONNECT_TIMEOUT", 5.0))

    @property
    def READ_TIMEOUT(self) -> float:
        """Longest silence between two upstream bytes, and between two deltas of an answer."""
        return float(_get("COPILOTEDGE_READ_TIMEOUT", 60.0))

    @property
    def TOTAL_TIMEOUT(self) -> float:
        return float(_get("COPILOTEDGE_TOTAL_TIMEOUT", 300.0))

    @property
    def MAX_CONNECTIONS(self) -> int:
        return int(_get("COPILOTEDGE_MAX_CONNECTIONS", 1000))

    @property
    def ADMISSION_LIMIT(self) -> int:
        """HTTP requests a process sets up at once (``AdmissionLimit``); 0: no limit."""
        return int(_get("COPILOTEDGE_ADMISSION_LIMIT", 16))

    @property
    def STREAM(self) -> bool:
        """Whether a request that does not say ``stream`` is streamed."""
        return bool(_get("COPILOTEDGE_STREAM", False))

    @property
    def ON_CHUNK(self) -> Callable[[str], Any] | None:
        """Called with every text chunk streamed from upstream (callable or dotted path)."""
        value = _get("COPILOTEDGE_ON_CHUNK", None)
        if isinstance(value, str):
            value = import_string(value)
        return value  # type: ignore[no-any-return]

    @property
    def MAX_BODY_BYTES(self) -> int:
        return int(_get("COPILOTEDGE_MAX_BODY_BYTES", 1024 * 1024))

    @property
    def MAX_MESSAGES(self) -> int:
        return int(_get("COPILOTEDGE_MAX_MESSAGES", 500))

    @property
    def KEEPALIVE_SECONDS(self) -> float:
        return float(_get("COPILOTEDGE_KEEPALIVE_SECONDS", 15.0))

    @property
    def RATE_LIMIT(self) -> str:
        return str(_get("COPILOTEDGE_RATE_LIMIT", "60/m"))

    @property
    def TOKEN_RATE_LIMIT(self) -> str:
        return str(_get("COPILOTEDGE_TOKEN_RATE_LIMIT", "100000/m"))

    @property
    def ALLOW_ANONYMOUS(self) -> bool:
        return bool(_get("COPILOTEDGE_ALLOW_ANONYMOUS", False))

    @property
    def API_KEY_CACHE_SECONDS(self) -> float:
        """How long a process may reuse a looked-up key (a revocation elsewhere waits this long)."""
        return float(_get("COPILOTEDGE_API_KEY_CACHE_SECONDS", 5.0))

    @property
    def TRUST_X_FORWARDED_FOR(self) -> bool:
        """Take the caller's IP from the last ``X-Forwarded-For`` entry (the one the proxy
        in front of the site added); only behind such a proxy."""
        return bool(_get("COPILOTEDGE_TRUST_X_FORWARDED_FOR", False))

    @property
    def RATE_LIMIT_FAIL_OPEN(self) -> bool:
        return bool(_get("COPILOTEDGE_RATE_LIMIT_FAIL_OPEN", True))

    @property
    def CACHE_ALIAS(self) -> str:
        return str(_get("COPILOTEDGE_CACHE_ALIAS", "default"))

    @property
    def MONTHLY_BUDGET(self) -> Decimal | None:
        """USD a key (or a session user) may spend a calendar month; a key's own overrides."""
        value = _get("COPILOTEDGE_MONTHLY_BUDGET", None)
        return None if value is None else Decimal(str(value))

    @property
    def PRICES(self) -> dict[str, tuple[Decimal, Decimal]]:
        table = _get("COPILOTEDGE_PRICES", DEFAULT_PRICES)
        return {model: (Decimal(str(i)), Decimal(str(o))) for model, (i, o) in table.items()}

    @property
    def NEURON_PRICE(self) -> Decimal:
        """USD per 1,000 neurons, used when upstream reports neurons."""
        return Decimal(str(_get("COPILOTEDGE_NEURON_PRICE", "0.011")))

    @property
    def DEFAULT_PRICE(self) -> tuple[Decimal, Decimal] | None:
        """(input, output) USD per million tokens for a model missing from ``PRICES``.

        ``None`` (the default) charges such a model the highest input and output prices in
        ``PRICES``: an unknown model must never be recorded as free, or budgets never trip.
        """
        value = _get("COPILOTEDGE_DEFAULT_PRICE", None)
        if value is None:
            return None
        price_in, price_out = value
        return Decimal(str(price_in)), Decimal(str(price_out))

    @property
    def AGENTS(self) -> dict[str, dict[str, Any]]:
        return dict(_get("COPILOTEDGE_AGENTS", DEFAULT_AGENTS))

    @property
    def MAX_TOOL_STEPS(self) -> int:
        """Upstream calls a turn may make with server-tool results before it must answer."""
        return int(_get("COPILOTEDGE_MAX_TOOL_STEPS", 8))

    @property
    def TOOL_CONFIRM_TIMEOUT(self) -> float:
        """Seconds a ``confirm=True`` tool call waits for approval; no answer denies it."""
        return float(_get("COPILOTEDGE_TOOL_CONFIRM_TIMEOUT", 120.0))

    @property
    def AGUI_STOP_GROUP(self) -> str:
        """Channel-layer group a ``stop`` is published on, so any process can stop a run."""
        return str(_get("COPILOTEDGE_AGUI_STOP_GROUP", "copilotedge.copilotkit.agui.run.stop"))

    @property
    def GRAPHQL_MAX_QUERY_LENGTH(self) -> int:
        """Characters a GraphQL ``query`` may have (CopilotKit's is about 2,500)."""
        return int(_get("COPILOTEDGE_GRAPHQL_MAX_QUERY_LENGTH", 20_000))

    @property
    def GRAPHQL_MAX_TOKENS(self) -> int:
        """Lexical tokens a GraphQL ``query`` may have (CopilotKit's has about 300)."""
        return int(_get("COPILOTEDGE_GRAPHQL_MAX_TOKENS", 2_000))

    @property
    def GRAPHQL_MAX_FIELDS(self) -> int:
        """Fields a GraphQL operation may select, fragments expanded (CopilotKit's: about 80)."""
        return int(_get("COPILOTEDGE_GRAPHQL_MAX_FIELDS", 200))

    @property
    def GRAPHQL_MAX_ALIASES(self) -> int:
        """Aliased fields a GraphQL operation may have, fragments expanded."""
        return int(_get("COPILOTEDGE_GRAPHQL_MAX_ALIASES", 20))

    @property
    def METRICS_TOKEN(self) -> str:
        return str(_get("COPILOTEDGE_METRICS_TOKEN", ""))

    @property
    def HEALTH_TIMEOUT(self) -> float:
        """Seconds each readiness check (database, cache) may take before it counts as down."""
        return float(_get("COPILOTEDGE_HEALTH_TIMEOUT", 2.0))

    @property
    def HISTORY_MAX_MESSAGES(self) -> int:
        return int(_get("COPILOTEDGE_HISTORY_MAX_MESSAGES", 100))

    @property
    def HISTORY_MAX_TOKENS(self) -> int:
        return int(_get("COPILOTEDGE_HISTORY_MAX_TOKENS", 6000))

    @property
    def RETENTION_DAYS(self) -> int:
        return int(_get("COPILOTEDGE_RETENTION_DAYS", 30))

    # Conversations and the WebSocket consumer (checked as copilotedge.E030/W030).

    @property
    def STORE_CONVERSATIONS(self) -> bool:
        """Store conversations at all (a user's preference can still turn it off for them)."""
        return bool(_get("COPILOTEDGE_STORE_CONVERSATIONS", True))

    @property
    def FLUSH_INTERVAL(self) -> float:
        """Longest time a growing answer's text goes unsaved (seconds)."""
        return float(_get("COPILOTEDGE_FLUSH_INTERVAL", 0.5))

    @property
    def FLUSH_BYTES(self) -> int:
        """Unsaved text (UTF-8 bytes) that triggers a save before the interval is up."""
        return int(_get("COPILOTEDGE_FLUSH_BYTES", 2048))

    @property
    def LIVE_INTERVAL(self) -> float:
        """How often a growing answer is published to resumers on the channel layer (s).

        Every generating answer publishes this often whether or not anyone resumes it, so
        this is a group_send per answer per interval on the channel layer.
        """
        return float(_get("COPILOTEDGE_LIVE_INTERVAL", 0.2))

    @property
    def CONVERSATIONS_PAGE_SIZE(self) -> int:
        return int(_get("COPILOTEDGE_CONVERSATIONS_PAGE_SIZE", 20))

    @property
    def WS_AUTH_TIMEOUT(self) -> float:
        """Seconds a socket may stay open without a valid ``auth`` message."""
        return float(_get("COPILOTEDGE_WS_AUTH_TIMEOUT", 5.0))

    @property
    def WS_MAX_CHATS(self) -> int:
        """Chats one socket may run at once."""
        return int(_get("COPILOTEDGE_WS_MAX_CHATS", 4))

    @property
    def WS_MAX_MESSAGE_BYTES(self) -> int:
        return int(_get("COPILOTEDGE_WS_MAX_MESSAGE_BYTES", 1024 * 1024))

    @property
    def WS_DETACHED_TIMEOUT(self) -> float:
        """Seconds a chat may go on after its socket dropped before it is cancelled."""
        return float(_get("COPILOTEDGE_WS_DETACHED_TIMEOUT", 300.0))

    @property
    def WS_CANCEL_ON_DISCONNECT(self) -> bool:
        """Cancel a socket's chats when it drops instead of finishing and storing them."""
        return bool(_get("COPILOTEDGE_WS_CANCEL_ON_DISCONNECT", False))

    @property
    def SHUTDOWN_GRACE(self) -> float:
        """Seconds answers in flight at a stop may take to finish before they are ended."""
        return float(_get("COPILOTEDGE_SHUTDOWN_GRACE", 10.0))

    # -- Reliability: retries, circuit breaker, fallbacks, response cache --

    @property
    def FIRST_TOKEN_TIMEOUT(self) -> float:
        """Longest wait for an attempt's first delta; past it the attempt is retried."""
        return float(_get("COPILOTEDGE_FIRST_TOKEN_TIMEOUT", 30.0))

    @property
    def RETRY_ATTEMPTS(self) -> int:
        """Attempts per upstream (the first one included) before moving to a fallback."""
        return int(_get("COPILOTEDGE_RETRY_ATTEMPTS", 3))

    @property
    def RETRY_BASE_DELAY(self) -> float:
        return float(_get("COPILOTEDGE_RETRY_BASE_DELAY", 0.5))

    @property
    def RETRY_MAX_DELAY(self) -> float:
        """Cap of one backoff; a longer ``Retry-After`` is not waited for here."""
        return float(_get("COPILOTEDGE_RETRY_MAX_DELAY", 8.0))

    @property
    def RETRY_DEADLINE(self) -> float:
        """Seconds from the start of a turn within which its first delta must be obtained."""
        return float(_get("COPILOTEDGE_RETRY_DEADLINE", 60.0))

    @property
    def CIRCUIT_FAILURE_THRESHOLD(self) -> int:
        """Upstream failures within ``CIRCUIT_FAILURE_WINDOW`` seconds that open a circuit."""
        return int(_get("COPILOTEDGE_CIRCUIT_FAILURE_THRESHOLD", 5))

    @property
    def CIRCUIT_FAILURE_RATIO(self) -> float:
        """The share of calls in the window that must fail (besides the threshold) to open."""
        return float(_get("COPILOTEDGE_CIRCUIT_FAILURE_RATIO", 0.5))

    @property
    def CIRCUIT_FAILURE_WINDOW(self) -> float:
        return float(_get("COPILOTEDGE_CIRCUIT_FAILURE_WINDOW", 30.0))

    @property
    def CIRCUIT_COOLDOWN(self) -> float:
        """Seconds a circuit stays open before one probe request is let through."""
        return float(_get("COPILOTEDGE_CIRCUIT_COOLDOWN", 30.0))

    @property
    def FALLBACKS(self) -> dict[str, list[dict[str, str]]]:
        """Model -> ordered fallbacks, each ``{"model", "base_url"?, "api_token"?,
        "account_id"?, "name"?}``; without ``base_url`` the default upstream is used."""
        return dict(_get("COPILOTEDGE_FALLBACKS", {}))

    @property
    def RESPONSE_CACHE(self) -> bool:
        """The response cache's master switch (off: not even ``X-CopilotEdge-Cache: use``)."""
        return bool(_get("COPILOTEDGE_RESPONSE_CACHE", True))

    @property
    def RESPONSE_CACHE_TTL(self) -> int:
        return int(_get("COPILOTEDGE_RESPONSE_CACHE_TTL", 3600))

    @property
    def RESPONSE_CACHE_SHARED(self) -> bool:
        """Whether cached answers are shared across callers (off: each caller's own)."""
        return bool(_get("COPILOTEDGE_RESPONSE_CACHE_SHARED", False))


settings = Settings()
