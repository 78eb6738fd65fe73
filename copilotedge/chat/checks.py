"""Checks of how the site serves streamed answers: copilotedge.W060."""

from __future__ import annotations

from collections.abc import Iterable

from django.conf import settings as django_settings
from django.core.checks import CheckMessage, Warning


def check_asgi() -> Iterable[CheckMessage]:
    """``ASGI_APPLICATION`` is set: streamed answers and the WebSocket need an ASGI server.

    Under WSGI (``runserver`` without daphne, gunicorn's sync workers) a streamed request
    is refused with 501 ``asgi_required`` and the WebSocket is not served at all.
    """
    if not getattr(django_settings, "ASGI_APPLICATION", None):
        yield Warning(
            "ASGI_APPLICATION is not set: streamed answers and the WebSocket need an ASGI "
            "server, and under WSGI (runserver without daphne) a streamed request is "
            "refused with 501 asgi_required.",
            hint='In your settings, set ASGI_APPLICATION = "mysite.asgi.application" (your '
            'asgi.py) and put "daphne" first in INSTALLED_APPS, so runserver serves ASGI; '
            "in production run an ASGI server (daphne, uvicorn).",
            id="copilotedge.W060",
        )
