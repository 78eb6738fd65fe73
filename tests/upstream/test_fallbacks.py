"""The fallback chain read from COPILOTEDGE_FALLBACKS (behaviour under failure: test_resilience)."""

from __future__ import annotations

from typing import Any

from copilotedge.upstream.fallbacks import candidates_for, configured_upstreams
from copilotedge.upstream.requests import Upstream

MODEL = "@cf/meta/llama-3.1-8b-instruct"


def test_without_fallbacks_only_the_model_itself(settings: Any) -> None:
    [only] = candidates_for(MODEL)
    assert (only.model, only.upstream) == (MODEL, Upstream.default())
    assert [u.name for u in configured_upstreams()] == ["workers-ai"]


def test_the_chain_keeps_the_configured_order(settings: Any) -> None:
    settings.COPILOTEDGE_FALLBACKS = {
        MODEL: [
            {"model": "@cf/meta/llama-3.2-3b-instruct"},
            {"model": "gpt-4o-mini", "base_url": "https://gw.test/v1/", "api_token": "t"},
            {"model": "llama3", "base_url": "http://box:11434/v1", "name": "box"},
        ],
        "other": [{"model": "x", "base_url": "https://gw.test/v1"}],
    }
    chain = candidates_for(MODEL)
    assert [c.model for c in chain] == [
        MODEL,
        "@cf/meta/llama-3.2-3b-instruct",
        "gpt-4o-mini",
        "llama3",
    ]
    assert chain[1].upstream == Upstream.default()
    gateway = chain[2].upstream
    assert (gateway.base_url, gateway.api_token, gateway.account_id, gateway.name) == (
        "https://gw.test/v1",
        "t",
        "",
        "https://gw.test/v1",
    )
    assert gateway.url("openai", "gpt-4o-mini") == "https://gw.test/v1/chat/completions"
    assert chain[3].upstream.name == "box"
    assert len(candidates_for("unlisted")) == 1
    assert [u.name for u in configured_upstreams()] == ["workers-ai", "https://gw.test/v1", "box"]
