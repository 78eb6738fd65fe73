"""Bad input at scale: thousands of generated requests to every endpoint, never a 5xx.

Bodies come from the served OpenAPI description (valid ones, ones with a field replaced by
arbitrary JSON, unknown fields), plus arbitrary JSON and raw bytes; headers from the
auth, cache and content-type variants a client could send. Every response must be below
500, carry no traceback, be an OpenAI error object when it is an error, and finish in
bounded time (streams are read to their end). The upstream is mocked to always answer,
so a request that passes validation is answered.

The other input boundaries get the same treatment: AG-UI ``RunAgentInput`` bodies, GraphQL
variables, WebSocket frames, conversation cursors and preferences, each mostly
well-formed with arbitrary JSON in places; their errors are the face's own error shape
(GraphQL ``errors``, WebSocket ``error`` frames).
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import respx
from django.test import AsyncClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from copilotedge import openapi
from copilotedge.conf import settings as app_settings
from tests.helpers import openai_chunk, reset_circuits, sse_body

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]

# 2,000 requests in all, about 25 s on a 2-core machine.
EXAMPLES = 1500
DESCRIBED_EXAMPLES = 500
REQUEST_TIMEOUT = 10.0
SCHEMAS = openapi.SCHEMAS

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
ANY_JSON = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=20,
)


def from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A strategy for values valid for ``schema`` (the subset of JSON Schema we use)."""
    if "$ref" in schema:
        return from_schema(SCHEMAS[schema["$ref"].rsplit("/", 1)[1]])
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "allOf" in schema:
        merged: dict[str, Any] = {"type": "object", "properties": {}}
        for part in [*schema["allOf"], schema]:
            resolved = SCHEMAS[part["$ref"].rsplit("/", 1)[1]] if "$ref" in part else part
            merged["properties"].update(resolved.get("properties", {}))
            if "anyOf" in resolved:
                merged["anyOf"] = resolved["anyOf"]
        return from_schema(merged)
    if "anyOf" in schema and "properties" in schema:
        # An object that needs one of several sets of fields.
        plain = {k: v for k, v in schema.items() if k != "anyOf"}
        required = schema.get("required", [])
        return st.one_of(
            [
                from_schema({**plain, "required": [*required, *p["required"]]})
                for p in schema["anyOf"]
            ]
        )
    if "anyOf" in schema or "oneOf" in schema:
        parts = schema["anyOf"] if "anyOf" in schema else schema["oneOf"]
        return st.one_of([from_schema(part) for part in parts])
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        return st.one_of([from_schema({**schema, "type": k}) for k in kind])
    if kind == "string":
        return st.uuids().map(str) if schema.get("format") == "uuid" else st.text(max_size=60)
    if kind == "number":
        low, high = schema.get("minimum"), schema.get("maximum")
        return st.floats(low, high, allow_nan=False, allow_infinity=False) | st.integers(
            None if low is None else int(low), None if high is None else int(high)
        )
    if kind == "integer":
        return st.integers(min_value=schema.get("minimum"), max_value=schema.get("maximum"))
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        return st.lists(
            from_schema(schema.get("items", {})),
            min_size=schema.get("minItems", 0),
            max_size=min(schema.get("maxItems", 4), 4),
        )
    properties = schema.get("properties", {})
    required = set(schema.get("required", ()))
    return st.fixed_dictionaries(
        {name: from_schema(sub) for name, sub in properties.items() if name in required},
        optional={
            name: from_schema(sub) for name, sub in properties.items() if name not in required
        },
    )


