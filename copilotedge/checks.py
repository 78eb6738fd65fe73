"""System checks: every misconfiguration has a stable id, so ``manage.py check`` tells.

Each concern's checks live next to its code and keep their own range of ids:
:mod:`copilotedge.upstream.checks`, :mod:`copilotedge.ratelimit.checks`,
:mod:`copilotedge.copilotkit.checks`, :mod:`copilotedge.conversations.checks`,
:mod:`copilotedge.usage.checks`, :mod:`copilotedge.chat.checks` and
:mod:`copilotedge.tools.checks`. :func:`register_checks` (called from ``ready()``) registers
each with the ``copilotedge`` tag and Django's own tag where one fits, so
``manage.py check --tag copilotedge`` runs only these.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from django.core import checks
from django.core.checks import CheckMessage, Tags

from copilotedge.chat.checks import check_asgi
from copilotedge.conversations.checks import check_conversation_settings
from copilotedge.copilotkit.checks import check_agents, check_graphql_limits
from copilotedge.lifecycle import check_lifecycle
from copilotedge.ratelimit.checks import check_middleware, check_rate_limits
from copilotedge.tools.checks import check_tool_settings
from copilotedge.upstream.checks import check_reliability, check_upstream
from copilotedge.usage.checks import check_usage

TAG = "copilotedge"

#: Each concern's check, with the Django tags it belongs under besides ``copilotedge``.
CONCERNS: tuple[tuple[Callable[[], Iterable[CheckMessage]], tuple[str, ...]], ...] = (
    (check_upstream, ()),
    (check_reliability, (Tags.caches,)),
    (check_rate_limits, (Tags.caches,)),
    (check_middleware, ()),
    (check_agents, ()),
    (check_graphql_limits, ()),
    (check_conversation_settings, ()),
    (check_usage, ()),
    (check_lifecycle, ()),
    (check_asgi, ()),
    (check_tool_settings, ()),
)


def _as_django_check(check: Callable[[], Iterable[CheckMessage]]) -> Callable[..., Any]:
    def run(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
        return list(check())

    run.__name__ = run.__qualname__ = check.__name__
    run.__doc__ = check.__doc__
    return run


def register_checks() -> None:
    for check, tags in CONCERNS:
        checks.register(_as_django_check(check), TAG, *tags)


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Every copilotedge check's messages (what ``manage.py check --tag copilotedge`` shows)."""
    return [message for check, _ in CONCERNS for message in check()]
