"""System checks of where ``RateLimitMiddleware`` sits in ``MIDDLEWARE`` (W012, E013)."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from copilotedge.checks import check_settings
from copilotedge.middleware import RateLimitMiddleware

SESSION = "django.contrib.sessions.middleware.SessionMiddleware"
AUTH = "django.contrib.auth.middleware.AuthenticationMiddleware"
LIMITER = "copilotedge.middleware.RateLimitMiddleware"
MESSAGES = "django.contrib.messages.middleware.MessageMiddleware"  # the admin needs it


class SiteRateLimitMiddleware(RateLimitMiddleware):
    """A site's own subclass counts as the limiter."""


def middleware_messages(middleware: list[str]) -> list[tuple[str, str, str]]:
    with override_settings(MIDDLEWARE=middleware):
        return [
            (m.id or "", m.msg, m.hint or "")
            for m in check_settings()
            if m.id in ("copilotedge.W012", "copilotedge.E013")
        ]


def test_the_limiter_after_authentication_is_clean() -> None:
    assert middleware_messages([SESSION, AUTH, LIMITER, MESSAGES]) == []
    subclass = f"{__name__}.SiteRateLimitMiddleware"
    assert middleware_messages([SESSION, AUTH, subclass, MESSAGES]) == []


def test_a_missing_limiter_is_w012_naming_middleware() -> None:
    ((check_id, message, hint),) = middleware_messages([SESSION, AUTH, MESSAGES])
    assert check_id == "copilotedge.W012"
    assert "not rate limited" in message
    assert "MIDDLEWARE" in hint and LIMITER in hint and AUTH in hint
    with override_settings(MIDDLEWARE=[SESSION, AUTH, MESSAGES]):
        output = StringIO()
        call_command("check", stdout=output, stderr=output)
    assert "copilotedge.W012" in output.getvalue()


@pytest.mark.parametrize(
    "middleware",
    [[SESSION, LIMITER, AUTH, MESSAGES], [SESSION, LIMITER, MESSAGES]],
    ids=["before", "no-auth"],
)
def test_a_limiter_before_authentication_is_e013(middleware: list[str]) -> None:
    ((check_id, message, hint),) = middleware_messages(middleware)
    assert check_id == "copilotedge.E013"
    assert "must come after" in message
    assert "MIDDLEWARE" in hint
    with (
        override_settings(MIDDLEWARE=middleware),
        pytest.raises(SystemCheckError, match=r"copilotedge\.E013"),
    ):
        call_command("check")
