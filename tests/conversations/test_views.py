"""Conversations over HTTP: the completions header, the list/detail/delete API, preferences."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from django.test import AsyncClient, override_settings
from django.utils import timezone

from copilotedge import lifecycle
from copilotedge.models import ApiKey, Conversation, Message, Preference
from tests.helpers import OPENAI_URL, WordStream, stream_response

CONVERSATION_HEADER = "X-CopilotEdge-Conversation"
BASE = "/copilotedge"


class Answers:
    """Upstream answers in turn, streamed or whole as each request asks."""

    def __init__(self, *texts: str) -> None:
        self.texts = list(texts)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        text = self.texts.pop(0) if len(self.texts) > 1 else self.texts[0]
        if json.loads(request.content).get("stream"):
            return stream_response(WordStream([text], delay=0))
        message = {"role": "assistant", "content": text}
        return httpx.Response(
            200, json={"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
        )


async def drain() -> None:
    await lifecycle.drain()


async def post_chat(client: AsyncClient, auth: dict[str, str], **body: Any) -> Any:
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    response = await client.post(
        f"{BASE}/v1/chat/completions",
        json.dumps(body),
        content_type="application/json",
        headers=auth,
    )
    if response.streaming:
        response.frames = b"".join([chunk async for chunk in response.streaming_content])
    await drain()
    return response


# /v1/chat/completions with conversation_id ------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_completion_creates_a_conversation_and_names_it_in_a_header(auth, upstream):
    upstream.post(OPENAI_URL).mock(side_effect=Answers("Hello!"))
    client = AsyncClient()
    response = await post_chat(client, auth)
    assert response.status_code == 200
    conversation = await Conversation.objects.aget()
    assert response[CONVERSATION_HEADER] == str(conversation.id)
    streamed = await post_chat(client, auth, stream=True)
    assert streamed.status_code == 200 and b"[DONE]" in streamed.frames
    assert streamed[CONVERSATION_HEADER] != response[CONVERSATION_HEADER]
    assert await Conversation.objects.acount() == 2


@pytest.mark.django_db(transaction=True)
async def test_completion_continues_a_stored_conversation(auth, upstream):
    route = upstream.post(OPENAI_URL).mock(side_effect=Answers("Paris.", "Lyon."))
    client = AsyncClient()
    first = await post_chat(client, auth, messages=[{"role": "user", "content": "Capital?"}])
    cid = first[CONVERSATION_HEADER]
    second = await post_chat(
        client, auth, stream=True, conversation_id=cid,
        messages=[{"role": "user", "content": "Second city?"}],
    )  # fmt: skip
    assert second[CONVERSATION_HEADER] == cid
    assert b"Lyon." in second.frames
    sent = json.loads(route.calls[1].request.content)["messages"]
    assert [m["content"] for m in sent] == ["Capital?", "Paris.", "Second city?"]
    assert await Message.objects.filter(conversation_id=cid).acount() == 4


@pytest.mark.django_db(transaction=True)
async def test_completion_with_another_users_conversation_is_404(auth, other_user, upstream):
    route = upstream.post(OPENAI_URL).mock(side_effect=Answers("x"))
    theirs = await Conversation.objects.acreate(user=other_user)
    for stream in (False, True):
        response = await post_chat(
            AsyncClient(), auth, conversation_id=str(theirs.id), stream=stream
        )
        assert response.status_code == 404
        assert json.loads(response.content)["error"]["param"] == "conversation_id"
    unknown = await post_chat(AsyncClient(), auth, conversation_id=str(uuid.uuid4()))
    assert unknown.status_code == 404
    assert not route.called


@pytest.mark.django_db(transaction=True)
async def test_no_header_when_storing_is_off(auth, user, upstream):
    upstream.post(OPENAI_URL).mock(side_effect=Answers("x"))
    await Preference.objects.acreate(user=user, store_conversations=False)
    response = await post_chat(AsyncClient(), auth)
    assert response.status_code == 200
    assert CONVERSATION_HEADER not in response
    assert await Conversation.objects.acount() == 0


# /ai/run/<model> names its conversation too -----------------------------------------------

RUN = f"{BASE}/ai/run/@cf/meta/llama-3.1-8b-instruct"


async def post_run(client: AsyncClient, auth: dict[str, str], **body: Any) -> Any:
    response = await client.post(
        RUN, json.dumps(body), content_type="application/json", headers=auth
    )
    if response.streaming:
        response.frames = b"".join([chunk async for chunk in response.streaming_content])
    await drain()
    return response


@pytest.mark.django_db(transaction=True)
async def test_ai_run_names_its_conversation_on_json_and_sse(auth, upstream):
    route = upstream.post(OPENAI_URL).mock(side_effect=Answers("Paris.", "Lyon."))
    client = AsyncClient()
    whole = await post_run(client, auth, prompt="Capital?")
    assert whole.status_code == 200
    assert json.loads(whole.content)["result"]["response"] == "Paris."
    conversation = await Conversation.objects.aget()
    assert whole[CONVERSATION_HEADER] == str(conversation.id)
    streamed = await post_run(
        client, auth, prompt="Second city?", stream=True, conversation_id=str(conversation.id)
    )
    assert streamed.status_code == 200
    assert streamed["Content-Type"].startswith("text/event-stream")
    assert streamed[CONVERSATION_HEADER] == str(conversation.id)
    assert b'"response":"Lyon."' in streamed.frames.replace(b" ", b"")
    sent = json.loads(route.calls[1].request.content)["messages"]
    assert [m["content"] for m in sent] == ["Capital?", "Paris.", "Second city?"]
    assert await Message.objects.filter(conversation=conversation).acount() == 4


# The conversations API --------------------------------------------------------------------


async def make_conversations(owner: Any, count: int) -> list[Conversation]:
    now = timezone.now()
    made = []
    for i in range(count):
        conversation = await Conversation.objects.acreate(
            user=owner, title=f"chat {i}", updated_at=now - timedelta(minutes=count - i)
        )
        made.append(conversation)
    return made


@pytest.mark.django_db(transaction=True)
async def test_list_is_the_callers_own_newest_first_and_paginated(auth, user, other_user):
    mine = await make_conversations(user, 5)
    await make_conversations(other_user, 3)
    client = AsyncClient()
    response = await client.get(f"{BASE}/conversations/?limit=2", headers=auth)
    assert response.status_code == 200
    page = response.json()
    assert [c["title"] for c in page["data"]] == ["chat 4", "chat 3"]
    assert page["has_more"] is True
    titles = [c["title"] for c in page["data"]]
    while page["next_cursor"]:
        response = await client.get(
            f"{BASE}/conversations/", {"limit": 2, "cursor": page["next_cursor"]}, headers=auth
        )
        page = response.json()
        titles += [c["title"] for c in page["data"]]
    assert titles == [c.title for c in reversed(mine)]
    assert page["has_more"] is False


@pytest.mark.django_db(transaction=True)
async def test_list_pages_through_equal_timestamps_without_loss(auth, user):
    now = timezone.now()
    for i in range(5):
        await Conversation.objects.acreate(user=user, title=f"same {i}", updated_at=now)
    client = AsyncClient()
    seen, cursor = [], None
    while True:
        query = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get(f"{BASE}/conversations/", query, headers=auth)).json()
        seen += [c["id"] for c in page["data"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    every = [str(pk) async for pk in Conversation.objects.values_list("id", flat=True)]
    assert len(seen) == len(set(seen)) == 5
    assert sorted(seen) == sorted(every)


# A JSON array nested past the parser's recursion limit, as a cursor.
DEEP = base64.urlsafe_b64encode(b"[" * 100_000 + b"]" * 100_000).decode().rstrip("=")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("query", "param"), [("limit=0", "limit"), ("limit=x", "limit"), ("limit=101", "limit"),
                         ("limit=%C2%B9", "limit"),  # "¹": a digit to str.isdigit, not to int()
                         ("cursor=nope", "cursor"), (f"cursor={DEEP}", "cursor")],
)  # fmt: skip
async def test_list_rejects_bad_paging_naming_the_field(auth, query, param):
    response = await AsyncClient().get(f"{BASE}/conversations/?{query}", headers=auth)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


@pytest.mark.django_db(transaction=True)
async def test_detail_has_the_messages_in_order(auth, user):
    conversation = await Conversation.objects.acreate(user=user, title="t")
    for i, (role, text) in enumerate([("user", "hi"), ("assistant", "hello")]):
        await Message.objects.acreate(
            conversation=conversation, sequence=i, role=role, content=text
        )
    response = await AsyncClient().get(f"{BASE}/conversations/{conversation.id}/", headers=auth)
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == str(conversation.id) and body["title"] == "t"
    assert [(m["role"], m["content"], m["status"]) for m in body["messages"]] == [
        ("user", "hi", "complete"),
        ("assistant", "hello", "complete"),
    ]


@pytest.mark.django_db(transaction=True)
async def test_delete_removes_the_conversation_and_its_messages(auth, user):
    conversation = await Conversation.objects.acreate(user=user)
    await Message.objects.acreate(conversation=conversation, sequence=0, role="user", content="x")
    client = AsyncClient()
    response = await client.delete(f"{BASE}/conversations/{conversation.id}/", headers=auth)
    assert response.status_code == 204
    assert not await Conversation.objects.filter(pk=conversation.pk).aexists()
    assert await Message.objects.acount() == 0
    again = await client.get(f"{BASE}/conversations/{conversation.id}/", headers=auth)
    assert again.status_code == 404


@pytest.mark.django_db(transaction=True)
async def test_deleting_a_conversation_ends_its_streaming_answer_with_an_error(auth, upstream):
    words = [f"w{i} " for i in range(40)]
    upstream.post(OPENAI_URL).mock(return_value=stream_response(WordStream(words, delay=0.05)))
    client = AsyncClient()
    body = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
    response = await client.post(
        f"{BASE}/v1/chat/completions", body, content_type="application/json", headers=auth
    )
    frames = aiter(response.streaming_content)
    first = await anext(frames)
    assert b'"content"' in first
    conversation_id = response[CONVERSATION_HEADER]
    deleted = await client.delete(f"{BASE}/conversations/{conversation_id}/", headers=auth)
    assert deleted.status_code == 204
    rest = b"".join([frame async for frame in frames]).decode()
    assert rest.endswith("data: [DONE]\n\n")
    error = json.loads(rest.split("data: ")[-2])["error"]
    assert error["code"] == "cancelled" and "deleted" in error["message"]
    await drain()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("method", ["get", "delete"])
async def test_another_users_conversation_is_404_never_403(auth, other_user, method):
    theirs = await Conversation.objects.acreate(user=other_user, title="secret")
    response = await getattr(AsyncClient(), method)(
        f"{BASE}/conversations/{theirs.id}/", headers=auth
    )
    assert response.status_code == 404
    assert "secret" not in response.content.decode()
    assert await Conversation.objects.filter(pk=theirs.pk).aexists()


@pytest.mark.django_db(transaction=True)
async def test_a_users_api_keys_and_session_share_the_users_conversations(user, auth):
    conversation = await Conversation.objects.acreate(user=user, title="shared")
    key, raw = await _create_key(user)
    response = await AsyncClient().get(
        f"{BASE}/conversations/{conversation.id}/", headers={"Authorization": f"Bearer {raw}"}
    )
    assert response.status_code == 200 and key.user_id == user.pk
    client = AsyncClient()
    await client.aforce_login(user)
    assert (await client.get(f"{BASE}/conversations/")).json()["data"][0]["title"] == "shared"


async def _create_key(user: Any) -> tuple[ApiKey, str]:
    from asgiref.sync import sync_to_async

    return await sync_to_async(ApiKey.create_key)(user, name="second")


@pytest.mark.django_db(transaction=True)
async def test_conversation_endpoints_need_authentication():
    client = AsyncClient()
    for path in ("conversations/", f"conversations/{uuid.uuid4()}/", "preferences/"):
        assert (await client.get(f"{BASE}/{path}")).status_code == 401


@pytest.mark.django_db(transaction=True)
async def test_delete_needs_csrf_with_a_session(user):
    conversation = await Conversation.objects.acreate(user=user)
    client = AsyncClient(enforce_csrf_checks=True)
    await client.aforce_login(user)
    response = await client.delete(f"{BASE}/conversations/{conversation.id}/")
    assert response.status_code == 403
    assert await Conversation.objects.filter(pk=conversation.pk).aexists()


# Preferences ------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_preferences_default_then_put_changes_only_the_named_fields(auth, user):
    client = AsyncClient()
    response = await client.get(f"{BASE}/preferences/", headers=auth)
    assert response.json() == {
        "agent": "", "model": "", "system_prompt": "", "temperature": None,
        "max_tokens": None, "store_conversations": True,
    }  # fmt: skip
    put = await client.put(
        f"{BASE}/preferences/",
        json.dumps({"model": "@cf/meta/llama-3.2-3b-instruct", "temperature": 0.3}),
        content_type="application/json",
        headers=auth,
    )
    assert put.status_code == 200
    assert put.json()["model"] == "@cf/meta/llama-3.2-3b-instruct"
    put = await client.put(
        f"{BASE}/preferences/",
        json.dumps({"store_conversations": False, "agent": "default"}),
        content_type="application/json",
        headers=auth,
    )
    body = (await client.get(f"{BASE}/preferences/", headers=auth)).json()
    assert body["temperature"] == 0.3 and body["store_conversations"] is False
    assert body["agent"] == "default"
    stored = await Preference.objects.aget(user=user)
    assert stored.model == "@cf/meta/llama-3.2-3b-instruct"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"temperature": 9}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"model": "@cf/nope"}, "model"),
        ({"agent": "nobody"}, "agent"),
        ({"store_conversations": "yes"}, "store_conversations"),
        ({"system_prompt": 3}, "system_prompt"),
        ({"colour": "blue"}, "colour"),
    ],
)
async def test_preferences_reject_bad_values_naming_the_field(auth, body, param):
    response = await AsyncClient().put(
        f"{BASE}/preferences/", json.dumps(body), content_type="application/json", headers=auth
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    assert not await Preference.objects.aexists()


@pytest.mark.django_db(transaction=True)
async def test_preferences_reject_a_body_that_is_not_an_object(auth):
    response = await AsyncClient().put(
        f"{BASE}/preferences/", "[1]", content_type="application/json", headers=auth
    )
    assert response.status_code == 400


@override_settings(COPILOTEDGE_CONVERSATIONS_PAGE_SIZE=3)
@pytest.mark.django_db(transaction=True)
async def test_default_page_size_is_a_setting(auth, user):
    await make_conversations(user, 4)
    page = (await AsyncClient().get(f"{BASE}/conversations/", headers=auth)).json()
    assert len(page["data"]) == 3 and page["has_more"] is True
