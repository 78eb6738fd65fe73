"""The demo's checks: dev-only defaults with DEBUG off, and what its grouped middlewares hide."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Warning
from django.core.checks.security import base, csrf
from django.test.utils import override_settings
from django.utils.module_loading import import_string

from .middleware import SyncGroup


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


#: Django's deploy checks that look for a middleware by its name in MIDDLEWARE. (Those that
#: say one is missing are silenced in settings: they cannot see into a group.)
NAMED_MIDDLEWARE_CHECKS = (
    base.check_sts,
    base.check_sts_include_subdomains,
    base.check_sts_preload,
    base.check_content_type_nosniff,
    base.check_ssl_redirect,
    base.check_xframe_deny,
    base.check_referrer_policy,
    base.check_cross_origin_opener_policy,
    csrf.check_csrf_cookie_secure,
)


def listed_middleware() -> list[str]:
    """MIDDLEWARE with each :class:`~project.middleware.SyncGroup`'s members in its place."""
    listed: list[str] = []
    for path in settings.MIDDLEWARE:
        factory = import_string(path)
        grouped = isinstance(factory, type) and issubclass(factory, SyncGroup)
        listed.extend(factory.middleware if grouped else [path])
    return listed


def check_grouped_middleware(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Django's deploy checks of the middlewares the demo runs in groups.

    Django finds the security, CSRF and clickjacking middlewares by name in MIDDLEWARE,
    so it checks nothing of their settings when they run in a group; this runs those
    checks with the groups' members listed instead. (``check --deploy`` runs once, in
    one thread: the override is not seen by anything else.)
    """
    listed = listed_middleware()
    if listed == list(settings.MIDDLEWARE):
        return []
    with override_settings(MIDDLEWARE=listed):
        return [message for check in NAMED_MIDDLEWARE_CHECKS for message in check(app_configs)]
