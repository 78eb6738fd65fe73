"""Who gets in: keys (revoked, expired, inactive owner), sessions, anonymous callers, their IP
address, the models a key may use and its last use."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
import respx
from django.contrib.auth import get_user_model
from django.test import AsyncClient, RequestFactory, override_settings
from django.utils import timezone

from copilotedge import exceptions, lifecycle
from copilotedge.auth import Principal, aauthenticate, client_ip, key_for_token
from copilotedge.chat.turn import Turn
from copilotedge.chat.types import ChatRequest
from copilotedge.exceptions import PermissionDenied
from copilotedge.models import ApiKey, hash_key
from tests.helpers import OPENAI_URL, run_url

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


def scope(peer: str | None, forwarded: str | None = None) -> dict[str, Any]:
    headers = [(b"host", b"testserver")]
    if forwarded is not None:
        headers.append((b"x-forwarded-for", forwarded.encode()))
    return {"type": "websocket", "headers": headers, "client": [peer, 0] if peer else None}


@pytest.mark.parametrize("trusted", [True, False])
@pytest.mark.parametrize(
    ("peer", "forwarded"),
    [
        ("10.0.0.1", None),
        ("10.0.0.1", "6.6.6.6, 203.0.113.9"),
        ("10.0.0.1", "203.0.113.9"),
        ("10.0.0.1", ", x"),
        ("10.0.0.1", ""),
        ("10.0.0.1", "2001:DB8::1"),
        ("", ", x"),
        ("", None),
    ],
)
def test_http_and_websocket_read_the_client_ip_alike(
    trusted: bool, peer: str, forwarded: str | None
) -> None:
    meta = {"REMOTE_ADDR": peer}
    if forwarded is not None:
        meta["HTTP_X_FORWARDED_FOR"] = forwarded
    with override_settings(COPILOTEDGE_TRUST_X_FORWARDED_FOR=trusted):
        from_http = client_ip(factory.get("/", **meta))
        from_socket = client_ip(scope(peer or None, forwarded))
    assert from_http == from_socket
    assert from_http  # never empty: an empty address is not limited


@override_settings(COPILOTEDGE_TRUST_X_FORWARDED_FOR=True)
def test_a_forwarded_entry_that_is_no_address_falls_back_to_the_peer() -> None:
    assert client_ip(factory.get("/", REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR=", x")) == (
        "10.0.0.1"
    )
    assert client_ip(factory.get("/", REMOTE_ADDR="", HTTP_X_FORWARDED_FOR=", x")) == "unknown"
    assert client_ip(scope(None)) == "unknown"
    assert client_ip(scope("10.0.0.1", "2001:DB8::1")) == "2001:db8::1"


async def test_a_failed_key_lookup_is_cached(db: None, monkeypatch: pytest.MonkeyPatch) -> None:
    lookups = []
    select_related = ApiKey.objects.select_related

    def counted(*fields: str) -> Any:
        lookups.append(fields)
        return select_related(*fields)

    monkeypatch.setattr(ApiKey.objects, "select_related", counted)
    for _ in range(3):
        with pytest.raises(exceptions.AuthenticationFailed):
            await key_for_token("ce_not-a-key")
    assert len(lookups) == 1
    # A key saved with that hash is found at once (its save clears the entry).
    user = await get_user_model().objects.acreate(username="carol")
    key = await ApiKey.objects.acreate(
        user=user, prefix="ce_not-a", hashed_key=hash_key("ce_not-a-key")
    )
    assert (await key_for_token("ce_not-a-key")).pk == key.pk


async def test_key_lookup(api_key: tuple[ApiKey, str]) -> None:
    key, raw = api_key
    found = await key_for_token(raw)
    assert found.pk == key.pk
    assert found.user.username == "alice"  # loaded with the key: no query in async code


@pytest.mark.parametrize("token", ["", "ce_", "ce_unknown", "sk-abc", "CE_upper"])
async def test_unknown_tokens(db: None, token: str) -> None:
    with pytest.raises(exceptions.AuthenticationFailed):
        await key_for_token(token)


async def test_revoked_or_expired_key(api_key: tuple[ApiKey, str]) -> None:
    key, raw = api_key
    key.expires_at = timezone.now() - timedelta(seconds=1)
    await key.asave()
    with pytest.raises(exceptions.AuthenticationFailed, match="revoked or expired"):
        await key_for_token(raw)


async def test_key_of_an_inactive_user(api_key: tuple[ApiKey, str], user: Any) -> None:
    user.is_active = False
    await user.asave()
    key, raw = api_key
    await key.asave()  # saving the key forgets any cached copy in this process
    with pytest.raises(exceptions.AuthenticationFailed):
        await key_for_token(raw)


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


MODELS = "/copilotedge/v1/models"
COMPLETIONS = "/copilotedge/v1/chat/completions"
LLAMA = "@cf/meta/llama-3.1-8b-instruct"
QWEN = "@cf/qwen/qwq-32b"
HELLO = [{"role": "user", "content": "Hello"}]


async def new_key(user: Any, **fields: Any) -> tuple[ApiKey, dict[str, str]]:
    raw, prefix, hashed = ApiKey.generate()
    key = await ApiKey.objects.acreate(user=user, prefix=prefix, hashed_key=hashed, **fields)
    return key, {"Authorization": f"Bearer {raw}"}


async def test_revoked_and_expired_keys_are_refused(user: Any) -> None:
    _, revoked = await new_key(user, revoked_at=timezone.now())
    _, expired = await new_key(user, expires_at=timezone.now() - timedelta(seconds=1))
    _, later = await new_key(user, expires_at=timezone.now() + timedelta(days=1))
    for headers in (revoked, expired):
        response = await AsyncClient().get(MODELS, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"] == {
            "message": "This API key is revoked or expired.",
            "type": "authentication_error",
            "param": None,
            "code": "invalid_api_key",
        }
    assert (await AsyncClient().get(MODELS, headers=later)).status_code == 200


async def test_a_key_of_an_inactive_user_is_refused(user: Any) -> None:
    _, headers = await new_key(user)
    user.is_active = False
    await user.asave()
    assert (await AsyncClient().get(MODELS, headers=headers)).status_code == 401


async def test_unknown_and_malformed_keys_are_refused(user: Any) -> None:
    for value in ("Bearer ce_unknown", "Bearer sk-openai", "Bearer ", "Basic abc"):
        response = await AsyncClient().get(MODELS, headers={"Authorization": value})
        assert response.status_code == 401, value


async def test_a_model_outside_the_keys_list_is_forbidden_on_every_face(
    user: Any, upstream: respx.MockRouter
) -> None:
    key, headers = await new_key(user, allowed_models=[LLAMA])
    openai = upstream.post(OPENAI_URL)
    run = upstream.post(run_url(QWEN))
    client = AsyncClient()
    refused = await client.post(
        COMPLETIONS,
        json.dumps({"model": QWEN, "messages": HELLO}),
        content_type="application/json",
        headers=headers,
    )
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "model_not_allowed"
    assert refused.json()["error"]["param"] == "model"
    streamed = await client.post(
        COMPLETIONS,
        json.dumps({"model": QWEN, "messages": HELLO, "stream": True}),
        content_type="application/json",
        headers=headers,
    )
    assert streamed.status_code == 403
    run_face = await client.post(
        f"/copilotedge/ai/run/{QWEN}",
        json.dumps({"messages": HELLO}),
        content_type="application/json",
        headers=headers,
    )
    assert run_face.status_code == 403
    # WebSocket, AG-UI and GraphQL hand their work to a Turn: it refuses the same way.
    turn = Turn(ChatRequest(QWEN, HELLO), Principal(user=user, api_key=key), "websocket")
    with pytest.raises(PermissionDenied):
        await turn.open()
    with pytest.raises(PermissionDenied):
        await turn.complete()
    assert (openai.call_count, run.call_count) == (0, 0)


async def test_allowed_models_let_the_listed_model_through(
    user: Any, upstream: respx.MockRouter
) -> None:
    _, headers = await new_key(user, allowed_models=[LLAMA])
    upstream.post(OPENAI_URL).respond(
        200,
        json={
            "choices": [{"message": {"role": "assistant", "content": "Hi"}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1},
        },
    )
    response = await AsyncClient().post(
        COMPLETIONS,
        json.dumps({"model": LLAMA, "messages": HELLO}),
        content_type="application/json",
        headers=headers,
    )
    assert response.status_code == 200


async def test_last_used_at_is_written_at_most_once_a_minute(
    user: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, headers = await new_key(user)
    client = AsyncClient()
    await client.get(MODELS, headers=headers)
    await lifecycle.drain()
    await key.arefresh_from_db()
    first = key.last_used_at
    assert first is not None and timezone.now() - first < timedelta(seconds=10)
    for _ in range(3):
        await client.get(MODELS, headers=headers)
    await lifecycle.drain()
    await key.arefresh_from_db()
    assert key.last_used_at == first
    # Even if the database says otherwise, this process wrote it less than a minute ago.
    old = timezone.now() - timedelta(minutes=2)
    await ApiKey.objects.filter(pk=key.pk).aupdate(last_used_at=old)
    await client.get(MODELS, headers=headers)
    await lifecycle.drain()
    await key.arefresh_from_db()
    assert key.last_used_at == old
    # A minute later it is written again.
    later = timezone.now() + timedelta(seconds=61)
    monkeypatch.setattr(timezone, "now", lambda: later)
    await client.get(MODELS, headers=headers)
    await lifecycle.drain()
    await key.arefresh_from_db()
    assert key.last_used_at == later
