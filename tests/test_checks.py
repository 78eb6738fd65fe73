"""Each setting check fires with its stable id, and ``manage.py check`` fails on errors."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.core.checks import Error, Warning
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from copilotedge.checks import check_settings
from copilotedge.defaults import DEFAULT_BASE_URL


@pytest.fixture(autouse=True)
def shared_cache() -> Any:
    """A django-redis cache in the settings (never connected to), so W010 stays quiet."""
    redis = {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": "redis://127.0.0.1:6379/0"}
    with override_settings(CACHES={"default": redis}):
        yield


def ids(**overrides: Any) -> list[str]:
    with override_settings(**overrides):
        return [message.id for message in check_settings() if message.id]


def test_the_test_settings_are_clean() -> None:
    assert check_settings() == []
    call_command("check", stdout=StringIO(), stderr=StringIO())


@pytest.mark.parametrize("base", [DEFAULT_BASE_URL, DEFAULT_BASE_URL + "/"])
def test_w001_no_account_id_for_cloudflare(base: str) -> None:
    assert ids(COPILOTEDGE_API_BASE_URL=base, COPILOTEDGE_ACCOUNT_ID="") == ["copilotedge.W001"]


def test_w002_no_token_for_cloudflare() -> None:
    assert ids(COPILOTEDGE_API_BASE_URL=DEFAULT_BASE_URL, COPILOTEDGE_API_TOKEN="") == [
        "copilotedge.W002"
    ]


def test_w001_w002_fire_when_nothing_is_configured() -> None:
    with override_settings():
        from django.conf import settings

        for name in ("COPILOTEDGE_ACCOUNT_ID", "COPILOTEDGE_API_TOKEN", "COPILOTEDGE_API_BASE_URL"):
            delattr(settings, name)
        messages = check_settings()
    assert [(type(m), m.id) for m in messages] == [
        (Warning, "copilotedge.W001"),
        (Warning, "copilotedge.W002"),
    ]
    assert all(m.hint for m in messages)


def test_no_credential_warnings_for_another_upstream() -> None:
    assert ids(COPILOTEDGE_API_BASE_URL="http://127.0.0.1:8788", COPILOTEDGE_ACCOUNT_ID="") == []


@pytest.mark.parametrize("name", ["COPILOTEDGE_API_TOKEN", "COPILOTEDGE_ACCOUNT_ID"])
@pytest.mark.parametrize("value", ["…", "a token", "tok\n", "clé"])
def test_e008_a_credential_that_cannot_be_sent_upstream(name: str, value: str) -> None:
    assert ids(**{name: value}) == ["copilotedge.E008"]
    with override_settings(**{name: value}), pytest.raises(SystemCheckError, match=r"E008"):
        call_command("check")


def test_warnings_do_not_fail_the_check_command() -> None:
    with override_settings(COPILOTEDGE_API_BASE_URL=DEFAULT_BASE_URL, COPILOTEDGE_API_TOKEN=""):
        err = StringIO()
        call_command("check", stdout=StringIO(), stderr=err)
    assert "copilotedge.W002" in err.getvalue()


@pytest.mark.parametrize(
    "routes",
    [
        {"@cf/meta/*": "openai", "*": "native"},
        {"*": None},
        {1: "openai"},
        "openai",
        ["@cf/meta/*"],
        42,
    ],
)
def test_e003_bad_routes(routes: Any) -> None:
    assert ids(COPILOTEDGE_ROUTES=routes) == ["copilotedge.E003"]


def test_e003_names_the_bad_globs() -> None:
    with override_settings(COPILOTEDGE_ROUTES={"a*": "x", "b*": "run", "c*": "y"}):
        [message] = check_settings()
    assert "a*" in message.msg and "c*" in message.msg and "b*" not in message.msg


@pytest.mark.parametrize(
    "name",
    [
        "CONNECT_TIMEOUT",
        "READ_TIMEOUT",
        "TOTAL_TIMEOUT",
        "KEEPALIVE_SECONDS",
        "MAX_BODY_BYTES",
        "MAX_MESSAGES",
        "MAX_CONNECTIONS",
    ],
)
@pytest.mark.parametrize("value", [0, -1, "soon", None])
def test_e004_non_positive_numbers(name: str, value: Any) -> None:
    with override_settings(**{f"COPILOTEDGE_{name}": value}):
        messages = check_settings()
    assert [m.id for m in messages] == ["copilotedge.E004"]
    assert f"COPILOTEDGE_{name}" in messages[0].msg


def test_e004_accepts_numeric_strings_and_floats() -> None:
    assert ids(COPILOTEDGE_READ_TIMEOUT="30", COPILOTEDGE_KEEPALIVE_SECONDS=0.5) == []


@pytest.mark.parametrize("value", [-1, "many", None])
def test_e007_admission_limit(value: Any) -> None:
    assert ids(COPILOTEDGE_ADMISSION_LIMIT=value) == ["copilotedge.E007"]
    assert ids(COPILOTEDGE_ADMISSION_LIMIT=0) == []


@pytest.mark.parametrize(
    "value", ["no.such.module.callback", "tests.test_checks.missing", "notdotted"]
)
def test_e005_on_chunk_not_importable(value: str) -> None:
    assert ids(COPILOTEDGE_ON_CHUNK=value) == ["copilotedge.E005"]


@pytest.mark.parametrize("value", [42, "tests.test_checks.NOT_CALLABLE"])
def test_e005_on_chunk_not_callable(value: Any) -> None:
    assert ids(COPILOTEDGE_ON_CHUNK=value) == ["copilotedge.E005"]


NOT_CALLABLE = "a string"


def on_chunk(text: str) -> None:
    pass


@pytest.mark.parametrize("value", [None, on_chunk, "tests.test_checks.on_chunk"])
def test_e005_good_on_chunk(value: Any) -> None:
    assert ids(COPILOTEDGE_ON_CHUNK=value) == []


@pytest.mark.parametrize(
    "prices",
    [
        {"@cf/meta/x": ("cheap", "0.1")},
        {"@cf/meta/x": ("0.1",)},
        {"@cf/meta/x": 0.1},
        ["@cf/meta/x"],
        "0.1",
    ],
)
def test_e006_bad_prices(prices: Any) -> None:
    assert ids(COPILOTEDGE_PRICES=prices) == ["copilotedge.E006"]


def test_e006_good_prices() -> None:
    prices = {"@cf/meta/x": ("0.1", 2), "@cf/qwen/y": (0, "1e-3")}
    # Offering exactly the priced models (an unpriced one is W020).
    priced = {"COPILOTEDGE_MODEL": "@cf/meta/x", "COPILOTEDGE_MODELS": list(prices)}
    assert ids(COPILOTEDGE_PRICES=prices, **priced) == []


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"COPILOTEDGE_ROUTES": {"*": "nope"}}, "copilotedge.E003"),
        ({"COPILOTEDGE_ROUTES": "nope"}, "copilotedge.E003"),
        ({"COPILOTEDGE_MAX_MESSAGES": 0}, "copilotedge.E004"),
        ({"COPILOTEDGE_ON_CHUNK": "no.such.callback"}, "copilotedge.E005"),
        ({"COPILOTEDGE_PRICES": {"m": ("x", "y")}}, "copilotedge.E006"),
        ({"COPILOTEDGE_PRICES": ["m"]}, "copilotedge.E006"),
        ({"COPILOTEDGE_ADMISSION_LIMIT": -1}, "copilotedge.E007"),
    ],
)
def test_errors_fail_the_check_command(overrides: dict[str, Any], expected: str) -> None:
    with override_settings(**overrides), pytest.raises(SystemCheckError) as caught:
        call_command("check", stdout=StringIO(), stderr=StringIO())
    assert expected in str(caught.value)


def test_every_error_is_an_error() -> None:
    with override_settings(
        COPILOTEDGE_ROUTES={"*": "x"},
        COPILOTEDGE_MAX_BODY_BYTES=0,
        COPILOTEDGE_ON_CHUNK="x.y",
        COPILOTEDGE_PRICES={"m": ("x", "y")},
    ):
        messages = check_settings()
    assert all(type(m) is Error for m in messages)
    assert [m.id for m in messages] == [
        "copilotedge.E003",
        "copilotedge.E004",
        "copilotedge.E005",
        "copilotedge.E006",
    ]
