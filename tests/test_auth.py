"""Who gets in: API keys (revoked, expired, inactive owner), models a key may use, last use."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
import respx
from django.test import AsyncClient
from django.utils import timezone

from copilotedge import auth as auth_module
from copilotedge.auth import Principal
from copilotedge.chat import ChatRequest, Turn
from copilotedge.exceptions import PermissionDenied
from copilotedge.models import ApiKey
from tests.conftest import OPENAI_URL, run_url

pytestmark = pytest.mark.django_db(transaction=True)

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
    await auth_module.adrain()
    await key.arefresh_from_db()
    first = key.last_used_at
    assert first is not None and timezone.now() - first < timedelta(seconds=10)
    for _ in range(3):
        await client.get(MODELS, headers=headers)
    await auth_module.adrain()
    await key.arefresh_from_db()
    assert key.last_used_at == first
    # Even if the database says otherwise, this process wrote it less than a minute ago.
    old = timezone.now() - timedelta(minutes=2)
    await ApiKey.objects.filter(pk=key.pk).aupdate(last_used_at=old)
    await client.get(MODELS, headers=headers)
    await auth_module.adrain()
    await key.arefresh_from_db()
    assert key.last_used_at == old
    # A minute later it is written again.
    later = timezone.now() + timedelta(seconds=61)
    monkeypatch.setattr(timezone, "now", lambda: later)
    await client.get(MODELS, headers=headers)
    await auth_module.adrain()
    await key.arefresh_from_db()
    assert key.last_used_at == later
