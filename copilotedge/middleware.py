"""``RateLimitMiddleware``: the request limit and the ``x-ratelimit-*`` headers for the app's URLs.

Thin over :mod:`copilotedge.ratelimit`, and dual-mode like django-cors-headers: it runs
async under ASGI and sync under WSGI with the same helpers. It only looks at URLs of the
``copilotedge`` namespace (others pass untouched), authenticates the caller with
:func:`~copilotedge.auth.aauthenticate` (which caches the principal on the request, so
the view does not authenticate twice) and counts one request. A request that fails to
authenticate is counted against its IP address and passes on to the view, which answers
401: so guessing keys is rate limited too, and every answer carries the headers. Place
it after ``AuthenticationMiddleware``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import cast

from asgiref.sync import async_to_sync, iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.urls import Resolver404, resolve

from copilotedge import ratelimit
from copilotedge.auth import Principal, aauthenticate, client_ip
from copilotedge.exceptions import CopilotEdgeError
from copilotedge.views import error_response

NAMESPACE = "copilotedge"


def applies_to(request: HttpRequest) -> bool:
    """Whether ``request`` is for one of the app's own views (and not an exempt one)."""
    try:
        match = resolve(request.path_info, getattr(request, "urlconf", None))
    except Resolver404:
        return False
    if NAMESPACE not in match.app_names:
        return False
    return not getattr(match.func, "copilotedge_ratelimit_exempt", False)


async def principal_of(request: HttpRequest) -> Principal:
    try:
        return await aauthenticate(request)
    except CopilotEdgeError:
        # The view gives the same 401/403 answer; the attempt counts against the address.
        return Principal(ip=client_ip(request))


def finalize(response: HttpResponseBase, tracked: ratelimit.Tracked) -> HttpResponseBase:
    if tracked.decision is not None:
        for name, value in tracked.decision.headers().items():
            response[name] = value
    return response


GetResponse = Callable[[HttpRequest], HttpResponseBase | Awaitable[HttpResponseBase]]


class RateLimitMiddleware:
    """Counts each request to the app against its caller and adds the limit headers."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(self.get_response)
        if self.async_mode:
            # Mark the instance as async so Django awaits it and keeps the chain async.
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponseBase | Awaitable[HttpResponseBase]:
        if self.async_mode:
            return self.__acall__(request)
        if not applies_to(request):
            return self.get_response(request)
        with ratelimit.tracking() as tracked:
            principal = async_to_sync(principal_of)(request)
            decision = ratelimit.check_request(principal)
            if decision.error is not None:
                return finalize(error_response(decision.error), tracked)
            response = cast(HttpResponseBase, self.get_response(request))
        return finalize(response, tracked)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        get_response = cast(Callable[[HttpRequest], Awaitable[HttpResponseBase]], self.get_response)
        if not applies_to(request):
            return await get_response(request)
        with ratelimit.tracking() as tracked:
            principal = await principal_of(request)
            decision = await ratelimit.acheck_request(principal)
            if decision.error is not None:
                return finalize(error_response(decision.error), tracked)
            response = await get_response(request)
        return finalize(response, tracked)
