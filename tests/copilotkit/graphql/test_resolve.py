"""The legacy GraphQL face (``generateCopilotResponse``) through Django's AsyncClient."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from django.test import AsyncClient, override_settings

from copilotedge import lifecycle
from copilotedge.models import UsageRecord
from tests.helpers import OPENAI_URL, openai_chunk, sse_body

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/copilotedge/copilotkit"

RESPONSE_FIELDS = """
      threadId
      runId
      status {
        ... on BaseResponseStatus { code }
        ... on FailedResponseStatus { reason details }
      }
      messages {
        __typename
        ... on BaseMessageOutput {
          id
          createdAt
          status { ... on SuccessMessageStatus { code } ... on FailedMessageStatus { code reason } }
        }
        ... on TextMessageOutput { content role parentMessageId }
        ... on ActionExecutionMessageOutput { name arguments parentMessageId }
      }
"""

PLAIN = f"""
mutation generateCopilotResponse($data: GenerateCopilotResponseInput!, $properties: JSONObject) {{
  generateCopilotResponse(data: $data, properties: $properties) {{ {RESPONSE_FIELDS} }}
}}
"""

# The shape CopilotKit's client asks for: status deferred, messages and content streamed.
STREAMED = """
mutation generateCopilotResponse($data: GenerateCopilotResponseInput!, $properties: JSONObject) {
  generateCopilotResponse(data: $data, properties: $properties) {
    threadId
    runId
    ... on CopilotResponse @defer {
      status { ... on BaseResponseStatus { code } ... on FailedResponseStatus { reason details } }
    }
    messages @stream {
      __typename
      ... on BaseMessageOutput { id createdAt }
      ... on BaseMessageOutput @defer { status { ... on SuccessMessageStatus { code } } }
      ... on TextMessageOutput { content @stream role parentMessageId }
      ... on ActionExecutionMessageOutput { name arguments @stream parentMessageId }
    }
    metaEvents @stream { ... on LangGraphInterruptEvent { type name value } }
  }
}
"""


def variables(
    *messages: dict[str, Any], actions: list[dict[str, Any]] | None = None, **data: Any
) -> dict[str, Any]:
    return {
        "data": {
            "metadata": {"requestType": "Chat"},
            "threadId": "thread-1",
            "messages": list(messages)
            or [
                {
                    "id": "m1",
                    "createdAt": "2025-01-01T00:00:00Z",
                    "textMessage": {"role": "user", "content": "Hello"},
                }
            ],
            "frontend": {"actions": actions or [], "url": "http://localhost"},
            **data,
        },
        "properties": {},
    }


def text(message_id: str, role: str, content: str) -> dict[str, Any]:
    return {
        "id": message_id,
        "createdAt": "2025-01-01T00:00:00Z",
        "textMessage": {"role": role, "content": content},
    }


async def post(body: Any, headers: dict[str, str], accept: str = "application/json") -> Any:
    return await AsyncClient().post(
        URL,
        data=json.dumps(body),
        content_type="application/json",
        headers={**headers, "Accept": accept},
    )


def text_stream(*texts: str) -> httpx.Response:
    frames = [openai_chunk(t) for t in texts] + [openai_chunk(finish_reason="stop")]
    return httpx.Response(200, content=sse_body(*frames))


def parts(body: bytes) -> list[dict[str, Any]]:
    """Split a multipart/mixed body (boundary "-") into its JSON parts."""
    assert body.startswith(b"\r\n---\r\n") and body.endswith(b"\r\n-----\r\n")
    chunks = body[len(b"\r\n---") : -len(b"\r\n-----\r\n")].split(b"\r\n---")
    result = []
    for chunk in chunks:
        headers, _, payload = chunk.partition(b"\r\n\r\n")
        assert b"Content-Type: application/json; charset=utf-8" in headers
        assert f"Content-Length: {len(payload)}".encode() in headers
        result.append(json.loads(payload))
    return result


async def test_plain_json_answer_when_nothing_is_deferred(auth, upstream):
    upstream.post(OPENAI_URL).mock(return_value=text_stream("Hel", "lo"))
    response = await post(
        {"query": PLAIN, "operationName": "generateCopilotResponse", "variables": variables()}, auth
    )
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/json")
    result = response.json()["data"]["generateCopilotResponse"]
    assert result["threadId"] == "thread-1"
    assert result["status"] == {"code": "Success"}
    [message] = result["messages"]
    assert message["__typename"] == "TextMessageOutput"
    assert (message["role"], message["content"]) == ("assistant", ["Hel", "lo"])
    assert message["status"] == {"code": "Success"}
    await lifecycle.drain()
    record = await UsageRecord.objects.aget()
    assert (record.protocol, record.outcome) == ("graphql", "ok")


async def test_streamed_operation_answers_multipart_with_path_addressed_patches(auth, upstream):
    upstream.post(OPENAI_URL).mock(return_value=text_stream("Hel", "lo", "!"))
    body = {"query": STREAMED, "operationName": "generateCopilotResponse", "variables": variables()}
    response = await post(body, auth, accept="multipart/mixed, application/json")
    assert response.status_code == 200
    assert response["Content-Type"] == 'multipart/mixed; boundary="-"'
    payloads = parts(b"".join([chunk async for chunk in response.streaming_content]))
    first = payloads[0]
    assert first["hasNext"] is True
    assert first["data"]["generateCopilotResponse"]["messages"] == []
    assert payloads[-1]["hasNext"] is False
    incremental = [entry for p in payloads[1:] for entry in p.get("incremental", [])]
    message_items = [
        e for e in incremental if e.get("path") == ["generateCopilotResponse", "messages", 0]
    ]
    assert message_items and message_items[0]["items"][0]["__typename"] == "TextMessageOutput"
    content = [
        e
        for e in incremental
        if e.get("path", [])[:4] == ["generateCopilotResponse", "messages", 0, "content"]
    ]
    assert [e["path"][4] for e in content] == list(range(len(content)))
    assert "".join(item for e in content for item in e["items"]) == "Hello!"
    statuses = [e for e in incremental if e.get("path") == ["generateCopilotResponse"]]
    assert statuses == [
        {"data": {"status": {"code": "Success"}}, "path": ["generateCopilotResponse"]}
    ]


async def test_streamed_operation_without_multipart_accept_is_merged_json(auth, upstream):
    upstream.post(OPENAI_URL).mock(return_value=text_stream("a", "b"))
    body = {"query": STREAMED, "variables": variables()}
    response = await post(body, auth)
    result = response.json()["data"]["generateCopilotResponse"]
    assert result["messages"][0]["content"] == ["a", "b"]
    assert result["messages"][0]["status"] == {"code": "Success"}
    assert result["status"] == {"code": "Success"}


async def test_actions_become_tools_and_tool_calls_action_executions(auth, upstream):
    def call_chunk(**call: Any) -> dict[str, Any]:
        return {"choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}]}

    upstream.post(OPENAI_URL).mock(
        return_value=httpx.Response(
            200,
            content=sse_body(
                call_chunk(
                    index=0,
                    id="call_9",
                    type="function",
                    function={"name": "setColor", "arguments": '{"c'},
                ),
                call_chunk(index=0, function={"arguments": '":"red"}'}),
                openai_chunk(finish_reason="tool_calls"),
            ),
        )
    )
    schema = {"type": "object", "properties": {"c": {"type": "string"}}}
    actions = [
        {
            "name": "setColor",
            "description": "Set the colour.",
            "jsonSchema": json.dumps(schema),
            "available": "enabled",
        },
        {"name": "hidden", "description": "Off.", "jsonSchema": "{}", "available": "disabled"},
    ]
    response = await post({"query": PLAIN, "variables": variables(actions=actions)}, auth)
    result = response.json()["data"]["generateCopilotResponse"]
    [message] = result["messages"]
    assert message["__typename"] == "ActionExecutionMessageOutput"
    assert message["id"] == "call_9" and message["name"] == "setColor"
    assert "".join(message["arguments"]) == '{"c":"red"}'
    sent = json.loads(upstream.calls[0].request.content)
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "setColor",
                "description": "Set the colour.",
                "parameters": schema,
            },
        }
    ]


async def test_system_messages_actions_and_results_reach_the_model(auth, upstream):
    upstream.post(OPENAI_URL).mock(return_value=text_stream("Done."))
    messages = [
        text("s", "system", "Be brief."),
        text("u", "user", "Make it red"),
        text("a", "assistant", "Sure."),
        {
            "id": "call_1",
            "createdAt": "2025-01-01T00:00:00Z",
            "actionExecutionMessage": {
                "name": "setColor",
                "arguments": '{"c":"red"}',
                "parentMessageId": "a",
            },
        },
        {
            "id": "r1",
            "createdAt": "2025-01-01T00:00:00Z",
            "resultMessage": {
                "actionExecutionId": "call_1",
                "actionName": "setColor",
                "result": "ok",
            },
        },
    ]
    data = variables(
        *messages,
        context=[{"description": "Theme", "value": "dark"}],
        forwardedParameters={"temperature": 0.5, "maxTokens": 64},
    )
    response = await post({"query": PLAIN, "variables": data}, auth)
    assert response.json()["data"]["generateCopilotResponse"]["status"] == {"code": "Success"}
    sent = json.loads(upstream.calls[0].request.content)
    assert [m["role"] for m in sent["messages"]] == [
        "system",
        "system",
        "user",
        "assistant",
        "tool",
    ]
    assert "Theme" in sent["messages"][0]["content"] and "dark" in sent["messages"][0]["content"]
    assert sent["messages"][1]["content"] == "Be brief."
    assert sent["messages"][3]["tool_calls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "setColor", "arguments": '{"c":"red"}'},
        }
    ]
    assert sent["messages"][4] == {"role": "tool", "content": "ok", "tool_call_id": "call_1"}
    assert (sent["temperature"], sent["max_tokens"]) == (0.5, 64)


async def test_upstream_failure_is_a_failed_response_status(auth, upstream):
    upstream.post(OPENAI_URL).mock(
        return_value=httpx.Response(500, json={"errors": [{"code": 1, "message": "x"}]})
    )
    response = await post({"query": PLAIN, "variables": variables()}, auth)
    assert response.status_code == 200
    result = response.json()["data"]["generateCopilotResponse"]
    assert result["messages"] == []
    assert result["status"]["code"] == "Failed"
    assert result["status"]["reason"] == "UNKNOWN_ERROR"
    assert result["status"]["details"]["code"] == "upstream_error"
    await lifecycle.drain()
    assert (await UsageRecord.objects.aget()).outcome == "error"


async def test_a_cut_stream_fails_the_message_and_the_response(auth, upstream):
    upstream.post(OPENAI_URL).mock(
        return_value=httpx.Response(200, content=sse_body(openai_chunk("part"), done=False))
    )
    response = await post({"query": PLAIN, "variables": variables()}, auth)
    result = response.json()["data"]["generateCopilotResponse"]
    assert result["messages"][0]["content"] == ["part"]
    assert result["messages"][0]["status"]["code"] == "Failed"
    assert result["status"]["reason"] == "MESSAGE_STREAM_INTERRUPTED"


async def test_available_agents(auth):
    agents = {"default": {"name": "Helper", "description": "Helps."}}
    with override_settings(COPILOTEDGE_AGENTS=agents):
        response = await post(
            {"query": "query { availableAgents { agents { name id description } } }"},
            auth,
        )
    assert response.json() == {
        "data": {
            "availableAgents": {
                "agents": [{"name": "Helper", "id": "default", "description": "Helps."}]
            }
        }
    }


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"query": "mutation { generateCopilotResponse(data: {"}, "Syntax Error"),
        ({"query": "query { nope }"}, "Cannot query field 'nope'"),
        ({"query": PLAIN, "variables": {"data": {"messages": "x"}}}, "Variable '$data'"),
        (
            {"query": PLAIN, "variables": variables(frontend={"actions": [{"name": 1}]})},
            "Variable '$data'",
        ),
        ({"query": PLAIN, "variables": {**variables(), "properties": [1]}}, "JSONObject"),
        ({"query": 12}, "'query' must be a string"),
        ({"query": PLAIN, "variables": "x"}, "'variables' must be an object"),
        ({"query": "query A { hello } query B { hello }"}, "operation name"),
    ],
)
async def test_bad_operations_are_graphql_errors_with_400(auth, body, fragment):
    response = await post(body, auth)
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert errors and fragment.lower() in errors[0]["message"].lower()


async def test_bad_input_inside_valid_graphql_is_400(auth):
    data = variables(actions=[{"name": "a", "description": "b", "jsonSchema": "not json"}])
    response = await post({"query": PLAIN, "variables": data}, auth)
    assert response.status_code == 400
    [error] = response.json()["errors"]
    assert error["extensions"]["param"] == "data.frontend.actions[0].jsonSchema"
    response = await post(
        {"query": PLAIN, "variables": variables(agentSession={"agentName": "ghost"})}, auth
    )
    assert response.status_code == 404


async def test_unauthenticated_graphql_is_401_in_graphql_shape(db):
    response = await post({"query": "{ hello }"}, {})
    assert response.status_code == 401
    assert response.json()["errors"][0]["message"]


async def test_limits_are_graphql_errors_with_their_status_and_retry_after(auth, monkeypatch):
    from copilotedge.chat.turn import Turn
    from copilotedge.exceptions import RateLimited

    async def limited(self):
        raise RateLimited(retry_after=2)

    monkeypatch.setattr(Turn, "open", limited)
    for query, accept in ((PLAIN, "application/json"), (STREAMED, "multipart/mixed")):
        response = await post({"query": query, "variables": variables()}, auth, accept=accept)
        assert response.status_code == 429
        assert response["Retry-After"] == "2"
        assert response.json()["errors"][0]["extensions"]["code"] == "rate_limit_exceeded"


async def test_the_callers_token_limit_applies_to_graphql(auth, api_key, upstream):
    key = api_key[0]
    key.tokens_per_minute = 5
    await key.asave()
    response = await post({"query": PLAIN, "variables": variables()}, auth)
    assert response.status_code == 429
    assert response.json()["errors"][0]["extensions"]["code"] == "rate_limit_exceeded"
    assert response["x-ratelimit-limit-tokens"] == "5"
    assert upstream.calls.call_count == 0
