"""Who is calling: keys, sessions, anonymous callers and their IP address."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.test import RequestFactory, override_settings
from django.utils import timezone

from copilotedge import exceptions
from copilotedge.auth import Principal, aauthenticate, akey_for_token, client_ip
from copilotedge.models import ApiKey

pytestmark = pytest.mark.django_db(transaction=True)

factory = RequestFactory()  # sync requests are HttpRequests too, with META as given


def test_identity() -> None:
    class Thing:
        pk = 7

    assert Principal(user=Thing(), api_key=Thing(), ip="1.2.3.4").identity == "key:7"  # type: ignore[arg-type]
    assert Principal(user=Thing(), ip="1.2.3.4").identity == "user:7"
    assert Principal(ip="1.2.3.4").identity == "ip:1.2.3.4"
    assert Principal(ip="1.2.3.4").user_id is None


def test_client_ip_is_the_peer_by_default() -> None:
    request = factory.get("/", REMOTE_ADDR="10.0.0.5", HTTP_X_FORWARDED_FOR="6.6.6.6")
    assert client_ip(request) == "10.0.0.5"


@override_settings(COPILOTEDGE_TRUST_X_FORWARDED_FOR=True)
def test_client_ip_behind_a_proxy_is_the_address_the_proxy_saw() -> None:
    # A proxy appends the address it saw; whatever the client sent comes before it, so
    # the first entry is the client's to choose (and would dodge per-IP limits).
    request = factory.get("/", REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR="6.6.6.6, 203.0.113.9")
    assert client_ip(request) == "203.0.113.9"
    single = factory.get("/", REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.9")
    assert client_ip(single) == "203.0.113.9"
    assert client_ip(factory.get("/", REMOTE_ADDR="10.0.0.1")) == "10.0.0.1"


async def test_key_lookup(api_key: tuple[ApiKey, str]) -> None:
    key, raw = api_key
    found = await akey_for_token(raw)
    assert found.pk == key.pk
    assert found.user.username == "alice"  # loaded with the key: no query in async code


@pytest.mark.parametrize("token", ["", "ce_", "ce_unknown", "sk-abc", "CE_upper"])
async def test_unknown_tokens(db: None, token: str) -> None:
    with pytest.raises(exceptions.AuthenticationFailed):
        await akey_for_token(token)


async def test_revoked_or_expired_key(api_key: tuple[ApiKey, str]) -> None:
    key, raw = api_key
    key.expires_at = timezone.now() - timedelta(seconds=1)
    await key.asave()
    with pytest.raises(exceptions.AuthenticationFailed, match="revoked or expired"):
        await akey_for_token(raw)


async def test_key_of_an_inactive_user(api_key: tuple[ApiKey, str], user: Any) -> None:
    user.is_active = False
    await user.asave()
    key, raw = api_key
    await key.asave()  # saving the key forgets any cached copy in this process
    with pytest.raises(exceptions.AuthenticationFailed):
        await akey_for_token(raw)


async def test_principal_is_resolved_once_per_request(api_key: tuple[ApiKey, str]) -> None:
    request = factory.post("/", HTTP_AUTHORIZATION=f"Bearer {api_key[1]}", REMOTE_ADDR="10.0.0.2")
    first = await aauthenticate(request)
    assert (first.api_key.pk, first.user.pk, first.ip) == (  # type: ignore[union-attr]
        api_key[0].pk,
        api_key[0].user_id,
        "10.0.0.2",
    )
    assert await aauthenticate(request) is first


async def test_anonymous(db: None) -> None:
    request = factory.post("/", REMOTE_ADDR="10.0.0.3")
    with pytest.raises(exceptions.AuthenticationFailed):
        await aauthenticate(request)
    with override_settings(COPILOTEDGE_ALLOW_ANONYMOUS=True):
        principal = await aauthenticate(factory.post("/", REMOTE_ADDR="10.0.0.3"))
    assert (principal.user, principal.api_key, principal.identity) == (None, None, "ip:10.0.0.3")


async def test_a_bad_bearer_is_not_rescued_by_anonymous_access(db: None) -> None:
    request = factory.post("/", HTTP_AUTHORIZATION="Bearer ce_wrong")
    with (
        override_settings(COPILOTEDGE_ALLOW_ANONYMOUS=True),
        pytest.raises(exceptions.AuthenticationFailed),
    ):
        await aauthenticate(request)
