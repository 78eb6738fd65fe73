"""The demo lists Django's middlewares by their own names, and they do their work."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.contrib.auth import get_user_model
from django.http import HttpRequest, HttpResponse
from django.test import AsyncClient, override_settings
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from tests.servers import ROOT

DJANGO_STANDARD = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]


def demo_setting(expression: str) -> str:
    """``expression`` evaluated in the demo's own settings module, with no environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "COPILOTEDGE_"))}
    code = f"import project.settings as s; print({expression})"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_demo_lists_djangos_middlewares_by_name_and_silences_no_check() -> None:
    listed = demo_setting("'\\n'.join(s.MIDDLEWARE)").splitlines()
    assert [name for name in listed if name.startswith("django.")] == DJANGO_STANDARD
    assert listed.index("copilotedge.middleware.RateLimitMiddleware") > listed.index(
        "django.contrib.auth.middleware.AuthenticationMiddleware"
    )
    assert demo_setting("getattr(s, 'SILENCED_SYSTEM_CHECKS', [])") == "[]"


DEMO = [  # the demo's, without static files
    *DJANGO_STANDARD,
    "copilotedge.middleware.RateLimitMiddleware",
]


@csrf_exempt
async def api(request: HttpRequest) -> HttpResponse:
    return HttpResponse("answered")


urlpatterns = [path("api", api)]


# Transactional: the async ORM writes from another thread, which a test-wide transaction
# begun as a write (SQLite's IMMEDIATE, as the suite sets it) would lock out.
@pytest.mark.django_db(transaction=True)
@override_settings(MIDDLEWARE=DEMO)
async def test_the_demo_middleware_keeps_the_admin_secure_and_signed_in() -> None:
    await get_user_model().objects.acreate_superuser("admin", "a@example.com", "pw-admin-1")
    client = AsyncClient(enforce_csrf_checks=True)

    page = await client.get("/admin/login/")
    assert page.status_code == 200
    assert page["X-Frame-Options"] == "DENY"
    assert page["X-Content-Type-Options"] == "nosniff"
    token = page.cookies["csrftoken"].value

    refused = await client.post("/admin/login/", {"username": "admin", "password": "pw-admin-1"})
    assert refused.status_code == 403  # no CSRF token

    signed_in = await client.post(
        "/admin/login/",
        {"username": "admin", "password": "pw-admin-1", "csrfmiddlewaretoken": token},
    )
    assert signed_in.status_code == 302
    assert (await client.get("/admin/")).status_code == 200
    # CommonMiddleware: a URL without its slash is redirected to it.
    assert (await client.get("/admin")).status_code == 301


@override_settings(
    ROOT_URLCONF=__name__,
    MIDDLEWARE=DEMO,
    SECURE_SSL_REDIRECT=True,
    SECURE_HSTS_SECONDS=3600,
)
async def test_the_security_middleware_redirects_and_sets_headers() -> None:
    redirected = await AsyncClient().get("/api")
    assert redirected.status_code == 301
    assert redirected["Location"] == "https://testserver/api"
    answered = await AsyncClient().post("/api", secure=True)
    assert answered.content == b"answered"
    assert answered["X-Content-Type-Options"] == "nosniff"
    assert answered["Strict-Transport-Security"] == "max-age=3600"
