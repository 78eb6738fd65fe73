"""System checks of the usage ledger, metrics and health settings (E020-E023, W020-W021)."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from copilotedge.checks import check_settings


def ids() -> list[str]:
    return [message.id or "" for message in check_settings()]


MINE = {f"copilotedge.{kind}02{n}" for kind in "EW" for n in range(10)}


def test_the_shipped_defaults_pass() -> None:
    assert not set(ids()) & MINE


@pytest.mark.parametrize(
    ("overrides", "check_id"),
    [
        ({"COPILOTEDGE_DEFAULT_PRICE": ("1", "x")}, "copilotedge.E020"),
        ({"COPILOTEDGE_DEFAULT_PRICE": ("1",)}, "copilotedge.E020"),
        ({"COPILOTEDGE_DEFAULT_PRICE": ("-1", "2")}, "copilotedge.E020"),
        ({"COPILOTEDGE_NEURON_PRICE": "cheap"}, "copilotedge.E021"),
        ({"COPILOTEDGE_NEURON_PRICE": -0.011}, "copilotedge.E021"),
        ({"COPILOTEDGE_PRICES": {"@cf/meta/*": ("-0.1", "1")}}, "copilotedge.E022"),
        ({"COPILOTEDGE_HEALTH_TIMEOUT": 0}, "copilotedge.E023"),
        ({"COPILOTEDGE_HEALTH_TIMEOUT": "soon"}, "copilotedge.E023"),
    ],
)
def test_bad_values_are_errors(overrides: dict[str, object], check_id: str) -> None:
    with override_settings(**overrides):
        assert check_id in ids()
        with pytest.raises(SystemCheckError, match=check_id.replace(".", r"\.")):
            call_command("check")


@override_settings(
    COPILOTEDGE_MODELS=["@cf/meta/llama-3.1-8b-instruct", "@cf/new/model"],
    COPILOTEDGE_PRICES={"@cf/meta/*": ("0.1", "0.2")},
)
def test_a_model_without_a_price_is_a_warning() -> None:
    [warning] = [m for m in check_settings() if m.id == "copilotedge.W020"]
    assert "@cf/new/model" in warning.msg and "llama" not in warning.msg


@override_settings(COPILOTEDGE_METRICS_TOKEN="short")
def test_a_short_metrics_token_is_a_warning() -> None:
    assert "copilotedge.W021" in ids()
    with override_settings(COPILOTEDGE_METRICS_TOKEN="x" * 32):
        assert "copilotedge.W021" not in ids()
