"""The system check that the site serves ASGI (copilotedge.W060)."""

from __future__ import annotations

from io import StringIO

from django.core.management import call_command
from django.test import override_settings

from copilotedge.checks import check_settings


def test_no_asgi_application_is_w060_naming_the_setting() -> None:
    with override_settings(ASGI_APPLICATION=None):
        (warning,) = [m for m in check_settings() if m.id == "copilotedge.W060"]
        output = StringIO()
        call_command("check", stdout=output, stderr=output)
    assert "ASGI_APPLICATION" in warning.msg
    assert "ASGI_APPLICATION" in (warning.hint or "")
    assert '"daphne"' in (warning.hint or "")
    assert "copilotedge.W060" in output.getvalue()


def test_a_site_with_asgi_application_is_clean() -> None:
    assert "copilotedge.W060" not in [m.id for m in check_settings()]
