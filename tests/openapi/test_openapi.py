"""The served OpenAPI description: well-formed, and accurate to the URLconf and the views."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from django.test import AsyncClient
from django.urls import URLPattern, get_resolver

from copilotedge import openapi, urls

pytestmark = pytest.mark.django_db(transaction=True)

METHODS = {"get", "post", "put", "patch", "delete"}


def concrete(path: str) -> str:
    """A described path with its parameters filled in."""
    return path.replace("{model}", "@cf/meta/llama-3.1-8b-instruct").replace(
        "{conversation_id}", str(uuid.uuid4())
    )


async def served() -> dict[str, Any]:
    response = await AsyncClient().get("/copilotedge/openapi.json")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    document: dict[str, Any] = response.json()
    return document


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if "$ref" in node else []
        return found + [ref for value in node.values() for ref in refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in refs(value)]
    return []


async def test_it_is_served_without_authentication_and_is_openapi_3_1() -> None:
    document = await served()
    assert document["openapi"] == "3.1.0"
    assert document["info"]["title"] == "copilotedge"
    assert document == openapi.describe()


async def test_every_reference_resolves() -> None:
    document = await served()
    schemas = document["components"]["schemas"]
    found = refs(document)
    assert found
    for ref in found:
        prefix = "#/components/schemas/"
        assert ref.startswith(prefix) and ref[len(prefix) :] in schemas, ref


async def test_every_route_of_the_app_is_described_and_nothing_else() -> None:
    document = await served()
    described = set(document["paths"])
    mounted = {
        "/copilotedge/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", str(p.pattern))
        for p in urls.urlpatterns
        if isinstance(p, URLPattern)
    }
    assert described == mounted
    assert all(get_resolver().resolve(concrete(path)) for path in described)
    for path, operations in document["paths"].items():
        assert set(operations) <= METHODS, path
        for operation in operations.values():
            assert operation["responses"], path


async def test_the_described_methods_are_the_allowed_ones(auth: dict[str, str]) -> None:
    document = await served()
    client = AsyncClient()
    for path, operations in document["paths"].items():
        url = concrete(path)
        for method in METHODS - set(operations):
            response = await getattr(client, method)(url, headers=auth)
            assert response.status_code == 405, (method, path)
            assert response["Allow"].lower() == ", ".join(operations).lower()


async def test_the_documented_ranges_are_the_validated_ones(auth: dict[str, str]) -> None:
    """A value just outside each documented range is a 400 naming that parameter."""
    document = await served()
    properties = document["components"]["schemas"]["ChatRequest"]["properties"]
    client = AsyncClient()
    checked = 0
    for name, schema in properties.items():
        for bound, outside in (("minimum", -0.5), ("maximum", 0.5)):
            if bound not in schema:
                continue
            value = schema[bound] + outside if schema["type"] == "number" else schema[bound] - 1
            body = {"messages": [{"role": "user", "content": "hi"}], name: value}
            response = await client.post(
                "/copilotedge/v1/chat/completions",
                body,
                content_type="application/json",
                headers=auth,
            )
            assert response.status_code == 400, (name, value)
            assert response.json()["error"]["param"] == name
            checked += 1
    assert checked == 10
