"""What a GraphQL request may cost: size, tokens, fields, aliases, one turn per request."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import AsyncClient, override_settings

from copilotedge.checks import check_settings
from tests.copilotkit.graphql.test_resolve import PLAIN, STREAMED, text_stream, variables
from tests.helpers import OPENAI_URL

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/copilotedge/copilotkit"


async def post(body: Any, headers: dict[str, str]) -> Any:
    return await AsyncClient().post(
        URL, data=json.dumps(body), content_type="application/json", headers=headers
    )


def assert_graphql_error(response: Any, words: str) -> None:
    assert response.status_code == 400
    [error] = response.json()["errors"]
    assert words in error["message"]


async def test_many_aliases_are_refused_quickly(auth):
    assert (await post({"query": "query{hello}"}, auth)).status_code == 200  # warm up
    query = "query{" + " ".join(f"a{i}:hello" for i in range(30_000)) + "}"
    started = time.perf_counter()
    response = await post({"query": query}, auth)
    assert time.perf_counter() - started < 1.0
    assert_graphql_error(response, "characters")


@override_settings(COPILOTEDGE_GRAPHQL_MAX_QUERY_LENGTH=10**7)
async def test_lexical_tokens_are_capped(auth):
    query = "query{" + " hello" * 5_000 + "}"
    response = await post({"query": query}, auth)
    assert_graphql_error(response, "more than 2000 tokens")


async def test_aliases_are_capped(auth):
    query = "query{" + " ".join(f"a{i}:hello" for i in range(21)) + "}"
    assert_graphql_error(await post({"query": query}, auth), "at most 20 aliases")


async def test_fields_are_counted_through_fragments(auth):
    # Each fragment spreads the previous one twice: 2**20 fields in a few hundred bytes.
    fragments = ["fragment F0 on Query { hello }"]
    fragments += [f"fragment F{i} on Query {{ ...F{i - 1} ...F{i - 1} }}" for i in range(1, 21)]
    query = "query { ...F20 } " + " ".join(fragments)
    assert_graphql_error(await post({"query": query}, auth), "at most 200 fields")


async def test_one_turn_per_request(auth, upstream):
    route = upstream.post(OPENAI_URL).mock(return_value=text_stream("hi"))
    call = "generateCopilotResponse(data: $data) { threadId }"
    query = (
        "mutation($data: GenerateCopilotResponseInput!) {"
        + " ".join(f"g{i}: {call}" for i in range(3))
        + "}"
    )
    response = await post({"query": query, "variables": variables()}, auth)
    assert_graphql_error(response, "generateCopilotResponse once")
    assert not route.called


async def test_variables_are_bounded(auth):
    message = {"id": "m", "createdAt": "2025-01-01T00:00:00Z", "textMessage": {"role": "user"}}
    body = {"query": PLAIN, "variables": variables(*[message] * 3_000)}
    assert_graphql_error(await post(body, auth), "at most 10000 JSON values")


async def test_copilotkit_shaped_operations_pass(auth, upstream):
    upstream.post(OPENAI_URL).mock(return_value=text_stream("hi"))
    for query in (PLAIN, STREAMED):
        response = await post({"query": query, "variables": variables()}, auth)
        assert response.status_code == 200, response.content


@pytest.mark.parametrize("name", ["QUERY_LENGTH", "TOKENS", "FIELDS", "ALIASES"], ids=str.lower)
def test_limits_must_be_positive(name):
    with override_settings(**{f"COPILOTEDGE_GRAPHQL_MAX_{name}": 0}):
        assert "copilotedge.E046" in [m.id for m in check_settings()]
        with pytest.raises(SystemCheckError):
            call_command("check")
