"""The demo's grouped middlewares behave as if each were listed in MIDDLEWARE."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.core.checks.security import base, csrf
from django.core.exceptions import ImproperlyConfigured, MiddlewareNotUsed, PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.test import AsyncClient, RequestFactory, override_settings
from django.urls import path
from django.utils.deprecation import MiddlewareMixin
from django.views.decorators.csrf import csrf_exempt

from project.checks import check_grouped_middleware
from project.middleware import SecurityGroup, SiteMiddleware, SyncGroup

SITE = [  # the demo's, without static files
    "project.middleware.SecurityGroup",
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
    answer = await middleware.process_view(RequestFactory().get("/"), lambda r: None, (), {})
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


SECURE = {  # settings that pass every deploy check of the grouped middlewares
    "CSRF_COOKIE_SECURE": True,
    "X_FRAME_OPTIONS": "DENY",
    "SECURE_HSTS_SECONDS": 31_536_000,
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": True,
    "SECURE_HSTS_PRELOAD": True,
    "SECURE_SSL_REDIRECT": True,
}


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, []),
        ({"CSRF_COOKIE_SECURE": False}, [csrf.W016]),
        ({"X_FRAME_OPTIONS": "SAMEORIGIN"}, [base.W019]),
        ({"CSRF_COOKIE_SECURE": False, "CSRF_USE_SESSIONS": True}, []),
        ({"SECURE_HSTS_SECONDS": 0}, [base.W004]),
        ({"SECURE_SSL_REDIRECT": False}, [base.W008]),
        ({"SECURE_CONTENT_TYPE_NOSNIFF": False}, [base.W006]),
        ({"SECURE_REFERRER_POLICY": None}, [base.W022]),
    ],
)
def test_the_deploy_checks_the_group_hides_are_still_given(
    settings: dict[str, Any], expected: list[Any]
) -> None:
    with override_settings(MIDDLEWARE=SITE, **{**SECURE, **settings}):
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


WHERE: dict[str, int] = {}


class Where(MiddlewareMixin):
    """Notes the thread each phase of the group ran in."""

    def process_request(self, request: HttpRequest) -> None:
        WHERE["request"] = threading.get_ident()

    def process_view(self, request: HttpRequest, *args: Any) -> None:
        WHERE["view"] = threading.get_ident()

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        WHERE["response"] = threading.get_ident()
        return response


class WatchedSite(SiteMiddleware):
    middleware = (*SiteMiddleware.middleware, f"{__name__}.Where")


@csrf_exempt
async def api(request: HttpRequest) -> HttpResponse:
    return HttpResponse("answered")


async def form(request: HttpRequest) -> HttpResponse:
    return HttpResponse("posted")


async def remember(request: HttpRequest) -> HttpResponse:
    await request.session.aset("seen", "yes")
    return HttpResponse("remembered")


async def recall(request: HttpRequest) -> HttpResponse:
    return HttpResponse(await request.session.aget("seen", "no"))


async def notify(request: HttpRequest) -> HttpResponse:
    messages.info(request, "Saved.")
    return HttpResponse("noted")


urlpatterns = [
    path("api", api),
    path("form", form),
    path("remember", remember),
    path("recall", recall),
    path("notify", notify),
]
watched = override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=[f"{__name__}.WatchedSite"])


def on_the_loop() -> dict[str, bool]:
    here = threading.get_ident()  # the test runs on the loop the client's handler runs on
    return {phase: ident == here for phase, ident in WHERE.items()}


@watched
async def test_an_api_call_makes_no_thread_hop() -> None:
    WHERE.clear()
    response = await AsyncClient().post("/api", {}, content_type="application/json")
    assert response.content == b"answered"
    assert on_the_loop() == {"request": True, "view": True, "response": True}
    assert response["X-Frame-Options"] == "DENY"  # the members still did their work


@watched
async def test_a_form_the_csrf_check_reads_is_read_in_a_thread() -> None:
    WHERE.clear()
    await AsyncClient().post("/form", {"field": "value"})
    assert on_the_loop() == {"request": True, "view": False, "response": True}


@watched
async def test_a_changed_session_is_saved_in_a_thread(db: None) -> None:
    client = AsyncClient()
    WHERE.clear()
    await client.get("/remember")
    assert on_the_loop()["response"] is False
    WHERE.clear()
    assert (await client.get("/recall")).content == b"yes"
    assert on_the_loop()["response"] is True  # read, not changed: nothing to save


@watched
async def test_a_new_message_is_stored_in_a_thread() -> None:
    WHERE.clear()
    response = await AsyncClient().get("/notify")
    assert on_the_loop()["response"] is False
    assert "messages" in response.cookies


@watched
@override_settings(CSRF_USE_SESSIONS=True)
async def test_with_the_csrf_secret_in_the_session_every_phase_runs_in_a_thread(db: None) -> None:
    WHERE.clear()
    await AsyncClient().post("/api", {}, content_type="application/json")
    assert on_the_loop() == {"request": False, "view": False, "response": False}


class WatchedSecurity(SecurityGroup):
    middleware = (*SecurityGroup.middleware, f"{__name__}.Where")


@override_settings(
    ROOT_URLCONF=__name__,
    MIDDLEWARE=[f"{__name__}.WatchedSecurity"],
    SECURE_SSL_REDIRECT=True,
    SECURE_HSTS_SECONDS=3600,
)
async def test_the_security_group_redirects_and_sets_headers_on_the_event_loop() -> None:
    WHERE.clear()
    redirected = await AsyncClient().get("/api")
    assert redirected.status_code == 301
    assert redirected["Location"] == "https://testserver/api"
    answered = await AsyncClient().post("/api", secure=True)
    assert answered["X-Content-Type-Options"] == "nosniff"
    assert answered["Strict-Transport-Security"] == "max-age=3600"
    where = on_the_loop()
    assert where["request"] and where["response"]
