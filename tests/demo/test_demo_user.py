"""``make run``'s demo user: created only while DEBUG is on."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import override_settings

from project.management.commands.demo_user import Command

pytestmark = pytest.mark.django_db


@override_settings(DEBUG=False)
def test_no_demo_superuser_when_debug_is_off() -> None:
    err = io.StringIO()
    call_command(Command(), stderr=err)
    assert not get_user_model().objects.filter(username="demo").exists()
    assert "DEBUG is off" in err.getvalue()


@override_settings(DEBUG=True)
def test_the_demo_superuser_while_debugging() -> None:
    call_command(Command(), stdout=io.StringIO())
    user = get_user_model().objects.get(username="demo")
    assert user.is_superuser and user.check_password("demo")
