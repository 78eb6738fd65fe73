"""System checks of the reliability settings (copilotedge.E050, E051, W050)."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from copilotedge.checks import check_settings
from copilotedge.upstream.checks import check_reliability


def ids() -> list[str]:
    return [message.id for message in check_reliability() if message.id]


def test_the_defaults_pass() -> None:
    assert ids() == []
    assert not [m for m in check_settings() if m.id and m.id.startswith("copilotedge.E05")]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("COPILOTEDGE_RETRY_ATTEMPTS", 0),
        ("COPILOTEDGE_RETRY_BASE_DELAY", -1),
        ("COPILOTEDGE_RETRY_DEADLINE", 0),
        ("COPILOTEDGE_FIRST_TOKEN_TIMEOUT", "soon"),
        ("COPILOTEDGE_CIRCUIT_FAILURE_THRESHOLD", 0),
        ("COPILOTEDGE_CIRCUIT_COOLDOWN", -5),
        ("COPILOTEDGE_RESPONSE_CACHE_TTL", 0),
    ],
)
def test_bad_numbers_are_e050(settings: Any, name: str, value: Any) -> None:
    setattr(settings, name, value)
    assert ids() == ["copilotedge.E050"]
    assert name in check_reliability()[0].msg
    with pytest.raises(SystemCheckError, match=r"copilotedge\.E050"):
        call_command("check")


@pytest.mark.parametrize(
    "fallbacks",
    [
        ["@cf/meta/llama-3.2-3b-instruct"],
        {"m": "@cf/meta/llama-3.2-3b-instruct"},
        {"m": [{"base_url": "https://x.test/v1"}]},
        {"m": [{"model": "x", "url": "https://x.test/v1"}]},
        {"m": [{"model": "x", "api_token": 123}]},
    ],
)
def test_malformed_fallbacks_are_e051(settings: Any, fallbacks: Any) -> None:
    settings.COPILOTEDGE_FALLBACKS = fallbacks
    assert ids() == ["copilotedge.E051"]
    with pytest.raises(SystemCheckError, match=r"copilotedge\.E051"):
        call_command("check")


def test_good_fallbacks_pass(settings: Any) -> None:
    settings.COPILOTEDGE_FALLBACKS = {
        "@cf/meta/llama-3.1-8b-instruct": [
            {"model": "@cf/meta/llama-3.2-3b-instruct"},
            {"model": "gpt-4o-mini", "base_url": "https://gw.test/v1", "api_token": "t"},
        ]
    }
    assert ids() == []


def test_a_first_token_timeout_past_the_deadline_is_w050(settings: Any) -> None:
    settings.COPILOTEDGE_FIRST_TOKEN_TIMEOUT = 60
    settings.COPILOTEDGE_RETRY_DEADLINE = 60
    assert ids() == ["copilotedge.W050"]
