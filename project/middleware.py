"""Django's sync-only middlewares, run as one: a thread hop per phase, not per middleware.

Under ASGI, Django runs each ``MiddlewareMixin`` hook (``process_request``,
``process_view``, ``process_response``) in a thread of its own request, one hop there
and back per hook: the session, common, CSRF, auth, message and clickjacking
middlewares make eleven hops a request, 0.1 to 0.2 ms each on a busy two-core machine,
most of them before a streamed answer's first byte. :class:`SyncGroup` runs a list
of them in three hops (request, view, response) with the same order and the same
outcomes as when each is in ``MIDDLEWARE`` on its own:

* ``process_request`` hooks run first to last; one that returns a response ends the
  request phase, and only the hooks already entered see that response on the way out;
* ``process_view``, ``process_template_response`` and ``process_exception`` run as
  Django runs them, in ``MIDDLEWARE`` order (view) or its reverse (the others);
* an exception in a hook becomes its response (:func:`response_for_exception`, as
  Django's handler converts it around each middleware), which the middlewares listed
  before it then see.

A group that knows its members can do better still, and run a phase on the event loop, no
hop at all, when none of its hooks will wait on I/O this time: :class:`SecurityGroup`
(Django's security middleware) never waits, :class:`SiteMiddleware` (the rest of Django's
standard ones) only for the session store or a form.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar

from asgiref.sync import markcoroutinefunction, sync_to_async
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, MiddlewareNotUsed
from django.core.handlers.exception import response_for_exception
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.utils.deprecation import MiddlewareMixin
from django.utils.module_loading import import_string

SAFE_METHODS = ("GET", "HEAD", "OPTIONS", "TRACE")  # as CsrfViewMiddleware has them
GetResponse = Callable[[HttpRequest], Awaitable[HttpResponseBase]]


def _unused(request: HttpRequest) -> HttpResponseBase:  # pragma: no cover - never called
    raise AssertionError("a grouped middleware's hooks are called by the group")


class SyncGroup:
    """The middlewares named in :attr:`middleware`, as one async middleware.

    Only ``MiddlewareMixin`` middlewares can be grouped: their whole work is in their
    hooks. One that raises ``MiddlewareNotUsed`` is left out, as Django leaves it out.
    """

    middleware: ClassVar[Sequence[str]] = ()
    sync_capable = False
    async_capable = True

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response
        markcoroutinefunction(self)
        self.members: list[Any] = []
        for path in self.middleware:
            factory = import_string(path)
            plain = isinstance(factory, type) and issubclass(factory, MiddlewareMixin)
            if not plain or factory.__call__ is not MiddlewareMixin.__call__:
                raise ImproperlyConfigured(
                    f"{path} is not a plain MiddlewareMixin: list it in MIDDLEWARE itself."
                )
            try:
                self.members.append(factory(_unused))
            except MiddlewareNotUsed:
                continue
        self._request = sync_to_async(self.request_phase, thread_sensitive=True)
        self._response = sync_to_async(self.response_phase, thread_sensitive=True)
        self._view = sync_to_async(self.view_phase, thread_sensitive=True)
        # Django calls (and hops to the thread for) a hook the group has: only offer those
        # a member has.
        if self._hooks("process_view"):
            self.process_view = self._process_view
        if self._hooks("process_template_response"):
            self.process_template_response = self._process_template_response
        if self._hooks("process_exception"):
            self.process_exception = self._process_exception

    def _hooks(self, name: str, members: Sequence[Any] | None = None) -> list[Any]:
        members = self.members if members is None else members
        return [hook for member in members if (hook := getattr(member, name, None))]

    async def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if self.request_waits(request):
            entered, response = await self._request(request)
        else:
            entered, response = self.request_phase(request)
        if response is None:
            response = await self.get_response(request)
        if self.response_waits(request, response):
            return await self._response(request, response, entered)
        return self.response_phase(request, response, entered)

    # Whether a phase's hooks may wait on I/O this time (a database, a file, the network),
    # so that it must run in the request's thread. A group can only know that of members it
    # knows: by default, every phase does.

    def request_waits(self, request: HttpRequest) -> bool:
        return True

    def view_waits(self, request: HttpRequest, view: Callable[..., Any]) -> bool:
        return True

    def response_waits(self, request: HttpRequest, response: HttpResponseBase) -> bool:
        return True

    def request_phase(self, request: HttpRequest) -> tuple[int, HttpResponseBase | None]:
        """How many members were entered, and the response one of them answered with."""
        for index, member in enumerate(self.members):
            hook = getattr(member, "process_request", None)
            if hook is None:
                continue
            try:
                response = hook(request)
            except Exception as error:
                return index, response_for_exception(request, error)
            if response is not None:
                return index + 1, response
        return len(self.members), None

    def response_phase(
        self, request: HttpRequest, response: HttpResponseBase, entered: int
    ) -> HttpResponseBase:
        for hook in reversed(self._hooks("process_response", self.members[:entered])):
            try:
                response = hook(request, response)
            except Exception as error:
                response = response_for_exception(request, error)
        return response

    async def _process_view(
        self,
        request: HttpRequest,
        view: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> HttpResponseBase | None:
        if self.view_waits(request, view):
            return await self._view(request, view, args, kwargs)
        return self.view_phase(request, view, args, kwargs)

    def view_phase(
        self,
        request: HttpRequest,
        view: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> HttpResponseBase | None:
        for hook in self._hooks("process_view"):
            response: HttpResponseBase | None = hook(request, view, args, kwargs)
            if response is not None:
                return response
        return None

    def _process_template_response(self, request: HttpRequest, response: Any) -> Any:
        for hook in reversed(self._hooks("process_template_response")):
            response = hook(request, response)
            if response is None:
                raise ValueError(
                    f"{hook.__qualname__} didn't return an HttpResponse object. "
                    "It returned None instead."
                )
        return response

    def _process_exception(self, request: HttpRequest, error: Exception) -> Any:
        for hook in reversed(self._hooks("process_exception")):
            if (response := hook(request, error)) is not None:
                return response
        return None


class SiteMiddleware(SyncGroup):
    """Django's standard middlewares after security and static files: what the admin and
    the chat page need (see :mod:`project.checks` for the checks that look for them).

    Their hooks read the request and set headers; only the session store waits on I/O
    (and a form being read, which for uploads writes files). So a phase runs on the event
    loop unless it may touch the store or a form this time: an API call (a bearer key, no
    session, no form) makes no hop, a sign-in or a saved message does, as before. Django's
    ORM refuses to run on the event loop, so a mistake here fails loudly, not slowly.
    """

    middleware = (
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "django.contrib.messages.middleware.MessageMiddleware",
        "django.middleware.clickjacking.XFrameOptionsMiddleware",
    )

    def request_waits(self, request: HttpRequest) -> bool:
        return bool(settings.CSRF_USE_SESSIONS)  # the CSRF secret is read from the session

    def view_waits(self, request: HttpRequest, view: Callable[..., Any]) -> bool:
        if settings.CSRF_USE_SESSIONS:
            return True
        # The CSRF check of an unsafe method reads the form.
        return request.method not in SAFE_METHODS and not getattr(view, "csrf_exempt", False)

    def response_waits(self, request: HttpRequest, response: HttpResponseBase) -> bool:
        if settings.CSRF_USE_SESSIONS:
            return True
        session = getattr(request, "session", None)
        if session is not None and session.accessed and session.modified:
            return True  # it is saved
        if session is not None and session.accessed and settings.SESSION_SAVE_EVERY_REQUEST:
            return True
        # Messages read or added are stored again, those that do not fit a cookie in the
        # session.
        messages = getattr(request, "_messages", None)
        return messages is not None and bool(messages.used or messages.added_new)


class SecurityGroup(SyncGroup):
    """Django's ``SecurityMiddleware``, first: it redirects to HTTPS and sets headers from
    settings, and never waits on I/O, so it runs on the event loop (Django's own handler
    would make two thread hops a request for it)."""

    middleware = ("django.middleware.security.SecurityMiddleware",)

    def request_waits(self, request: HttpRequest) -> bool:
        return False

    def response_waits(self, request: HttpRequest, response: HttpResponseBase) -> bool:
        return False
