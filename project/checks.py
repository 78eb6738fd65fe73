"""The demo's checks: dev-only defaults with DEBUG off, and what its grouped middlewares hide."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Warning
from django.core.checks.security import base, csrf


def check_production_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    from .settings import DEV_SECRET_KEY

    if settings.DEBUG or settings.SECRET_KEY != DEV_SECRET_KEY:
        return []
    return [
        Warning(
            "DJANGO_DEBUG is off but DJANGO_SECRET_KEY is the demo's dev-only value.",
            hint="Set DJANGO_SECRET_KEY to a long random secret.",
            id="project.W001",
        )
    ]


def check_grouped_middleware(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Django's deploy warnings about the CSRF cookie and X-Frame-Options.

    Django gives them only when it finds the CSRF and clickjacking middlewares in
    MIDDLEWARE by name; the demo runs them inside ``SiteMiddleware``.
    """
    if "project.middleware.SiteMiddleware" not in settings.MIDDLEWARE:
        return []
    messages: list[CheckMessage] = []
    if not settings.CSRF_USE_SESSIONS and settings.CSRF_COOKIE_SECURE is not True:
        messages.append(csrf.W016)
    if settings.X_FRAME_OPTIONS != "DENY":
        messages.append(base.W019)
    return messages
