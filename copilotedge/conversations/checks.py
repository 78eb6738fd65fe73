"""Checks of the conversation and WebSocket consumer settings, and of the database they are
stored in: copilotedge.E030-E039, W030-W039."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any
from urllib.parse import parse_qs, urlsplit

from django.core.checks import CheckMessage, Error, Warning

from copilotedge.conf import settings

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
                hint='Add a "default" layer to CHANNEL_LAYERS in your settings: '
                '"channels_redis.core.RedisChannelLayer" (pip install "copilotedge[redis]") '
                "when the site runs more than one process, else "
                '"channels.layers.InMemoryChannelLayer".',
                id="copilotedge.W030",
            )
        )
    errors.extend(_check_redis_read_timeout(layers))
    errors.extend(check_sqlite(getattr(django_settings, "DATABASES", None) or {}))
    return errors


def check_sqlite(databases: dict[str, Any]) -> list[CheckMessage]:
    """W032: a SQLite database whose transactions begin deferred.

    Streams write from several threads at once (the requests' and the writer of
    conversations and the ledger); a deferred transaction that must become a write while
    another commits fails at once with "database is locked".
    """
    warnings: list[CheckMessage] = []
    for alias, database in databases.items():
        if not str(database.get("ENGINE", "")).endswith("sqlite3"):
            continue
        options = database.get("OPTIONS") or {}
        if str(options.get("transaction_mode", "")).upper() in ("IMMEDIATE", "EXCLUSIVE"):
            continue
        warnings.append(
            Warning(
                f"The SQLite database {alias!r} begins its transactions deferred: concurrent "
                'streams\' writes will now and then fail with "database is locked".',
                hint=f'In DATABASES["{alias}"]["OPTIONS"] of your settings, set '
                '"transaction_mode": "IMMEDIATE" and a "timeout" (say 20); with '
                '"init_command": "PRAGMA journal_mode=WAL;" readers run beside the writer.',
                id="copilotedge.W032",
            )
        )
    return warnings


#: channels-redis blocks this long (BZPOPMIN) waiting for a message, per read.
_LAYER_BLOCK_SECONDS = 5


def _check_redis_read_timeout(layers: dict[str, Any]) -> list[CheckMessage]:
    """redis-py 8 reads with a 5-s default timeout: a channels-redis consumer that gets
    no message for 5 s then fails (django/channels_redis#422), so every idle WebSocket
    drops. A host must say how long a read may wait."""
    try:
        major = int(version("redis").split(".")[0])
    except (PackageNotFoundError, ValueError):
        return []
    if major < 8:
        return []
    errors: list[CheckMessage] = []
    for alias, layer in layers.items():
        # The pub/sub layer polls rather than blocks, so only the core layer is at risk.
        if not str(layer.get("BACKEND", "")).startswith("channels_redis.core."):
            continue
        # No hosts: channels-redis connects to localhost with the defaults.
        hosts = (layer.get("CONFIG") or {}).get("hosts") or ["redis://localhost:6379"]
        if any(_reads_too_briefly(host) for host in hosts):
            errors.append(
                Warning(
                    f"CHANNEL_LAYERS[{alias!r}] reaches Redis with redis-py {major}'s "
                    f"read timeout (5 s by default): a WebSocket with no message for "
                    f"{_LAYER_BLOCK_SECONDS} s fails and disconnects.",
                    hint=f'In CHANNEL_LAYERS[{alias!r}]["CONFIG"]["hosts"] in your settings, '
                    'give each host a longer read timeout: {"address": "redis://…", '
                    '"socket_timeout": None}.',
                    id="copilotedge.W031",
                )
            )
    return errors


def _reads_too_briefly(host: Any) -> bool:
    if isinstance(host, str):
        values = parse_qs(urlsplit(host).query).get("socket_timeout")
        timeout: Any = values[-1] if values else 0
    elif isinstance(host, dict):
        timeout = host.get("socket_timeout", 0)
    else:  # a (host, port) pair: redis-py's defaults
        timeout = 0
    if timeout is None:
        return False
    try:
        return float(timeout) <= _LAYER_BLOCK_SECONDS
    except (TypeError, ValueError):
        return False  # not ours to judge; redis-py reports it
