"""The demo's grouped middlewares behave as if each were listed in MIDDLEWARE."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.checks.security import base, csrf
from django.core.exceptions import ImproperlyConfigured, MiddlewareNotUsed, PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.test import AsyncClient, RequestFactory, override_settings
from django.utils.deprecation import MiddlewareMixin

from project.checks import check_grouped_middleware
from project.middleware import SyncGroup

SITE = [  # the demo's, without static files
    "django.middleware.security.SecurityMiddleware",
    "project.middleware.SiteMiddleware",
    "copilotedge.middleware.RateLimitMiddleware",
]
LOG: list[str] = []
THREADS: set[int] = set()


class Recording(MiddlewareMixin):
    """Logs its hooks; ``answers`` (request/view) and ``raises`` (request/response) steer it."""

    name = ""
    answers: str = ""
    raises: str = ""

    def _hook(self, phase: str) -> HttpResponse | None:
        LOG.append(f"{self.name}.{phase}")
        THREADS.add(threading.get_ident())
        if self.raises == phase:
            raise PermissionDenied
        return HttpResponse(f"from {self.name}") if self.answers == phase else None

    def process_request(self, request: HttpRequest) -> HttpResponse | None:
        return self._hook("request")

    def process_view(self, request: HttpRequest, *args: Any) -> HttpResponse | None:
        return self._hook("view")

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        self._hook("response")
        response[f"X-Seen-By-{self.name}"] = "1"
        return response


def recording(name: str, answers: str = "", raises: str = "") -> type[Recording]:
    return type(name, (Recording,), {"name": name.lower(), "answers": answers, "raises": raises})


First = recording("First")
Second = recording("Second")
Third = recording("Third")
SecondAnswers = recording("Second", answers="request")
SecondRaisesOnRequest = recording("Second", raises="request")
SecondRaisesOnResponse = recording("Second", raises="response")
SecondAnswersView = recording("Second", answers="view")


class NotUsed(MiddlewareMixin):
    def __init__(self, get_response: Any) -> None:
        raise MiddlewareNotUsed


class AsyncOnly:
    async_capable = True
    sync_capable = False

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response


def group(*names: str) -> SyncGroup:
    async def view(request: HttpRequest) -> HttpResponse:
        LOG.append("view")
        return HttpResponse("from the view")

    members = tuple(f"{__name__}.{name}" for name in names)
    return type("Group", (SyncGroup,), {"middleware": members})(view)


@pytest.fixture(autouse=True)
def _clear_log() -> None:
    LOG.clear()
    THREADS.clear()


async def test_hooks_run_in_order_around_the_response_off_the_event_loop() -> None:
    response = await group("First", "Second", "Third")(RequestFactory().get("/"))
    assert response.content == b"from the view"
    assert LOG == [
        "first.request", "second.request", "third.request", "view",
        "third.response", "second.response", "first.response",
    ]  # fmt: skip
    # Hooks may query the database: they run in a worker thread, as Django runs them.
    assert threading.get_ident() not in THREADS


async def test_an_early_response_skips_the_rest_and_goes_back_out() -> None:
    response = await group("First", "SecondAnswers", "Third")(RequestFactory().get("/"))
    assert response.content == b"from second"
    assert LOG == ["first.request", "second.request", "second.response", "first.response"]


async def test_an_exception_in_a_request_hook_becomes_its_response() -> None:
    response = await group("First", "SecondRaisesOnRequest", "Third")(RequestFactory().get("/"))
    assert response.status_code == 403
    assert LOG == ["first.request", "second.request", "first.response"]
    assert response.has_header("X-Seen-By-first")


async def test_an_exception_in_a_response_hook_becomes_the_response_seen_before_it() -> None:
    response = await group("First", "SecondRaisesOnResponse")(RequestFactory().get("/"))
    assert response.status_code == 403
    assert LOG[-2:] == ["second.response", "first.response"]
    assert response.has_header("X-Seen-By-first")
    assert not response.has_header("X-Seen-By-second")


async def test_view_hooks_run_in_order_and_the_first_answer_wins() -> None:
    middleware = group("First", "SecondAnswersView", "Third")
    answer = middleware.process_view(RequestFactory().get("/"), lambda r: None, (), {})
    assert answer is not None and answer.content == b"from second"
    assert LOG == ["first.view", "second.view"]


def test_a_middleware_whose_work_is_not_in_its_hooks_cannot_be_grouped() -> None:
    with pytest.raises(ImproperlyConfigured, match="AsyncOnly"):
        group("First", "AsyncOnly")


async def test_a_middleware_not_used_is_left_out_and_the_rest_run() -> None:
    middleware = group("First", "NotUsed", "Second")
    await middleware(RequestFactory().get("/"))
    assert LOG == ["first.request", "second.request", "view", "second.response", "first.response"]


def test_only_hooks_a_member_has_are_offered_to_django() -> None:
    # Django calls each offered hook through a thread hop, so an empty one would cost one.
    middleware = group("First")
    assert hasattr(middleware, "process_view")
    assert not hasattr(middleware, "process_template_response")
    assert not hasattr(middleware, "process_exception")


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"CSRF_COOKIE_SECURE": True, "X_FRAME_OPTIONS": "DENY"}, []),
        ({"CSRF_COOKIE_SECURE": False, "X_FRAME_OPTIONS": "DENY"}, [csrf.W016]),
        ({"CSRF_COOKIE_SECURE": True, "X_FRAME_OPTIONS": "SAMEORIGIN"}, [base.W019]),
        ({"CSRF_COOKIE_SECURE": False, "CSRF_USE_SESSIONS": True}, []),
    ],
)
def test_the_deploy_checks_the_group_hides_are_still_given(
    settings: dict[str, Any], expected: list[Any]
) -> None:
    with override_settings(MIDDLEWARE=SITE, **settings):
        assert check_grouped_middleware() == expected


@override_settings(MIDDLEWARE=SITE)
async def test_the_site_group_keeps_the_admin_secure_and_signed_in(db: None) -> None:
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