def chat_request(models: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Requests as described, mostly for a real model and without upstream faults."""
    described = from_schema({"$ref": "#/components/schemas/ChatCompletionRequest"})
    return st.tuples(described, st.sampled_from([*models, None]) | st.text(max_size=20)).map(
        lambda pair: {**pair[0], "model": pair[1]} if pair[1] is not None else pair[0]
    )


def mutated(bodies: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[Any]:
    """A described body with one field (known or not) set to arbitrary JSON."""
    fields = st.sampled_from(
        [*SCHEMAS["ChatRequest"]["properties"], "model", "stream_options", "extra"]
    )
    return st.tuples(bodies, fields, ANY_JSON).map(lambda t: {**t[0], t[1]: t[2]})


def bodies(models: list[str]) -> st.SearchStrategy[bytes]:
    described = chat_request(models)
    as_json = st.one_of(described, mutated(described), ANY_JSON).map(
        lambda value: json.dumps(value).encode()
    )
    return st.one_of(as_json, as_json, st.binary(max_size=200))


HEADER_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
VALID_KEY = "<the test user's key>"  # replaced by the real one in the test

HEADERS = st.fixed_dictionaries(
    {
        "Authorization": st.one_of(
            st.just(VALID_KEY),
            st.just(VALID_KEY),
            st.just(VALID_KEY),
            st.sampled_from(["Bearer ce_nope", "Basic eA==", ""]) | HEADER_TEXT,
        )
    },
    optional={
        "X-CopilotEdge-Cache": st.sampled_from(["use", "refresh", "bypass", "HIT"]) | HEADER_TEXT,
        "Accept": st.sampled_from(["text/event-stream", "*/*"]) | HEADER_TEXT,
    },
)


def endpoints(models: list[str]) -> st.SearchStrategy[tuple[str, str]]:
    run = (st.sampled_from(models) | st.text(min_size=1, max_size=30)).map(
        lambda model: f"/copilotedge/ai/run/{quote(model, safe='@/')}"
    )
    chat = st.just("/copilotedge/v1/chat/completions")
    return st.one_of(
        st.tuples(st.just("post"), chat),
        st.tuples(st.just("post"), chat),
        st.tuples(st.just("post"), chat),
        st.tuples(st.just("post"), run),
        st.tuples(st.sampled_from(["get", "put", "delete", "patch"]), chat | run),
        st.tuples(
            st.sampled_from(["get", "post"]),
            st.sampled_from(["/copilotedge/v1/models", "/copilotedge/openapi.json"]),
        ),
    )


def answer(request: httpx.Request) -> httpx.Response:
    """The mocked upstream: a short valid answer in the shape the request asked for."""
    try:
        payload = json.loads(request.content)
    except ValueError:
        return httpx.Response(400)
    run = "/ai/run/" in request.url.path
    if payload.get("stream"):
        frames = (
            [{"response": "fine"}, {"response": "", "usage": {"prompt_tokens": 1}}]
            if run
            else [openai_chunk("fine"), openai_chunk(finish_reason="stop")]
        )
        return httpx.Response(
            200, content=sse_body(*frames), headers={"content-type": "text/event-stream"}
        )
    if run:
        return httpx.Response(200, json={"result": {"response": "fine"}, "success": True})
    return httpx.Response(
        200, json={"choices": [{"message": {"content": "fine"}, "finish_reason": "stop"}]}
    )


async def check(response: Any) -> None:
    """No 5xx, no traceback, errors in the documented shape, streams that end."""
    assert response.status_code < 500, response.status_code
    if getattr(response, "streaming", False):
        async with asyncio.timeout(REQUEST_TIMEOUT):
            raw = b"".join([chunk async for chunk in response.streaming_content])
        assert raw.rstrip().endswith(b"data: [DONE]"), raw[-200:]
        assert b'"error"' not in raw, raw[-300:]
        return
    assert b"Traceback" not in response.content
    if response.status_code == 404 and response["Content-Type"].startswith("text/html"):
        return  # no route of the app matched (e.g. an empty model): the site's own 404 page
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["message"], str) and isinstance(error["type"], str)


@pytest.fixture
def mocked_upstream(settings: Any) -> Any:
    settings.COPILOTEDGE_RESPONSE_CACHE = True
    settings.COPILOTEDGE_RESPONSE_CACHE_TTL = 60
    settings.COPILOTEDGE_RATE_LIMIT = "1000000/m"  # thousands of requests from one key
    settings.COPILOTEDGE_TOKEN_RATE_LIMIT = "1000000000/m"
    settings.COPILOTEDGE_RETRY_ATTEMPTS = 1
    reset_circuits()
    with respx.mock(assert_all_called=False) as router:
        router.route(host="upstream.test").mock(side_effect=answer)
        yield router
    reset_circuits()


MODELS = app_settings.MODELS
# Every example shares the function-scoped fixtures on purpose (user, key, mocked upstream).
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
STATUSES: dict[str, dict[int, int]] = {"any": {}, "described": {}}


@FUZZ
@given(endpoint=endpoints(MODELS), body=bodies(MODELS), extra=HEADERS)
async def test_generated_requests_never_get_a_5xx(
    mocked_upstream: Any,
    drain_usage: None,
    auth: dict[str, str],
    endpoint: tuple[str, str],
    body: bytes,
    extra: dict[str, str],
) -> None:
    method, path = endpoint
    if extra.get("Authorization") == VALID_KEY:
        extra = {**extra, "Authorization": auth["Authorization"]}
    kwargs: dict[str, Any] = {"headers": extra}
    if method in ("post", "put"):
        kwargs |= {"data": body, "content_type": "application/json"}
    async with asyncio.timeout(REQUEST_TIMEOUT):
        response = await getattr(AsyncClient(), method)(path, **kwargs)
    await check(response)
    seen = STATUSES["any"]
    seen[response.status_code] = seen.get(response.status_code, 0) + 1


def test_generated_requests_reached_the_views() -> None:
    """The run above was not all 401s and 404s: valid requests were answered."""
    seen = STATUSES["any"]
    if not seen:
        pytest.skip("the fuzz test did not run")
    print(f"fuzz statuses: {seen}")
    assert seen.get(200, 0) > EXAMPLES // 20
    assert seen.get(400, 0) > EXAMPLES // 10


@settings(FUZZ, max_examples=DESCRIBED_EXAMPLES)
@given(body=chat_request(MODELS).filter(lambda b: b.get("model", MODELS[0]) in MODELS))
async def test_described_requests_are_accepted(
    mocked_upstream: Any, drain_usage: None, auth: dict[str, str], body: dict[str, Any]
) -> None:
    """A body valid by the description, for a listed model, is answered (or refused by the
    token rate limit, as documented, when it asks for more tokens than the limit)."""
    body.pop("conversation_id", None)  # names a stored conversation
    async with asyncio.timeout(REQUEST_TIMEOUT):
        response = await AsyncClient().post(
            "/copilotedge/v1/chat/completions", body, content_type="application/json", headers=auth
        )
    await check(response)
    if response.status_code == 429:
        # A valid max_tokens beyond the key's token limit: refused before reaching upstream.
        assert response.json()["error"]["param"] == "max_tokens"
    else:
        assert response.status_code == 200, response.json()
    seen = STATUSES["described"]
    seen[response.status_code] = seen.get(response.status_code, 0) + 1


# The other input boundaries: AG-UI, GraphQL variables, WebSocket frames, cursors, preferences.

BOUNDARY = settings(FUZZ, max_examples=150)
TEXTS = st.text(max_size=30)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a well-formed value, sometimes arbitrary JSON in its place."""
    return st.one_of(strategy, strategy, strategy, ANY_JSON)


AGUI_MESSAGE = st.fixed_dictionaries(
    {"id": maybe(TEXTS), "role": maybe(st.sampled_from(["user", "assistant", "system", "tool"]))},
    optional={"content": maybe(TEXTS), "toolCallId": TEXTS, "name": TEXTS},
)
RUN_INPUT = st.fixed_dictionaries(
    {
        "threadId": maybe(TEXTS),
        "runId": maybe(TEXTS),
        "messages": maybe(st.lists(AGUI_MESSAGE, max_size=3)),
    },
    optional={
        "tools": maybe(
            st.lists(
                st.fixed_dictionaries(
                    {"name": TEXTS, "description": TEXTS, "parameters": ANY_JSON}
                ),
                max_size=2,
            )
        ),
        "context": maybe(
            st.lists(st.fixed_dictionaries({"description": TEXTS, "value": TEXTS}), max_size=2)
        ),
        "state": ANY_JSON,
        "forwardedProps": ANY_JSON,
    },
)
GQL_MESSAGE = st.fixed_dictionaries(
    {"id": maybe(TEXTS), "createdAt": maybe(TEXTS)},
    optional={
        "textMessage": maybe(
            st.fixed_dictionaries(
                {
                    "role": maybe(st.sampled_from(["user", "assistant", "system"])),
                    "content": maybe(TEXTS),
                }
            )
        ),
        "resultMessage": ANY_JSON,
    },
)
GQL_DATA = st.fixed_dictionaries(
    {
        "messages": maybe(st.lists(GQL_MESSAGE, max_size=3)),
        "frontend": maybe(
            st.fixed_dictionaries({"actions": maybe(st.lists(ANY_JSON, max_size=2))})
        ),
        "metadata": maybe(
            st.fixed_dictionaries({"requestType": st.sampled_from(["Chat", "Task"]) | TEXTS})
        ),
    },
    optional={"threadId": maybe(TEXTS), "forwardedParameters": ANY_JSON, "context": ANY_JSON},
)
GQL_MUTATION = (
    "mutation($data: GenerateCopilotResponseInput!, $properties: JSONObject) {"
    " generateCopilotResponse(data: $data, properties: $properties) {"
    " threadId status { ... on BaseResponseStatus { code } }"
    " messages { __typename ... on TextMessageOutput { content } } } }"
)
FRAME = st.one_of(
    ANY_JSON,
    st.fixed_dictionaries(
        {"type": st.sampled_from(["chat", "cancel", "resume", "ping", "auth", "confirm"]) | TEXTS},
        optional={
            "id": maybe(st.integers() | TEXTS),
            "messages": maybe(
                st.lists(
                    st.fixed_dictionaries(
                        {"role": maybe(st.just("user")), "content": maybe(TEXTS)}
                    ),
                    max_size=2,
                )
            ),
            "conversation_id": maybe(st.uuids().map(str) | TEXTS),
            "after": maybe(st.integers()),
            "model": maybe(st.sampled_from(MODELS) | TEXTS),
            "params": ANY_JSON,
            "token": maybe(TEXTS),
        },
    ),
)


async def check_http(response: Any) -> None:
    """No 5xx, no traceback; an error is the documented error object."""
    assert response.status_code < 500, response.status_code
    body = (
        b"".join([chunk async for chunk in response.streaming_content])
        if getattr(response, "streaming", False)
        else response.content
    )
    assert b"Traceback" not in body
    if response.status_code >= 400:
        error = json.loads(body)["error"]
        assert isinstance(error["message"], str) and isinstance(error["type"], str)


@BOUNDARY
@given(body=st.one_of(RUN_INPUT, ANY_JSON))
async def test_generated_agui_run_inputs(
    mocked_upstream: Any, drain_usage: None, agui_drain: None, auth: dict[str, str], body: Any
) -> None:
    async with asyncio.timeout(REQUEST_TIMEOUT):
        response = await AsyncClient().post(
            "/copilotedge/copilotkit/agent/default/run",
            json.dumps(body),
            content_type="application/json",
            headers=auth,
        )
        await check_http(response)


@BOUNDARY
@given(data=st.one_of(GQL_DATA, ANY_JSON), properties=ANY_JSON)
async def test_generated_graphql_variables(
    mocked_upstream: Any, drain_usage: None, auth: dict[str, str], data: Any, properties: Any
) -> None:
    body = {"query": GQL_MUTATION, "variables": {"data": data, "properties": properties}}
    async with asyncio.timeout(REQUEST_TIMEOUT):
        response = await AsyncClient().post(
            "/copilotedge/copilotkit",
            json.dumps(body),
            content_type="application/json",
            headers=auth,
        )
    assert response.status_code < 500, response.status_code
    assert b"Traceback" not in response.content
    result = response.json()
    for error in result.get("errors") or []:
        assert isinstance(error["message"], str)
    assert "data" in result or result.get("errors")


@BOUNDARY
@given(
    cursor=TEXTS | st.binary(max_size=60).map(lambda b: base64.urlsafe_b64encode(b).decode()),
    limit=TEXTS,
)
async def test_generated_conversation_cursors(
    mocked_upstream: Any, auth: dict[str, str], cursor: str, limit: str
) -> None:
    response = await AsyncClient().get(
        "/copilotedge/conversations/", {"cursor": cursor, "limit": limit}, headers=auth
    )
    await check_http(response)


PREFERENCES = st.fixed_dictionaries(
    {},
    optional={
        name: ANY_JSON | TEXTS
        for name in (
            "agent",
            "model",
            "system_prompt",
            "temperature",
            "max_tokens",
            "store_conversations",
        )
    },
)


@BOUNDARY
@given(body=st.one_of(PREFERENCES, ANY_JSON))
async def test_generated_preferences(mocked_upstream: Any, auth: dict[str, str], body: Any) -> None:
    response = await AsyncClient().put(
        "/copilotedge/preferences/", json.dumps(body), content_type="application/json", headers=auth
    )
    await check_http(response)


WS_REPLIES = {
    "ready",
    "start",
    "delta",
    "done",
    "cancelled",
    "error",
    "pong",
    "tool_call",
    "tool_result",
    "confirm",
}


@settings(FUZZ, max_examples=60)
@given(frames=st.lists(FRAME, min_size=1, max_size=4))
async def test_generated_websocket_frames(
    mocked_upstream: Any,
    drain_usage: None,
    drain_chats: None,
    session_cookie: bytes,
    frames: list[Any],
) -> None:
    from channels.testing import WebsocketCommunicator

    from tests.asgi import application
    from tests.helpers import ORIGIN, WS_PATH

    socket = WebsocketCommunicator(
        application, WS_PATH, headers=[ORIGIN, (b"cookie", session_cookie)]
    )
    assert (await socket.connect())[0]
    assert (await socket.receive_json_from())["type"] == "ready"
    for frame in frames:
        await socket.send_to(text_data=json.dumps(frame))
    # Every reply is a documented message; an error carries a message and a code.
    while not await socket.receive_nothing(timeout=0.2):
        output = await socket.receive_output()
        if output["type"] == "websocket.close":
            break
        reply = json.loads(output["text"])
        assert reply["type"] in WS_REPLIES, reply
        if reply["type"] == "error":
            assert isinstance(reply["error"]["message"], str)
            assert isinstance(reply["error"]["code"], str)
    await socket.disconnect()
