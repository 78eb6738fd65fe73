"""The demo's checks: dev-only defaults with DEBUG off."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Warning


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
