"""Every misconfiguration as a system check with a stable id, so ``manage.py check`` tells.

:func:`check_settings` is the one check registered (in ``apps.py``); each concern's
checks live in a ``checks_<concern>`` module and keep their own range of ids.
"""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage

from copilotedge.conversations.checks import check_conversation_settings
from copilotedge.copilotkit.checks import check_agents
from copilotedge.lifecycle import check_lifecycle
from copilotedge.ratelimit.checks import check_rate_limits
from copilotedge.upstream.checks import check_upstream
from copilotedge.upstream.checks_reliability import check_reliability
from copilotedge.usage.checks import check_usage

# check_reliability and check_conversation_settings were defined here; tests import them.
__all__ = ["check_conversation_settings", "check_reliability", "check_settings"]


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    errors = check_upstream()
    errors.extend(check_rate_limits())
    errors.extend(check_agents())
    errors.extend(check_reliability())
    errors.extend(check_conversation_settings())
    errors.extend(check_usage())
    errors.extend(check_lifecycle())
    return errors
